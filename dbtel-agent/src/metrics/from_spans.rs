//! What each finished span adds to the instruments: pure, so the rules
//! (which spans count for which instrument, and once only) are unit-tested.

use super::{cardinality::Limiter, instruments::id, store::Store};
use crate::pipeline::dbspan::{DbSpan, Kind, Role};

/// The label values without a natural bound, each capped.
#[derive(Debug)]
pub struct Limits {
    pub summary: Limiter,
    pub collection: Limiter,
    pub namespace: Limiter,
    pub server: Limiter,
    pub status: Limiter,
}

impl Limits {
    pub fn new(summaries: usize) -> Self {
        Limits {
            summary: Limiter::new(summaries),
            collection: Limiter::new(summaries),
            namespace: Limiter::new(50),
            server: Limiter::new(50),
            status: Limiter::new(50),
        }
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
    let system = span.system().unwrap_or("");
    let ns = l.namespace.admit(span.namespace().unwrap_or(""));
    match span.role() {
        Role::Query => {
            let op = span.operation().unwrap_or("");
            let coll = l.collection.admit(span.collection().unwrap_or(""));
            let summary = l.summary.admit(span.summary().unwrap_or(""));
            let err = l.status.admit(span.error_type().unwrap_or(""));
            let status = l.status.admit(span.status_code().unwrap_or(""));
            match span.kind {
                Kind::Client => {
                    let addr = l.server.admit(span.server_address().unwrap_or(""));
                    // Formatted on the stack: a String per span was a malloc and a free.
                    let mut buf = itoa::Buffer::new();
                    let port = span.server_port().map_or("", |p| buf.format(p));
                    store.observe(
                        id::CLIENT_DURATION,
                        &[system, ns, op, coll, summary, addr, port, status, err],
                        secs,
                    );
                    if let Some(rows) = span.rows() {
                        store.observe(
                            id::CLIENT_ROWS,
                            &[system, ns, op, coll, summary],
                            rows as f64,
                        );
                    }
                }
                _ => store.observe(
                    id::SERVER_DURATION,
                    &[system, ns, op, coll, summary, status, err],
                    secs,
                ),
            }
            if span.outermost() {
                store.observe(
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
