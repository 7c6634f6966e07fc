//! Sessions idle inside a transaction: their locks block others, so a long
//! one is logged, once per session and transaction.

use std::{sync::Arc, time::Duration};

use super::ServerSide;
use crate::postgres::catalog::Snapshot;

/// A session idle in transaction this long is logged (once).
const IDLE_IN_TXN_WARN: Duration = Duration::from_secs(60);

impl ServerSide {
    /// Sessions idle inside a transaction for long hold locks others may
    /// need: said once per session and transaction, from the poller's snapshot.
    pub fn warn_idle_in_transaction(&mut self) {
        let snapshots: Vec<(u32, Arc<Snapshot>)> = self
            .catalogs
            .iter()
            .map(|(pm, c)| (*pm, c.snapshot.borrow().clone()))
            .collect();
        for (pm, snap) in snapshots {
            self.warn_idle(pm, &snap);
        }
        if self.idle_warned.len() > 10_000 {
            self.idle_warned.clear();
        }
    }

    fn warn_idle(&mut self, postmaster: u32, snap: &Snapshot) {
        for s in &snap.stats.idle_in_transaction {
            let Some(age) = s
                .xact_age_ms
                .filter(|a| *a >= IDLE_IN_TXN_WARN.as_millis() as f64)
            else {
                continue;
            };
            // Keyed by the transaction's start, so a new transaction warns again.
            let started = snap.taken_at.map_or(0, |t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64)
                    .saturating_sub(age as u64)
                    / 1000
            });
            if self.idle_warned.insert((postmaster, s.pid, started)) {
                log::warn!(
                    "backend {} of server {postmaster} has been idle in transaction for {:.0} s (transaction open {:.0} s): its locks block others",
                    s.pid,
                    s.duration_ms / 1000.0,
                    age / 1000.0
                );
            }
        }
    }
}
