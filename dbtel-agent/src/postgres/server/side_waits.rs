//! Lock waits seen from the loop: their blockers looked up in the catalog
//! once a wait has lasted a while, links to the blockers' traced work, and
//! a deadlock reported on every participant.

use std::time::Duration;

use opentelemetry::KeyValue;

use super::{Reply, ServerSide};
use crate::{
    pipeline::span::{self, Ids},
    postgres::libpq::reconstruct::Reconstructor,
    postgres::server::backend::LockTag,
    postgres::server::spans::WaitFacts,
};

/// A wait is looked up in the catalog only if it lasts this long:
/// pg_blocking_pids takes every lock-manager partition lock, and a busy
/// server has many sub-millisecond waits (measured: looking each up cost a
/// tpcb-like run ~8 % of its throughput on 2 vCPUs).
const WAIT_GRACE: Duration = Duration::from_millis(20);
/// Catalog lookups of lock waits in flight at most; more waits go without.
const MAX_LOOKUPS: usize = 8;

impl ServerSide {
    /// Who blocks `pid`, and the relation locked: asked once the wait has
    /// lasted WAIT_GRACE, while it is still on.
    pub(super) fn ask(&mut self, postmaster: u32, pid: u32, wait: Ids, tag: LockTag) {
        if !self.catalogs.contains_key(&postmaster) {
            return;
        }
        self.facts.insert(wait.span_id, None);
        let tx = self.tx.clone();
        let seen = std::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(WAIT_GRACE).await;
            tx.send(Reply::Due {
                postmaster,
                wait,
                pid,
                tag,
                seen,
            });
        });
    }

    pub(super) fn look_up_wait(
        &mut self,
        postmaster: u32,
        pid: u32,
        wait: Ids,
        tag: LockTag,
        seen: std::time::Instant,
    ) {
        let Some(cat) = self.catalog(postmaster) else {
            return;
        };
        let still_waiting = self.tracker.open_wait(pid) == Some(wait);
        log::debug!(
            "lock wait {:x} of backend {pid}: due taken {} ms after it was seen, still waiting: {still_waiting}",
            wait.span_id,
            seen.elapsed().as_millis()
        );
        let blockers = still_waiting && self.lookups_in_flight < MAX_LOOKUPS;
        if still_waiting && !blockers {
            log::debug!(
                "lock wait of backend {pid}: {MAX_LOOKUPS} catalog lookups in flight already"
            );
        }
        if !blockers && tag.relation().is_none() {
            self.facts.insert(wait.span_id, Some(WaitFacts::default()));
            return;
        }
        self.lookups_in_flight += 1;
        let tx = self.tx.clone();
        let ns = self.pids.ns(pid);
        tokio::spawn(async move {
            let mut facts = WaitFacts::default();
            let who = async {
                if !blockers {
                    return Vec::new();
                }
                cat.blockers(ns).await.unwrap_or_else(|e| {
                    cat.warn_rate_limited(&e);
                    Vec::new()
                })
            };
            // A row lock is waited for on the holder's transaction id: the
            // table comes from the tuple lock the waiter holds meanwhile,
            // only while it waits, so it is asked in the same round trip as
            // the blockers (the connection pipelines the two queries).
            let what = async {
                match tag.relation() {
                    Some(r) => Some(r),
                    None if blockers && tag.locktag_type == 5 => {
                        cat.tuple_lock_of(ns).await.unwrap_or_else(|e| {
                            cat.warn_rate_limited(&e);
                            None
                        })
                    }
                    None => None,
                }
            };
            let (who, relation) = tokio::join!(who, what);
            facts.blockers = who;
            // Names are cached: after the first, no round trip.
            if let Some((db, rel)) = relation {
                match cat.relation_name(db, rel).await {
                    Ok(r) => facts.relation = r,
                    Err(e) => cat.warn_rate_limited(&e),
                }
            }
            log::debug!(
                "lock wait {:x}: catalog answered {} ms after the wait was seen: {} blockers, relation {:?}",
                wait.span_id,
                seen.elapsed().as_millis(),
                facts.blockers.len(),
                facts.relation
            );
            tx.send(Reply::Wait {
                postmaster,
                wait: wait.span_id,
                facts,
                seen,
            });
        });
    }

    /// What a backend is doing as dbtel traces it: the client's transaction,
    /// else its query (the application's trace), else the server's block or
    /// statement.
    fn traced_work(&self, pid: u32, recon: &Reconstructor) -> Option<Ids> {
        recon
            .client_context(self.pids.ns(pid))
            .and_then(|c| c.txn.or(c.query))
            .or_else(|| self.tracker.current(pid))
    }

    /// The blockers' transactions, as traced by dbtel.
    pub(super) fn blocker_links(
        &self,
        postmaster: u32,
        facts: &WaitFacts,
        recon: &Reconstructor,
    ) -> Vec<span::Link> {
        facts
            .blockers
            .iter()
            .filter_map(|b| {
                let ids = self.traced_work(self.pids.host(postmaster, b.pid), recon)?;
                Some(span::Link {
                    trace_id: ids.trace_id,
                    span_id: ids.span_id,
                    attributes: vec![
                        KeyValue::new("dbtel.link.type", "blocked_by"),
                        KeyValue::new("db.postgresql.backend.pid", b.pid as i64),
                    ],
                })
            })
            .collect()
    }

    pub(super) fn deadlock(
        &mut self,
        postmaster: u32,
        victim: u32,
        wait: Option<Ids>,
        ts_ns: u64,
        recon: &mut Reconstructor,
    ) {
        let host_of = |ns: i32| self.pids.host(postmaster, ns);
        let blockers = wait
            .and_then(|w| self.facts.get(&w.span_id).cloned().flatten())
            .map(|f| f.blockers)
            .unwrap_or_default();
        let victim_ns = self.pids.ns(victim);
        let mut attrs = vec![KeyValue::new(
            "db.postgresql.deadlock.victim.pid",
            victim_ns as i64,
        )];
        let mut pids = vec![victim_ns as i64];
        if let Some(q) = self.tracker.running_query(victim) {
            attrs.push(KeyValue::new(
                "db.postgresql.deadlock.victim.query",
                crate::pipeline::sql::facts(q, self.text).text,
            ));
        }
        for b in &blockers {
            pids.push(b.pid as i64);
            attrs.push(KeyValue::new(
                "db.postgresql.deadlock.other.pid",
                b.pid as i64,
            ));
            let q = self
                .tracker
                .running_query(host_of(b.pid))
                .map(str::to_string)
                .unwrap_or_else(|| b.query.clone());
            attrs.push(KeyValue::new(
                "db.postgresql.deadlock.other.query",
                crate::pipeline::sql::facts(&q, self.text).text,
            ));
            if let Some(ids) = self.traced_work(host_of(b.pid), recon) {
                attrs.push(KeyValue::new(
                    "db.postgresql.deadlock.other.trace_id",
                    format!("{:032x}", ids.trace_id),
                ));
                attrs.push(KeyValue::new(
                    "db.postgresql.deadlock.other.span_id",
                    format!("{:016x}", ids.span_id),
                ));
            }
        }
        if let Some(ids) = self.traced_work(victim, recon) {
            attrs.push(KeyValue::new(
                "db.postgresql.deadlock.victim.trace_id",
                format!("{:032x}", ids.trace_id),
            ));
            attrs.push(KeyValue::new(
                "db.postgresql.deadlock.victim.span_id",
                format!("{:016x}", ids.span_id),
            ));
        }
        attrs.push(KeyValue::new(
            "db.postgresql.deadlock.pids",
            opentelemetry::Value::Array(pids.into()),
        ));
        let ev = span::Event {
            name: "deadlock_detected",
            ts_ns,
            attributes: attrs,
        };
        // On every participant: its wait and the query that suffered it.
        if let Some(w) = wait {
            self.tracker.annotate_wait(w, ev.clone());
        }
        recon.annotate(victim_ns, ev.clone());
        for b in &blockers {
            if let Some(w) = self.tracker.open_wait(host_of(b.pid)) {
                self.tracker.annotate_wait(w, ev.clone());
            }
            recon.annotate(b.pid, ev.clone());
        }
    }
}
