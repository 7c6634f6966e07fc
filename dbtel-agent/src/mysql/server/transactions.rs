//! Server transaction spans: opened under the client's transaction when
//! that client is traced, closed with their outcome.

use super::*;

impl Tracker {
    /// A transaction opens: under the client's transaction when the client
    /// is traced (a MySQL client's query has a parent only inside its
    /// transaction: that transaction's span).
    pub(super) fn open_txn(&mut self, client: Option<Ids>, start_ns: u64) -> OpenTxn {
        // A parent that is the application's span (sqlcommenter) is not a
        // client transaction.
        let ids = match client.filter(|c| c.parent_span_id != 0 && !c.remote) {
            Some(c) => Ids {
                trace_id: c.trace_id,
                span_id: c.parent_span_id,
                parent_span_id: 0,
                remote: false,
                remote_sampled: false,
            }
            .child(&mut self.gen),
            None => self.gen.root(),
        };
        OpenTxn {
            joined: client.is_some_and(|c| c.parent_span_id != 0 && !c.remote),
            ids,
            start_ns,
            statements: 0,
        }
    }

    pub(super) fn close_txn(
        &mut self,
        key: (u32, u64),
        t: OpenTxn,
        end_ns: u64,
        outcome: Outcome,
        errno: Option<u32>,
        out: &mut Vec<DbSpan>,
    ) {
        let end_ns = end_ns.max(t.start_ns);
        let name = match outcome {
            Outcome::Committed => "transaction.committed",
            Outcome::RolledBack => "transaction.rolled_back",
            Outcome::Prepared => "transaction.prepared",
            Outcome::Incomplete => "transaction.incomplete",
        };
        let events = vec![
            Event {
                name: "transaction.started",
                ts_ns: t.start_ns,
                attributes: vec![],
            },
            Event {
                name,
                ts_ns: end_ns,
                attributes: vec![],
            },
        ];
        let span = TxnSpan {
            ids: t.ids,
            joined: t.joined,
            pid: key.0,
            connection_id: key.1,
            start_ns: t.start_ns,
            end_ns,
            outcome,
            errno,
            statements: t.statements,
            events,
        };
        out.push(spans::txn_span(span, self.system));
    }
}
