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

/// Spans whose labels are their blocks' go through the remembered series;
/// each is recorded beside a twin carrying the same attributes as its own
/// (never remembered): the two stores and limiters must end up the same.
#[test]
fn remembered_series_record_exactly_what_reading_the_labels_does() {
    use crate::pipeline::attr_block::{AttrBlock, Blocks};
    use std::sync::Arc;

    let facts: Vec<Arc<AttrBlock>> = (0..12)
        .map(|i| {
            AttrBlock::new(vec![
                KeyValue::new("db.operation.name", "SELECT"),
                KeyValue::new("db.collection.name", format!("t{}", i % 5)),
                KeyValue::new("db.query.summary", format!("SELECT t{i}")),
            ])
        })
        .collect();
    let conns: Vec<Arc<AttrBlock>> = (0..4)
        .map(|i| {
            AttrBlock::new(vec![
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.namespace", format!("db{}", i % 3)),
                KeyValue::new("server.address", format!("h{i}")),
                KeyValue::new("server.port", 5432_i64),
            ])
        })
        .collect();
    // Caps small enough that some summaries are refused, then admitted late.
    let (mut with_blocks, mut la) = (Store::default(), Limits::new(6));
    let (mut own_only, mut lb) = (Store::default(), Limits::new(6));
    let mut next = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
    let mut remembered = 0;
    for _ in 0..20_000 {
        // Hot statements most of the time, so late admission happens.
        let f = &facts[if next(4) == 0 { next(12) } else { next(3) } as usize];
        let ci = next(4) as usize;
        let c = &conns[ci];
        // Mostly one side per connection, as traced: a client's or a server's.
        let kind = if ci.is_multiple_of(2) ^ (next(20) == 0) {
            Kind::Client
        } else {
            Kind::Server
        };
        let mut own = Vec::new();
        // Client spans carry their system as their own attribute.
        if kind == Kind::Client {
            let system = if next(30) == 0 {
                "mariadb"
            } else {
                "postgresql"
            };
            own.push(KeyValue::new("db.system.name", system));
        }
        if next(3) == 0 {
            own.push(KeyValue::new("db.response.returned_rows", next(50) as i64));
        }
        if next(40) == 0 {
            own.push(KeyValue::new("db.response.status_code", "40P01"));
            own.push(KeyValue::new("error.type", "40P01"));
        }
        if next(60) == 0 {
            own.push(KeyValue::new("db.namespace", "elsewhere"));
        }
        let (mirrored, slow, ms) = (ci == 1 && next(20) != 0, next(10) == 0, next(300));
        let described = |attributes: Vec<KeyValue>, blocks: Blocks| Described {
            name: "x".into(),
            attributes,
            blocks,
            error: None,
        };
        let make = |d: Described| {
            DbSpan::new(
                1,
                Ids::default(),
                kind,
                (0, ms * 1_000_000),
                d,
                vec![],
                vec![],
            )
            .mirrored(mirrored)
        };
        let a = make(described(own.clone(), Blocks::new(Some(f), Some(c))));
        // The twin: the blocks' attributes first, then its own (which win).
        let all: Vec<KeyValue> = f.kvs().iter().chain(c.kvs()).cloned().chain(own).collect();
        let b = make(described(all, Blocks::default()));
        // The twin's labels are its own: never remembered.
        assert!(!b.labels_in_blocks() || b.namespace().is_none());
        remembered += usize::from(la.recent.get(&a).is_some());
        record(&a, slow, &mut with_blocks, &mut la);
        record(&b, slow, &mut own_only, &mut lb);
    }
    assert!(remembered > 10_000, "{remembered}");
    for (id, (fa, fb)) in with_blocks
        .families
        .iter()
        .zip(&own_only.families)
        .enumerate()
    {
        let show = |f: &crate::metrics::store::Family| format!("{:?} {}", f.series, f.overflowed);
        assert_eq!(
            show(fa),
            show(fb),
            "{}",
            crate::metrics::instruments::DEFS[id].name
        );
    }
    for (a, b) in la.counted_limiters().into_iter().zip(lb.counted_limiters()) {
        assert_eq!(a.sightings(), b.sightings());
        assert_eq!(a.refused, b.refused);
    }
}
