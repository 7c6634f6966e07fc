//! Statements that end at EndCommand (where it is probed): a simple-protocol
//! text of several run statement by statement, completions (also those the
//! kernel side still holds for a backend gone quiet), statements that
//! never ran, and telling the client side as each statement begins.

use std::sync::Arc;

use dbtel_common::site;

use super::{end_waits, Backend, ClientIds, Counters, ServerSpan, Tracker};
use crate::events::{Origin, ServerHit};
use crate::postgres::server::blocks::BlockEffect;

/// Slots of [`Singles`] (a power of two).
const SINGLE_SLOTS: usize = 1024;

/// Texts found to be one statement, by their 64-bit hash in a direct-mapped
/// table: no allocation and nothing to evict, so texts that never come again
/// (literals inlined) cost a hash and a store. Two texts would have to share
/// a 64-bit hash for one to get the other's effect.
pub(super) struct Singles {
    hasher: foldhash::fast::RandomState,
    slots: Box<[(u64, OneStatement); SINGLE_SLOTS]>,
}

impl Default for Singles {
    fn default() -> Self {
        Singles {
            hasher: Default::default(),
            slots: Box::new([(0, OneStatement::default()); SINGLE_SLOTS]),
        }
    }
}

impl Singles {
    fn hash(&self, text: &str) -> u64 {
        // 0 marks an empty slot.
        std::hash::BuildHasher::hash_one(&self.hasher, text) | 1
    }

    /// From the high bits: the lowest is always set.
    fn slot(hash: u64) -> usize {
        (hash >> 48) as usize % SINGLE_SLOTS
    }

    fn get(&self, hash: u64) -> Option<OneStatement> {
        let (h, one) = self.slots[Self::slot(hash)];
        (h == hash).then_some(one)
    }

    fn put(&mut self, hash: u64, one: OneStatement) {
        self.slots[Self::slot(hash)] = (hash, one);
    }
}

/// A text found to be one statement: its effect on a transaction block,
/// with a block open as it starts and without.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct OneStatement {
    closed: BlockEffect,
    open: BlockEffect,
}

impl OneStatement {
    fn of(statement: &str) -> OneStatement {
        OneStatement {
            closed: BlockEffect::single(statement, false),
            open: BlockEffect::single(statement, true),
        }
    }

    fn effect(&self, in_block: bool) -> BlockEffect {
        if in_block {
            self.open
        } else {
            self.closed
        }
    }
}

impl Tracker {
    /// Whether this hit begins a statement (before it is handed to
    /// [`Self::on_hit`]), and if so whether the statement before it failed
    /// (the server then skipped the rest of a pipeline up to its Sync): the
    /// client side names the query the server runs by that order.
    pub fn begins_statement(&self, hit: &ServerHit) -> Option<bool> {
        let b = self.backends.get(&hit.at.pid);
        let running = b.and_then(|b| b.query.as_ref().map(|q| (b, q)));
        let begins = match (hit.site, &hit.text) {
            (site::STATEMENT_STATUS, Some(text)) => {
                !running.is_some_and(|(b, q)| !b.completed && &q.text == text)
            }
            // The next statement of a simple-protocol text of several.
            (site::COMMAND_DONE, _) => {
                running.is_some_and(|(b, _)| !b.completed && !b.rest.is_empty())
            }
            _ => false,
        };
        let failed = match running {
            Some((b, q)) => q.error.is_some() || (self.errors_by_level && b.error.is_some()),
            None => b.is_some_and(|b| b.last_failed),
        };
        begins.then_some(failed)
    }

    /// A statement text is reported. Where statements end at EndCommand, a
    /// simple-protocol text of several is run statement by statement.
    pub(super) fn open_text(
        &mut self,
        at: Origin,
        text: Arc<str>,
        truncated: bool,
        client: &dyn Fn(u32) -> Option<ClientIds>,
    ) {
        let several =
            self.completing.contains(&(at.conn as u32)) && text.as_bytes().contains(&b';');
        // The same texts come again and again (prepared statements, pools):
        // one statement's effect is remembered, not split for anew.
        let hash = (several && !truncated).then(|| self.single.hash(&text));
        if let Some(hash) = hash {
            if let Some(one) = self.single.get(hash) {
                let effect = one.effect(self.in_block(at.pid));
                self.open_query(at, text, truncated, client, Some(effect));
                self.backends.get_mut(&at.pid).expect("entry exists").whole = false;
                return;
            }
        }
        let pieces = if several && !truncated {
            crate::pipeline::shape::statements(&text)
        } else {
            None
        };
        match pieces.as_deref() {
            Some([first, rest @ ..]) if !rest.is_empty() => {
                self.open_query(at, Arc::from(*first), false, client, None);
                let b = self.backends.get_mut(&at.pid).expect("entry exists");
                b.rest = rest.iter().map(|s| Arc::from(*s)).collect();
            }
            _ => {
                // One statement: its effect from the piece split already
                // (the text would be split again to read it).
                let effect = match pieces.as_deref() {
                    Some([one]) => {
                        let memo = OneStatement::of(one);
                        if let Some(hash) = hash {
                            self.single.put(hash, memo);
                        }
                        Some(memo.effect(self.in_block(at.pid)))
                    }
                    _ => None,
                };
                let whole = several && pieces.as_ref().is_none_or(|p| p.len() > 1);
                drop(pieces);
                self.open_query(at, text, truncated, client, effect);
                self.backends.get_mut(&at.pid).expect("entry exists").whole = whole;
            }
        }
    }

