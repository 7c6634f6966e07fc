//! The catalog's answers about lock waits, resolved against what this side
//! knows of the blockers (their transactions, their last statements).

use super::*;

impl Tracker {
    /// The catalog's answer for a wait still on when it looked: kept for
    /// the wait's span. Each blocker's transaction is linked: the client's
    /// (`client_txn` of its connection id) when that client is traced,
    /// else the one this server side follows.
    pub fn blocked(&mut self, ask: Ask, f: WaitFacts, client_txn: &dyn Fn(u64) -> Option<Ids>) {
        let mut views = Vec::with_capacity(f.blockers.len());
        for b in &f.blockers {
            let conn = self.conns.get((ask.server, b.connection_id));
            let txn = conn.and_then(|c| c.txn.as_ref());
            let query = match &b.query {
                Some(q) => Some(self.facts.get(q)),
                None => conn.and_then(|c| c.last.clone()),
            };
            let exact_age =
                txn.map(|t| (ask.start_ns.saturating_sub(t.start_ns) / 1_000_000) as i64);
            views.push(BlockerView {
                connection_id: b.connection_id,
                query,
                state: b.state.clone(),
                transaction_age_ms: exact_age.or(b.transaction_age_ms),
                mode: b.mode.clone(),
                transaction: client_txn(b.connection_id).or(txn.map(|t| t.ids)),
            });
        }
        self.answers
            .put((ask.server, ask.tid, ask.start_ns), Blocked::new(f, views));
    }

    /// Answers held for waits whose statement has not ended (for bound checks).
    pub fn answers_held(&self) -> usize {
        self.answers.len()
    }
}
