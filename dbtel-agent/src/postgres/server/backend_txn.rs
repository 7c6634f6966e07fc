//! Transaction blocks: opened under the client's transaction when the
//! client is traced, closed with their outcome, and a statement's effect on
//! its block applied at the statement's end.

use super::{Backend, ClientIds, ServerSpan, ServerTxn, Tracker, TxnOutcome};
use crate::{
    events::Origin,
    pipeline::span::{Event, IdGen},
};

/// A block opens (BEGIN, or the chained block after COMMIT AND CHAIN):
/// under the client's transaction when the client is traced.
pub(super) fn open_txn(
    b: &mut Backend,
    gen: &mut IdGen,
    at: Origin,
    client: &dyn Fn(u32) -> Option<ClientIds>,
) {
    let parent = client(at.pid).and_then(|c| c.txn);
    let ids = match parent {
        Some(p) => p.child(gen),
        None => gen.root(),
    };
    b.txn = Some(ServerTxn {
        pid: at.pid,
        postmaster: b.postmaster,
        ids,
        joined: parent.is_some(),
        adopted: false,
        start_ns: at.ts_ns,
        end_ns: at.ts_ns,
        outcome: TxnOutcome::Incomplete,
        error: None,
        statements: 0,
        events: vec![Event {
            name: "transaction.started",
            ts_ns: at.ts_ns,
            attributes: vec![],
        }],
    });
}

impl Tracker {
    /// The running statement is over (idle, or the next one began): its span
    /// closes and its effect on the block applies — unless it failed: a failed
    /// BEGIN opened nothing, a failed COMMIT or PREPARE TRANSACTION rolled
    /// back, a failed AND CHAIN chains nothing. (ROLLBACK closed the block at
    /// its abort already.)
    pub(super) fn end_statement(
        &mut self,
        at: Origin,
        client: &dyn Fn(u32) -> Option<ClientIds>,
        out: &mut Vec<ServerSpan>,
    ) {
        // Looked up once: this runs for every statement.
        let Some(b) = self.backends.get_mut(&at.pid) else {
            return;
        };
        let by_level = self.errors_by_level;
        if super::completion::drop_unexecuted(
            b,
            by_level,
            &self.completing,
            &mut self.counters,
            at,
            out,
        ) {
            return;
        }
        let (failed, end) = super::close_query(b, by_level, &mut self.ended, at.pid, at.ts_ns, out);
        let e = std::mem::take(&mut b.effect);
        if failed && e.opened {
            b.txn = None;
            return;
        }
        if let Some(outcome) = e.ends {
            let outcome = if failed {
                TxnOutcome::RolledBack
            } else {
                outcome
            };
            close_txn_of(b, end, outcome, out);
        }
        if e.reopens && !failed {
            open_txn(b, &mut self.gen, Origin { ts_ns: end, ..at }, client);
        }
    }

    pub(super) fn close_txn(
        &mut self,
        pid: u32,
        ts: u64,
        outcome: TxnOutcome,
        out: &mut Vec<ServerSpan>,
    ) {
        if let Some(b) = self.backends.get_mut(&pid) {
            close_txn_of(b, ts, outcome, out);
        }
    }
}

/// Closes a backend's transaction block, if open, with this outcome.
fn close_txn_of(b: &mut Backend, ts: u64, outcome: TxnOutcome, out: &mut Vec<ServerSpan>) {
    if let Some(mut t) = b.txn.take() {
        t.end_ns = ts.max(t.start_ns);
        // An aborted block commits or prepares nothing.
        t.outcome = if t.error.is_some() && outcome != TxnOutcome::Incomplete {
            TxnOutcome::RolledBack
        } else {
            outcome
        };
        let name = match t.outcome {
            TxnOutcome::Committed => "transaction.committed",
            TxnOutcome::RolledBack => "transaction.rolled_back",
            TxnOutcome::Prepared => "transaction.prepared",
            TxnOutcome::Incomplete => "transaction.incomplete",
        };
        t.events.push(Event {
            name,
            ts_ns: t.end_ns,
            attributes: vec![],
        });
        out.push(ServerSpan::Txn(t));
    }
}
