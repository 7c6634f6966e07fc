//! Slow queries: a statement over `--slow-query-threshold` (SLOW_QUERY_TIME,
//! milliseconds, as in the in-process libraries) gets `db.slow_query=true`
//! and a `slow_query_detected` event at the moment it crossed the threshold.

use opentelemetry::KeyValue;

use crate::pipeline::{
    dbspan::{DbSpan, Role},
    span::Event,
};

/// Marks `span` if it is a statement slower than `threshold_ns`; says whether it did.
pub fn mark(span: &mut DbSpan, threshold_ns: u64) -> bool {
    if span.role() != Role::Query || span.duration_ns() <= threshold_ns {
        return false;
    }
    span.push_attribute(KeyValue::new("db.slow_query", true));
    span.events.push(Event {
        name: "slow_query_detected",
        ts_ns: span.start_ns + threshold_ns,
        attributes: vec![
            KeyValue::new(
                "dbtel.slow_query.threshold_ms",
                (threshold_ns / 1_000_000) as i64,
            ),
            KeyValue::new(
                "dbtel.slow_query.duration_ms",
                span.duration_ns() as f64 / 1e6,
            ),
        ],
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{
        dbspan::{Described, Kind},
        span::Ids,
    };

    fn span(kind: Kind, attrs: Vec<KeyValue>, ms: u64) -> DbSpan {
        DbSpan::new(
            1,
            Ids::default(),
            kind,
            (5_000, 5_000 + ms * 1_000_000),
            Described {
                name: "SELECT".into(),
                attributes: attrs,
                blocks: Default::default(),
                error: None,
            },
            vec![],
            vec![],
        )
    }

    #[test]
    fn only_statements_over_the_threshold_are_marked() {
        let mut s = span(Kind::Client, vec![], 120);
        assert!(mark(&mut s, 100_000_000));
        assert!(s
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "db.slow_query" && kv.value == true.into()));
        assert_eq!(s.events[0].name, "slow_query_detected");
        assert_eq!(s.events[0].ts_ns, 5_000 + 100_000_000);
        let mut fast = span(Kind::Client, vec![], 100);
        assert!(!mark(&mut fast, 100_000_000));
        // A transaction is not a query.
        let mut txn = span(
            Kind::Client,
            vec![KeyValue::new("db.transaction.outcome", "committed")],
            500,
        );
        assert!(!mark(&mut txn, 100_000_000));
        assert!(txn.events.is_empty());
    }
}
