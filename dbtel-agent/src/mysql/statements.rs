//! What is known of a statement text (facts and transaction verb), and the
//! prepared statements of each process by MYSQL_STMT* handle, bounded: a
//! program preparing without ever closing must not grow the agent.

use std::{collections::VecDeque, sync::Arc};

use crate::pipeline::{
    sql::{self, QueryFacts, RowCount},
    txn::{self, Verb},
};

/// A statement text, classified once (at prepare for prepared statements).
#[derive(Debug, Clone, PartialEq)]
pub struct Sql {
    /// None: the text was not readable.
    pub facts: Option<Arc<QueryFacts>>,
    pub verb: Verb,
    pub truncated: bool,
    /// It changes rows: its result's affected rows are reported.
    pub counts_affected: bool,
    /// The server commits an open transaction before running it (DDL, and a
    /// BEGIN / START TRANSACTION inside a transaction).
    pub implicit_commit: bool,
    /// Its sqlcommenter comment's traceparent (used only when the text is
    /// sent with the call: a prepared statement's would be stale).
    pub traceparent: Option<crate::pipeline::sqlcomment::TraceParent>,
}

impl Sql {
    pub fn new(text: Option<&str>, truncated: bool, facts: Option<Arc<QueryFacts>>) -> Self {
        let verb = text.map_or(Verb::Other, txn::verb);
        let op = facts
            .as_ref()
            .and_then(|f| f.operation.as_deref())
            .unwrap_or("");
        let counts_affected = matches!(op, "REPLACE" | "LOAD")
            || text.is_some_and(|t| sql::row_count(op, t) == Some(RowCount::Affected));
        // XA START inside a transaction is an error, not a commit.
        let implicit_commit = matches!(
            op,
            "CREATE" | "ALTER" | "DROP" | "RENAME" | "TRUNCATE" | "GRANT" | "REVOKE"
        ) || (verb == Verb::Begin && op != "XA");
        Sql {
            facts,
            verb,
            truncated,
            counts_affected,
            implicit_commit,
            traceparent: text.and_then(crate::pipeline::sqlcomment::traceparent_in),
        }
    }
}

struct Entry {
    seq: u64,
    /// Its connection (MYSQL*).
    conn: u64,
    sql: Arc<Sql>,
}

#[derive(Default)]
struct Process {
    by_handle: crate::FastMap<u64, Entry>,
    /// (handle, seq) in insertion order, oldest first; entries of closed or
    /// re-prepared handles are skipped when popped, and swept when too many.
    order: VecDeque<(u64, u64)>,
    next_seq: u64,
}

/// Prepared statements by (pid, MYSQL_STMT*), at most `cap` per process:
/// past it, the oldest are forgotten (their executions then show as
/// prepared before attach).
pub struct Statements {
    procs: crate::FastMap<u32, Process>,
    cap: usize,
}

impl Statements {
    pub fn new(cap: usize) -> Self {
        Statements {
            procs: Default::default(),
            cap: cap.max(1),
        }
    }

    /// mysql_stmt_prepare on `handle` (a handle prepared again replaces its text).
    pub fn insert(&mut self, pid: u32, handle: u64, conn: u64, sql: Arc<Sql>) {
        let p = self.procs.entry(pid).or_default();
        let seq = p.next_seq;
        p.next_seq += 1;
        p.by_handle.insert(handle, Entry { seq, conn, sql });
        p.order.push_back((handle, seq));
        while p.by_handle.len() > self.cap {
            let Some((h, s)) = p.order.pop_front() else {
                break;
            };
            if p.by_handle.get(&h).is_some_and(|e| e.seq == s) {
                p.by_handle.remove(&h);
            }
        }
        if p.order.len() > 2 * self.cap {
            let live = &p.by_handle;
            p.order
                .retain(|(h, s)| live.get(h).is_some_and(|e| e.seq == *s));
        }
    }

    pub fn get(&self, pid: u32, handle: u64) -> Option<&Arc<Sql>> {
        self.procs.get(&pid)?.by_handle.get(&handle).map(|e| &e.sql)
    }

    /// mysql_stmt_close: the handle's address may be reused.
    pub fn remove(&mut self, pid: u32, handle: u64) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.by_handle.remove(&handle);
            if p.by_handle.is_empty() {
                self.procs.remove(&pid);
            }
        }
    }

    /// mysql_close: the server forgets the connection's statements.
    pub fn forget_conn(&mut self, pid: u32, conn: u64) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.by_handle.retain(|_, e| e.conn != conn);
            if p.by_handle.is_empty() {
                self.procs.remove(&pid);
            }
        }
    }

    pub fn forget_process(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    /// Statements kept for a process, and their order entries (for bound checks).
    pub fn held(&self, pid: u32) -> (usize, usize) {
        self.procs
            .get(&pid)
            .map_or((0, 0), |p| (p.by_handle.len(), p.order.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(text: &str) -> Arc<Sql> {
        let f = Arc::new(sql::facts_in(sql::Dialect::MySql, text, true));
        Arc::new(Sql::new(Some(text), false, Some(f)))
    }

    #[test]
    fn classification() {
        let s = sql("INSERT INTO t VALUES (1)");
        assert_eq!(
            (s.counts_affected, s.implicit_commit, &s.verb),
            (true, false, &Verb::Other)
        );
        assert!(sql("REPLACE INTO t VALUES (1)").counts_affected);
        assert!(!sql("SELECT 1").counts_affected);
        assert!(sql("CREATE TABLE t (a int)").implicit_commit);
        assert!(sql("BEGIN").implicit_commit && sql("start transaction").implicit_commit);
        assert!(!sql("XA START 'x'").implicit_commit);
        assert_eq!(Sql::new(None, true, None).verb, Verb::Other);
    }

    #[test]
    fn oldest_go_first_and_reused_handles_keep_their_newest_text() {
        let mut st = Statements::new(3);
        for h in 1..=3 {
            st.insert(7, h, 0x10, sql("SELECT a"));
        }
        st.insert(7, 1, 0x10, sql("SELECT b")); // re-prepared: now the newest
        st.insert(7, 4, 0x10, sql("SELECT 4")); // over the cap: 2 goes
        assert!(st.get(7, 2).is_none());
        assert_eq!(
            st.get(7, 1).unwrap().facts.as_ref().unwrap().text,
            "SELECT b"
        );
        assert!(st.get(7, 3).is_some() && st.get(7, 4).is_some());
        st.insert(7, 5, 0x20, sql("SELECT 5"));
        assert!(st.get(7, 3).is_none(), "then 3");
        st.forget_conn(7, 0x10);
        assert_eq!(st.held(7).0, 1);
        st.remove(7, 5);
        assert_eq!(st.held(7), (0, 0));
    }

    #[test]
    fn the_order_queue_stays_bounded_too() {
        let mut st = Statements::new(3);
        let s = sql("SELECT a");
        for _ in 0..10_000 {
            st.insert(7, 1, 0x10, s.clone()); // the same handle prepared again and again
        }
        let (held, order) = st.held(7);
        assert_eq!(held, 1);
        assert!(order <= 2 * 3 + 1, "{order}");
        for h in 0..10_000 {
            st.insert(7, h, 0x10, s.clone());
        }
        let (held, order) = st.held(7);
        assert_eq!(held, 3);
        assert!(order <= 2 * 3 + 1, "{order}");
        assert!(st.get(7, 9_999).is_some() && st.get(7, 9_996).is_none());
    }
}
