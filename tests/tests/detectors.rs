//! The N+1 detector on a real ORM: SQLAlchemy's lazy loading over psycopg2
//! (tests/drivers/orm_nplusone.py), traced by PID. The lazy-loading
//! transaction gets one `n_plus_one_detected` event with the run's count;
//! eager loading, a 200-row insert loop and autocommit point lookups get none.

use std::{process::Stdio, time::Duration};

use dbtel_tests::{
    drivers::{self, App},
    otlp::Value,
    require_root, Agent, Cluster, Receiver,
};

#[test]
fn an_orms_lazy_loading_is_one_n_plus_one_and_batches_stay_quiet() {
    require_root();
    let pg = Cluster::start();
    let rx = Receiver::start();
    let mut app = App::spawn(
        drivers::apps_python(),
        "orm_nplusone.py",
        &[&pg.dsn("postgres")],
    );
    let agent = Agent::start(
        &[
            // OTLP/gRPC: the metrics' push goes over it too.
            "--otlp-protocol",
            "grpc",
            "--otlp-endpoint",
            &rx.grpc_endpoint(),
            "--pid",
            &app.pid.to_string(),
        ],
        Stdio::null(),
    );
    app.go();
    let printed = app.finish();
    assert_eq!(
        printed.last().map(String::as_str),
        Some("done"),
        "{printed:?}"
    );
    let run = agent.wait(Duration::from_secs(20));
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();
    let lazy_loads = spans
        .iter()
        .filter(|s| s.text().contains("FROM books") && s.text().contains("? = books.author_id"))
        .count();
    assert_eq!(lazy_loads, 20);
    let inserts = spans
        .iter()
        .filter(|s| s.text().starts_with("INSERT INTO books"))
        .count();
    assert_eq!(inserts, 200);
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.event_names().contains(&"n_plus_one_detected"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    let txn = found[0];
    assert!(txn.attrs.contains_key("db.transaction.outcome"), "{txn:?}");
    let e = txn
        .events
        .iter()
        .find(|e| e.name == "n_plus_one_detected")
        .unwrap();
    assert_eq!(e.attrs.get("dbtel.n_plus_one.count"), Some(&Value::Int(20)));
    assert_eq!(
        e.attrs.get("db.query.summary"),
        Some(&Value::Str("SELECT books".into()))
    );
    // Its statements are the transaction's children: BEGIN, the listing, the 20 loads, COMMIT.
    let children = spans
        .iter()
        .filter(|s| s.parent_span_id == txn.span_id)
        .count();
    assert_eq!(children, 23);
    // Counted: the exit's OTLP metrics push (gRPC).
    let n: f64 = rx
        .metrics
        .latest()
        .iter()
        .filter(|p| p.metric == "dbtel.n_plus_one")
        .inspect(|p| assert_eq!(p.attr("db.query.summary"), Some("SELECT books")))
        .map(|p| p.value)
        .sum();
    assert_eq!(n, 1.0);
}
