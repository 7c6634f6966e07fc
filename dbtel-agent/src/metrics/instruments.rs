//! The instruments the agent derives from spans: names, units, help texts,
//! kinds, labels and buckets, in one table that both writers (Prometheus
//! text and OTLP) read, so they never disagree.

/// OpenTelemetry's recommended buckets for `db.client.operation.duration`.
pub const SEMCONV_SECONDS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
/// Finer buckets for the library-named histograms (their users read p95/p99).
pub const FINE_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// The conventions' buckets for `db.client.response.returned_rows`.
pub const ROWS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Histogram(&'static [f64]),
    /// Monotonic sum (Prometheus: `_total`).
    Counter,
    Gauge,
}

#[derive(Debug)]
pub struct Def {
    /// OpenTelemetry name (dotted); Prometheus's is derived (dots to `_`).
    pub name: &'static str,
    /// UCUM unit as OpenTelemetry states it (`s`, `{row}`).
    pub unit: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// Attribute names, in the order values are given.
    pub labels: &'static [&'static str],
}

const SYSTEM: &str = "db.system.name";
const NAMESPACE: &str = "db.namespace";
const OPERATION: &str = "db.operation.name";
const COLLECTION: &str = "db.collection.name";
pub const SUMMARY: &str = "db.query.summary";

/// Indexes into [`DEFS`].
pub mod id {
    pub const CLIENT_DURATION: usize = 0;
    pub const CLIENT_ROWS: usize = 1;
    pub const SERVER_DURATION: usize = 2;
    pub const QUERY_DURATION: usize = 3;
    pub const TXN_DURATION: usize = 4;
    pub const LOCK_WAIT: usize = 5;
    pub const RETRIES: usize = 6;
    pub const CONTENTION: usize = 7;
    pub const TXN_ACTIVE: usize = 8;
    pub const SLOW: usize = 9;
    pub const N_PLUS_ONE: usize = 10;
}

pub static DEFS: &[Def] = &[
    Def {
        name: "db.client.operation.duration",
        unit: "s",
        help: "Duration of database client operations, as the traced application's library saw them.",
        kind: Kind::Histogram(SEMCONV_SECONDS),
        labels: &[
            SYSTEM,
            NAMESPACE,
            OPERATION,
            COLLECTION,
            SUMMARY,
            "server.address",
            "server.port",
            "db.response.status_code",
            "error.type",
        ],
    },
    Def {
        name: "db.client.response.returned_rows",
        unit: "{row}",
        help: "Rows returned by database client operations.",
        kind: Kind::Histogram(ROWS),
        labels: &[SYSTEM, NAMESPACE, OPERATION, COLLECTION, SUMMARY],
    },
    Def {
        name: "db.server.operation.duration",
        unit: "s",
        help: "Duration of statements measured inside the traced database server (every client, traced or not).",
        kind: Kind::Histogram(SEMCONV_SECONDS),
        labels: &[
            SYSTEM,
            NAMESPACE,
            OPERATION,
            COLLECTION,
            SUMMARY,
            "db.response.status_code",
            "error.type",
        ],
    },
    Def {
        name: "db.query.duration",
        unit: "s",
        help: "Duration of queries, each counted once (the client's span, or the server's where its client is not traced).",
        kind: Kind::Histogram(FINE_SECONDS),
        labels: &[SYSTEM, NAMESPACE, OPERATION, COLLECTION, SUMMARY, "error.type"],
    },
    Def {
        name: "db.transaction.duration",
        unit: "s",
        help: "Duration of transactions, from BEGIN (or the first statement) to COMMIT or ROLLBACK, each counted once.",
        kind: Kind::Histogram(FINE_SECONDS),
        labels: &[SYSTEM, NAMESPACE, "db.transaction.outcome"],
    },
    Def {
        name: "db.lock.wait_duration",
        unit: "s",
        help: "Time statements spent waiting for locks inside the server.",
        kind: Kind::Histogram(FINE_SECONDS),
        labels: &[SYSTEM, NAMESPACE, COLLECTION, "db.lock.outcome"],
    },
    Def {
        name: "db.transaction.retries",
        unit: "{retry}",
        help: "Transactions run again after a deadlock, serialization failure or lock timeout rolled back the attempt before.",
        kind: Kind::Counter,
        labels: &[SYSTEM, NAMESPACE],
    },
    Def {
        name: "db.contention.events",
        unit: "{event}",
        help: "Lock waits, deadlocks, serialization failures and lock timeouts.",
        kind: Kind::Counter,
        labels: &[SYSTEM, NAMESPACE, "db.contention.type"],
    },
    Def {
        name: "db.transaction.active",
        unit: "{transaction}",
        help: "Transactions open now.",
        kind: Kind::Gauge,
        labels: &[SYSTEM, NAMESPACE],
    },
    Def {
        name: "dbtel.slow_queries",
        unit: "{query}",
        help: "Queries slower than --slow-query-threshold (SLOW_QUERY_TIME), each counted once.",
        kind: Kind::Counter,
        labels: &[SYSTEM, SUMMARY],
    },
    Def {
        name: "dbtel.n_plus_one",
        unit: "{detection}",
        help: "N+1 query patterns found: a SELECT run again and again with other values in one transaction or burst, after a listing.",
        kind: Kind::Counter,
        labels: &[SYSTEM, SUMMARY],
    },
];

/// The Prometheus name of an OpenTelemetry name: dots become underscores,
/// no unit suffix (so the names users of in-process libraries query work
/// verbatim), `_total` on counters.
pub fn prometheus_name(otel: &str, kind: Kind) -> String {
    let mut n: String = otel
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if kind == Kind::Counter {
        n.push_str("_total");
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_users_query_are_there_verbatim() {
        let names: Vec<String> = DEFS
            .iter()
            .map(|d| prometheus_name(d.name, d.kind))
            .collect();
        for n in [
            "db_transaction_duration",
            "db_transaction_retries_total",
            "db_transaction_active",
            "db_query_duration",
            "db_contention_events_total",
            "db_lock_wait_duration",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
    }

    #[test]
    fn ids_point_at_their_instruments() {
        assert_eq!(
            DEFS[id::CLIENT_DURATION].name,
            "db.client.operation.duration"
        );
        assert_eq!(
            DEFS[id::CLIENT_ROWS].name,
            "db.client.response.returned_rows"
        );
        assert_eq!(
            DEFS[id::SERVER_DURATION].name,
            "db.server.operation.duration"
        );
        assert_eq!(DEFS[id::QUERY_DURATION].name, "db.query.duration");
        assert_eq!(DEFS[id::TXN_DURATION].name, "db.transaction.duration");
        assert_eq!(DEFS[id::LOCK_WAIT].name, "db.lock.wait_duration");
        assert_eq!(DEFS[id::RETRIES].name, "db.transaction.retries");
        assert_eq!(DEFS[id::CONTENTION].name, "db.contention.events");
        assert_eq!(DEFS[id::TXN_ACTIVE].name, "db.transaction.active");
        assert_eq!(DEFS[id::SLOW].name, "dbtel.slow_queries");
        assert_eq!(DEFS[id::N_PLUS_ONE].name, "dbtel.n_plus_one");
        assert_eq!(DEFS.len(), id::N_PLUS_ONE + 1);
        for d in DEFS {
            if let Kind::Histogram(b) = d.kind {
                assert!(b.windows(2).all(|w| w[0] < w[1]), "{}", d.name);
            }
        }
    }
}