    /// EndCommand: the running statement completed, having processed `rows`.
    /// The next statement of its text, if any, begins.
    pub(super) fn command_done(
        &mut self,
        at: Origin,
        rows: u64,
        client: &dyn Fn(u32) -> Option<ClientIds>,
        out: &mut Vec<ServerSpan>,
    ) {
        let b = self
            .backends
            .get_mut(&at.pid)
            .expect("entry made by on_hit");
        // Read while held (close_quiet), now sent with the next record.
        if at.ts_ns == b.done_ns && at.ts_ns != 0 {
            return;
        }
        let Some(q) = b.query.as_mut() else {
            self.counters.unmatched_completions += 1;
            return;
        };
        if b.completed {
            if b.whole {
                (q.end_ns, q.rows) = (at.ts_ns, None);
            } else {
                self.counters.unmatched_completions += 1;
            }
            return;
        }
        (q.end_ns, q.rows, b.completed) = (at.ts_ns.max(q.start_ns), Some(rows), true);
        if let Some(next) = b.rest.pop_front() {
            let rest = std::mem::take(&mut b.rest);
            self.end_statement(at, client, out);
            self.open_query(at, next, false, client, None);
            self.backends.get_mut(&at.pid).expect("entry exists").rest = rest;
        }
    }

    /// Completed statements of backends quiet since `quiet_since` (monotonic
    /// ns) are closed: their idle report is not sent (repeat::COMPLETES), and
    /// a backend that sent nothing after the completion has nothing more to
    /// add to them. Those in a wait or an error report stay open. A running
    /// one completed if the kernel side holds its completion (`held`: read
    /// from there, it is not sent until the backend's next record).
    pub fn close_quiet(
        &mut self,
        quiet_since: u64,
        client: &dyn Fn(u32) -> Option<ClientIds>,
        held: &mut dyn FnMut(u32) -> Option<dbtel_common::Held>,
        out: &mut Vec<ServerSpan>,
    ) {
        let quiet: Vec<(Origin, bool)> = self
            .backends
            .iter()
            .filter(|(_, b)| {
                // Running: completed only if its server's EndCommand is probed (and held).
                (b.completed || b.query.is_some() && self.completing.contains(&b.postmaster))
                    && b.waits.is_empty()
                    && !b.awaiting_code
                    && b.last_ns < quiet_since
            })
            .map(|(pid, b)| {
                let at = Origin {
                    pid: *pid,
                    tid: *pid,
                    ts_ns: b.query.as_ref().map_or(0, |q| q.end_ns),
                    conn: b.postmaster as u64,
                };
                (at, b.completed)
            })
            .collect();
        for (mut at, completed) in quiet {
            if !completed {
                let Some(h) = held(at.pid) else { continue };
                let b = self.backends.get_mut(&at.pid).expect("listed above");
                if b.query.as_ref().is_none_or(|q| h.ts_ns < q.start_ns) {
                    continue;
                }
                at.ts_ns = h.ts_ns;
                self.command_done(at, h.args[1], client, out);
                let b = self.backends.get_mut(&at.pid).expect("listed above");
                b.done_ns = h.ts_ns;
                if !b.completed {
                    continue; // the next statement of a text of several
                }
            }
            self.end_statement(at, client, out);
        }
    }
}

/// Where statements end at EndCommand, one that ends without it and
/// without an error never ran: only parsed or bound (a prepare, a
/// describe), or its portal was suspended at a row limit (the Execute
/// that finishes it is the span). It is no statement of its block, and
/// a BEGIN that never ran opened nothing.
pub(super) fn drop_unexecuted(
    b: &mut Backend,
    errors_by_level: bool,
    completing: &crate::FastSet<u32>,
    counters: &mut Counters,
    at: Origin,
    out: &mut Vec<ServerSpan>,
) -> bool {
    let failed = b.query.as_ref().is_some_and(|q| q.error.is_some())
        || (errors_by_level && b.error.is_some());
    if b.query.is_none() || b.completed || failed || !completing.contains(&b.postmaster) {
        b.rest.clear();
        return false;
    }
    b.query = None;
    b.rest.clear();
    (b.deadlock, b.awaiting_code, b.awaiting_message) = (false, false, false);
    end_waits(b, None, false, at.ts_ns, out);
    if std::mem::take(&mut b.effect).opened {
        b.txn = None;
    } else if let Some(t) = b.txn.as_mut() {
        t.statements = t.statements.saturating_sub(1);
    }
    counters.unexecuted += 1;
    counters.queries -= 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::server::blocks::TxnOutcome;

    #[test]
    fn a_remembered_text_keeps_its_effect_in_and_out_of_a_block() {
        let mut s = Singles::default();
        let (begin, commit) = (s.hash("BEGIN;"), s.hash("COMMIT;"));
        assert!(s.get(begin).is_none());
        s.put(begin, OneStatement::of("BEGIN"));
        s.put(commit, OneStatement::of("COMMIT"));
        let b = s.get(begin).expect("remembered");
        assert!(b.effect(false).opened && !b.effect(true).opened);
        let c = s.get(commit).expect("remembered");
        assert_eq!(c.effect(true).ends, Some(TxnOutcome::Committed));
        assert_eq!(c.effect(false).ends, None);
        assert!(s.get(s.hash("SELECT 1;")).is_none(), "another text");
    }

    #[test]
    fn texts_spread_over_every_slot() {
        let s = Singles::default();
        let used: std::collections::HashSet<usize> = (0..4096)
            .map(|i| Singles::slot(s.hash(&format!("select {i};"))))
            .collect();
        // 4096 draws over 1024 slots fill ~1005 of them (half, if a bit were wasted).
        assert!(used.len() > 950, "{}", used.len());
    }
}
