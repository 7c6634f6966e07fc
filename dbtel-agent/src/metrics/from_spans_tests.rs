use opentelemetry::KeyValue;

use super::*;
use crate::{
    metrics::store::Cell,
    pipeline::{dbspan::Described, span::Ids},
};

fn span(kind: Kind, attrs: Vec<KeyValue>, ms: u64) -> DbSpan {
    DbSpan::new(
        1,
        Ids::default(),
        kind,
        (0, ms * 1_000_000),
        Described {
            name: "x".into(),
            attributes: attrs,
            blocks: Default::default(),
            error: None,
        },
        vec![],
        vec![],
    )
}

fn query(kind: Kind, status: Option<&str>) -> DbSpan {
    let mut a = vec![
        KeyValue::new("db.system.name", "postgresql"),
        KeyValue::new("db.namespace", "shop"),
        KeyValue::new("db.operation.name", "SELECT"),
        KeyValue::new("db.collection.name", "items"),
        KeyValue::new("db.query.summary", "SELECT items"),
        KeyValue::new("db.response.returned_rows", 3_i64),
    ];
    if let Some(s) = status {
        a.push(KeyValue::new("db.response.status_code", s.to_string()));
        a.push(KeyValue::new("error.type", s.to_string()));
    }
    span(kind, a, 20)
}

fn count(store: &Store, id: usize) -> u64 {
    store.families[id]
        .series
        .iter()
        .map(|s| match &s.cell {
            Cell::Histogram { count, .. } => *count,
            Cell::Counter(c) => *c as u64,
            Cell::Gauge(g) => *g as u64,
        })
        .sum()
}

#[test]
fn a_query_seen_from_both_sides_counts_once_for_the_library_names() {
    let (mut store, mut l) = (Store::default(), Limits::new(200));
    record(&query(Kind::Client, None), false, &mut store, &mut l);
    record(
        &query(Kind::Server, None).mirrored(true),
        false,
        &mut store,
        &mut l,
    );
    record(&query(Kind::Server, None), false, &mut store, &mut l);
    assert_eq!(count(&store, id::CLIENT_DURATION), 1);
    assert_eq!(count(&store, id::CLIENT_ROWS), 1);
    assert_eq!(count(&store, id::SERVER_DURATION), 2);
    // The client's, and the server's whose client is not traced.
    assert_eq!(count(&store, id::QUERY_DURATION), 2);
}

#[test]
fn failed_statements_count_as_their_contention() {
    let (mut store, mut l) = (Store::default(), Limits::new(200));
    for s in ["40P01", "1213", "40001", "55P03", "42P01"] {
        record(&query(Kind::Client, Some(s)), false, &mut store, &mut l);
    }
    let fam = &store.families[id::CONTENTION];
    let get = |kind: &str| {
        fam.series
            .iter()
            .find(|s| &*s.values[2] == kind)
            .map(|s| s.cell.clone())
    };
    assert_eq!(get("deadlock"), Some(Cell::Counter(2.0)));
    assert_eq!(get("serialization_failure"), Some(Cell::Counter(1.0)));
    assert_eq!(get("lock_timeout"), Some(Cell::Counter(1.0)));
}

#[test]
fn transactions_count_retries_and_lock_waits_count_as_contention() {
    let (mut store, mut l) = (Store::default(), Limits::new(200));
    let txn = |retry: i64| {
        span(
            Kind::Client,
            vec![
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.transaction.outcome", "committed"),
                KeyValue::new("db.transaction.retry_count", retry),
            ],
            5,
        )
    };
    for r in [0, 1, 2, 0] {
        record(&txn(r), false, &mut store, &mut l);
    }
    assert_eq!(count(&store, id::TXN_DURATION), 4);
    assert_eq!(count(&store, id::RETRIES), 2);
    // Server transaction under a traced client's: not again.
    let server_txn = span(
        Kind::Server,
        vec![KeyValue::new("db.transaction.outcome", "committed")],
        5,
    )
    .mirrored(true);
    record(&server_txn, false, &mut store, &mut l);
    assert_eq!(count(&store, id::TXN_DURATION), 4);
    let wait = span(
        Kind::Internal,
        vec![
            KeyValue::new("db.system.name", "mariadb"),
            KeyValue::new("db.mysql.lock.outcome", "granted"),
        ],
        300,
    );
    record(&wait, false, &mut store, &mut l);
    assert_eq!(count(&store, id::LOCK_WAIT), 1);
    assert_eq!(count(&store, id::CONTENTION), 1);
}

#[test]
fn summaries_are_capped_with_other() {
    let (mut store, mut l) = (Store::default(), Limits::new(200));
    for i in 0..3_000 {
        let s = span(
            Kind::Client,
            vec![
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.query.summary", format!("SELECT missing{i}")),
            ],
            1,
        );
        record(&s, true, &mut store, &mut l);
    }
    let fam = &store.families[id::SLOW];
    assert_eq!(fam.series.len(), 201);
    assert!(fam.series.iter().any(|s| &*s.values[1] == "other"));
    assert_eq!(count(&store, id::SLOW), 3_000);
}
