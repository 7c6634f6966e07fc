//! What each finished span adds to the instruments: pure, so the rules
//! (which spans count for which instrument, and once only) are unit-tested.

use super::{
    cardinality::{Limiter, Seen, OTHER},
    instruments::id,
    recent::{Entry, Recent, Series},
    store::Store,
};
use crate::pipeline::dbspan::{DbSpan, Kind, Role};

/// The label values without a natural bound, each capped.
#[derive(Debug)]
pub struct Limits {
    pub summary: Limiter,
    pub collection: Limiter,
    pub namespace: Limiter,
    pub server: Limiter,
    pub status: Limiter,
    /// Where query spans' labels led, by their blocks.
    recent: Recent,
}

impl Limits {
    pub fn new(summaries: usize) -> Self {
        Limits {
            summary: Limiter::new(summaries),
            collection: Limiter::new(summaries),
            namespace: Limiter::new(50),
            server: Limiter::new(50),
            status: Limiter::new(50),
            recent: Recent::default(),
        }
    }

    /// The limiters whose sightings an entry keeps, in its `counted` order:
    /// namespace, collection, summary, server address.
    fn counted_limiters(&mut self) -> [&mut Limiter; 4] {
        [
            &mut self.namespace,
            &mut self.collection,
            &mut self.summary,
            &mut self.server,
        ]
    }

    /// One more sighting of each value a remembered entry admitted.
    fn count(&mut self, counted: [Option<usize>; 4]) {
        for (l, slot) in self.counted_limiters().into_iter().zip(counted) {
            if let Some(slot) = slot {
                l.count(slot);
            }
        }
    }
}

/// The label value for what a limiter said of it.
fn shown(seen: Seen, v: Option<&str>) -> &str {
    match seen {
        Seen::Refused => OTHER,
        _ => v.unwrap_or(""),
    }
}

/// Records a span into the series a span with its blocks recorded into.
fn replay(at: Series, span: &DbSpan, secs: f64, store: &mut Store) {
    if span.kind == Kind::Client {
        store.observe_at(id::CLIENT_DURATION, at.duration, secs);
        if let (Some(rows), Some(series)) = (span.rows(), at.rows) {
            store.observe_at(id::CLIENT_ROWS, series, rows as f64);
        }
    } else {
        store.observe_at(id::SERVER_DURATION, at.duration, secs);
    }
    if let Some(series) = at.query {
        store.observe_at(id::QUERY_DURATION, series, secs);
    }
}

/// The contention a failed statement's code stands for.
pub fn contention_of(status: &str) -> Option<&'static str> {
    Some(match status {
        "40P01" | "1213" => "deadlock",
        "40001" => "serialization_failure",
        "55P03" | "1205" => "lock_timeout",
        _ => return None,
    })
}

/// Records one finished span (every span, before sampling). `slow`: the
/// slow-query detector flagged it.
pub fn record(span: &DbSpan, slow: bool, store: &mut Store, l: &mut Limits) {
    let secs = span.duration_ns() as f64 / 1e9;
    let role = span.role();
    let memo = role == Role::Query && span.labels_in_blocks();
    if memo {
        if let Some(e) = l.recent.get(span) {
            let (series, counted) = (e.series, e.counted);
            l.count(counted);
            replay(series, span, secs, store);
            if slow && span.outermost() {
                // Admitted (else there is no entry): the value itself.
                let summary = span.summary().unwrap_or("");
                store.add(id::SLOW, &[span.system().unwrap_or(""), summary], 1.0);
            }
            return;
        }
    }
    let system = span.system().unwrap_or("");
    let ns_seen = l.namespace.admit_seen(span.namespace().unwrap_or(""));
    let ns = shown(ns_seen, span.namespace());
    match role {
        Role::Query => {
            let op = span.operation().unwrap_or("");
            let coll_seen = l.collection.admit_seen(span.collection().unwrap_or(""));
            let coll = shown(coll_seen, span.collection());
            let summary_seen = l.summary.admit_seen(span.summary().unwrap_or(""));
            let summary = shown(summary_seen, span.summary());
            let err = l.status.admit(span.error_type().unwrap_or(""));
            let status = l.status.admit(span.status_code().unwrap_or(""));
            let (duration, rows, addr_seen) = match span.kind {
                Kind::Client => {
                    let addr_seen = l.server.admit_seen(span.server_address().unwrap_or(""));
                    let addr = shown(addr_seen, span.server_address());
                    // Formatted on the stack: a String per span was a malloc and a free.
                    let mut buf = itoa::Buffer::new();
                    let port = span.server_port().map_or("", |p| buf.format(p));
                    let duration = store.observe(
                        id::CLIENT_DURATION,
                        &[system, ns, op, coll, summary, addr, port, status, err],
                        secs,
                    );
                    let rows = span.rows().map(|rows| {
                        store.observe(
                            id::CLIENT_ROWS,
                            &[system, ns, op, coll, summary],
                            rows as f64,
                        )
                    });
                    (duration, rows, addr_seen)
                }
                _ => {
                    let duration = store.observe(
                        id::SERVER_DURATION,
                        &[system, ns, op, coll, summary, status, err],
                        secs,
                    );
                    (duration, None, Seen::Empty)
                }
            };
            let mut query = None;
            if span.outermost() {
                query = store.observe(
                    id::QUERY_DURATION,
                    &[system, ns, op, coll, summary, err],
                    secs,
                );
                if let Some(kind) = span.status_code().and_then(contention_of) {
                    store.add(id::CONTENTION, &[system, ns, kind], 1.0);
                }
                if slow {
                    store.add(id::SLOW, &[system, summary], 1.0);
                }
            }
            // Remembered only where nothing can change next time: every value
            // admitted (a refused one may be admitted later), no overflow series.
            let seen = [ns_seen, coll_seen, summary_seen, addr_seen];
            let complete = duration.is_some()
                && rows.is_none_or(|r| r.is_some())
                && (query.is_some() || !span.outermost());
            if memo && complete && !seen.contains(&Seen::Refused) {
                l.recent.put(Entry {
                    blocks: span.blocks.clone(),
                    kind: span.kind,
                    outermost: span.outermost(),
                    system: system.into(),
                    series: Series {
                        duration: duration.expect("checked"),
                        query,
                        rows: rows.flatten(),
                    },
                    counted: seen.map(|s| match s {
                        Seen::Counted(slot) => Some(slot),
                        _ => None,
                    }),
                });
            }
        }
        Role::Transaction if span.outermost() => {
            let outcome = span.outcome().unwrap_or("");
            store.observe(id::TXN_DURATION, &[system, ns, outcome], secs);
            // Created at 0 with the first transaction, so rate() has points
            // before the first retry or contention.
            let retried = span.retry_count().is_some_and(|n| n > 0);
            store.add(id::RETRIES, &[system, ns], if retried { 1.0 } else { 0.0 });
            for kind in ["lock_wait", "deadlock"] {
                store.add(id::CONTENTION, &[system, ns, kind], 0.0);
            }
        }
        Role::Transaction => {}
        Role::LockWait => {
            let coll = l.collection.admit(span.collection().unwrap_or(""));
            let outcome = span.lock_outcome().unwrap_or("");
            store.observe(id::LOCK_WAIT, &[system, ns, coll, outcome], secs);
            store.add(id::CONTENTION, &[system, ns, "lock_wait"], 1.0);
        }
    }
}

#[cfg(test)]
#[path = "from_spans_tests.rs"]
mod tests;
