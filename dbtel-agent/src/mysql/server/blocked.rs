//! What the catalog said about lock waits, held until the statement that
//! waited ends (its wait spans are made then), bounded; and the catalog's
//! own sessions, whose statements make no spans.

use std::{collections::VecDeque, sync::Arc};

use crate::{
    mysql::catalog::blockers::WaitFacts,
    pipeline::{span::Ids, sql::QueryFacts},
};

/// Answers kept for waits whose statement has not ended (the oldest go first).
pub const ANSWERS_KEPT: usize = 4096;
/// Catalog sessions remembered (one per traced server, and its reconnections).
const OWN_KEPT: usize = 64;

/// One blocker, as the wait span shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockerView {
    pub connection_id: u64,
    /// Its statement (obfuscated as every text is), running now or, idle
    /// in its transaction, its last one.
    pub query: Option<Arc<QueryFacts>>,
    pub state: String,
    /// Its transaction's age when the wait began (exact when dbtel saw the
    /// transaction begin; else the catalog's, to the second).
    pub transaction_age_ms: Option<i64>,
    pub mode: Option<String>,
    /// Its transaction's span (the client's when traced, else the server's).
    pub transaction: Option<Ids>,
}

/// The catalog's answer for one wait.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    pub mode: Option<String>,
    /// `db.table`.
    pub table: Option<String>,
    pub index: Option<String>,
    pub blockers: Vec<BlockerView>,
}

impl Blocked {
    pub fn new(f: WaitFacts, blockers: Vec<BlockerView>) -> Self {
        Blocked {
            mode: f.mode,
            table: f.table,
            index: f.index,
            blockers,
        }
    }
}

/// Waits are named by (server, OS thread, start).
type Key = (u32, u32, u64);

#[derive(Default)]
pub struct Answers {
    held: VecDeque<(Key, Arc<Blocked>)>,
    /// Catalog sessions: (server, connection id).
    own: VecDeque<(u32, u64)>,
    /// Answers let go of unused (their statement never ended in time, or the bound).
    pub dropped: u64,
}

impl Answers {
    pub fn put(&mut self, key: Key, b: Blocked) {
        if self.held.len() >= ANSWERS_KEPT {
            self.held.pop_front();
            self.dropped += 1;
        }
        self.held.push_back((key, Arc::new(b)));
    }

    pub fn take(&mut self, key: Key) -> Option<Arc<Blocked>> {
        let i = self.held.iter().position(|(k, _)| *k == key)?;
        self.held.remove(i).map(|(_, b)| b)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// A server is gone: its answers with it.
    pub fn forget_server(&mut self, pid: u32) {
        self.held.retain(|((p, _, _), _)| *p != pid);
        self.own.retain(|(p, _)| *p != pid);
    }

    pub fn mark_own(&mut self, pid: u32, connection: u64) {
        if self.is_own(pid, connection) {
            return;
        }
        if self.own.len() >= OWN_KEPT {
            self.own.pop_front();
        }
        self.own.push_back((pid, connection));
    }

    pub fn is_own(&self, pid: u32, connection: u64) -> bool {
        !self.own.is_empty() && self.own.contains(&(pid, connection))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked() -> Blocked {
        Blocked {
            mode: Some("X".into()),
            table: None,
            index: None,
            blockers: vec![],
        }
    }

    #[test]
    fn answers_are_taken_once_and_bounded() {
        let mut a = Answers::default();
        a.put((1, 2, 3), blocked());
        assert!(a.take((1, 2, 4)).is_none());
        assert!(a.take((1, 2, 3)).is_some());
        assert!(a.take((1, 2, 3)).is_none());
        for i in 0..ANSWERS_KEPT as u64 + 10 {
            a.put((1, 2, i), blocked());
        }
        assert_eq!((a.len(), a.dropped), (ANSWERS_KEPT, 10));
        a.forget_server(1);
        assert_eq!(a.len(), 0);
    }

    #[test]
    fn own_sessions() {
        let mut a = Answers::default();
        assert!(!a.is_own(1, 5));
        a.mark_own(1, 5);
        a.mark_own(1, 5);
        assert!(a.is_own(1, 5) && !a.is_own(2, 5));
        for c in 0..100 {
            a.mark_own(3, c);
        }
        assert!(!a.is_own(1, 5), "bounded: the oldest go");
    }
}
