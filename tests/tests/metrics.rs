//! Metrics end to end: a psycopg2 workload (serialization failures retried,
//! lock waits, deadlocks, slow and failing queries, 300 missing tables) traced
//! on the client and the server. /metrics must count exactly the spans the
//! receiver got and what the workload did; a real Prometheus scraping the
//! agent must answer the documented PromQL verbatim; the last OTLP metrics
//! push must carry the exit summary's figures.

use std::{
    collections::BTreeMap,
    io::{BufRead, Write},
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use dbtel_tests::{
    http_get, otlp::Value, prometheus::Prometheus, require_root, Agent, Cluster, PyProgram,
    Receiver, Span,
};

/// `name{labels} value` lines of the exposition text.
fn parse(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").unwrap();
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().unwrap())
        })
        .collect()
}

type Samples = Vec<(String, BTreeMap<String, String>, f64)>;

/// Sum of a family's samples whose labels include `with`.
fn sum(samples: &Samples, name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.2)
        .sum()
}

fn is_txn(s: &Span) -> bool {
    s.attrs.contains_key("db.transaction.outcome")
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Waits until the receiver's span count has not moved for `quiet`.
fn settle(rx: &Receiver, quiet: Duration) {
    let (mut last, mut since) = (rx.count(), Instant::now());
    while since.elapsed() < quiet {
        std::thread::sleep(Duration::from_millis(200));
        let now = rx.count();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

/// What one traced run of tests/py/workload.py left.
struct Ran {
    rx: Receiver,
    pid: u32,
    printed: BTreeMap<String, f64>,
    /// /metrics once every span was out.
    m: Samples,
    spans: Vec<Span>,
    run: dbtel_tests::AgentRun,
}

impl Ran {
    fn did(&self, k: &str) -> f64 {
        self.printed[k]
    }
}

/// Runs the workload traced on both sides (with a Prometheus scraping the
/// agent if `prometheus`); `during` runs once the workload is over and its
/// spans are out, before the agent stops.
fn workload(env: &[(&str, &str)], prometheus: bool, during: impl FnOnce(&Prometheus)) -> Ran {
    require_root();
    let pg = Cluster::start_with(&["deadlock_timeout=100ms"]);
    pg.psql(
        "postgres",
        "create table accounts (id int primary key, balance int); \
         insert into accounts select g, 100 from generate_series(1, 10) g;",
    );
    let rx = Receiver::start();
    let p = PyProgram::start("workload.py", &pg.dsn("postgres"));
    let (pid, mut child, out) = (p.pid(), p.child, p.out);
    let http = free_addr();
    // The in-process libraries' variable: a bare number is milliseconds.
    let mut all_env = vec![
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ("SLOW_QUERY_TIME", "50"),
    ];
    all_env.extend_from_slice(env);
    let agent = Agent::start_env(
        &[
            "--otlp-endpoint",
            &rx.http_endpoint(),
            "--pid",
            &pg.postmaster_pid().to_string(),
            "--pid",
            &pid.to_string(),
            "--http-address",
            &http.to_string(),
            "--metrics-max-summaries",
            "20",
        ],
        &all_env,
        Stdio::null(),
    );
    let prom = prometheus.then(|| Prometheus::start(http));
    child.stdin.as_mut().unwrap().write_all(b"run 8\n").unwrap();
    let printed: BTreeMap<String, f64> = out
        .lines()
        .map_while(Result::ok)
        .take_while(|l| l != "done")
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    assert!(child.wait().unwrap().success());
    settle(&rx, Duration::from_secs(3));
    // Published each second: wait for the exporter's count to catch up.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, text) = http_get(http, "/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    let m = parse(&text);
    let spans = rx.spans();
    if let Some(p) = &prom {
        during(p);
    }
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    Ran {
        rx,
        pid,
        printed,
        m,
        spans,
        run,
    }
}

/// The workload's own figures, as metrics must count them whatever is sampled.
fn assert_counts_match_the_workload(r: &Ran) {
    let (m, did) = (&r.m, |k: &str| r.did(k));
    assert_eq!(
        (did("serialization"), did("lock_waits"), did("slow")),
        (2.0, 2.0, 3.0),
        "{:?}",
        r.printed
    );
    assert_eq!(did("deadlocks"), 2.0, "{:?}", r.printed);
    let pgsys = ("db_system_name", "postgresql");
    assert_eq!(
        sum(m, "db_transaction_retries_total", &[pgsys]),
        did("retries")
    );
    assert_eq!(
        sum(
            m,
            "db_contention_events_total",
            &[("db_contention_type", "deadlock")]
        ),
        did("deadlocks")
    );
    assert_eq!(
        sum(
            m,
            "db_contention_events_total",
            &[("db_contention_type", "serialization_failure")]
        ),
        did("serialization")
    );
    let errored: f64 = m
        .iter()
        .filter(|(n, l, _)| n == "db_query_duration_count" && l.contains_key("error_type"))
        .map(|s| s.2)
        .sum();
    assert_eq!(
        errored,
        did("errors") + did("serialization") + did("deadlocks")
    );
    assert_eq!(sum(m, "dbtel_n_plus_one_total", &[]), did("n_plus_one"));
    // Made = exported + dropped by the sampler: every span counted, once.
    assert_eq!(
        sum(m, "dbtel_spans_made_total", &[]),
        sum(m, "dbtel_spans_exported_total", &[])
            + sum(m, "dbtel_spans_dropped_total", &[("reason", "sampling")])
    );
}

#[test]
fn metrics_count_every_span_and_prometheus_answers_the_documented_queries() {
    let r = workload(&[], true, prometheus_checks);
    assert_counts_match_the_workload(&r);
    let (m, spans, pid, did) = (&r.m, &r.spans, r.pid, |k: &str| r.did(k));
    let client_queries: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == 3 && !is_txn(s) && s.resource_int("process.pid") == Some(pid.into()))
        .collect();
    let client_txns = spans.iter().filter(|s| s.kind == 3 && is_txn(s)).count();
    let waits: Vec<&Span> = spans.iter().filter(|s| s.kind == 1).collect();
    let server_queries = spans.iter().filter(|s| s.kind == 2 && !is_txn(s)).count();

    // Every span counted once for the library names, by the client's span.
    let client_count = sum(m, "db_client_operation_duration_count", &[]);
    assert_eq!(client_count, client_queries.len() as f64);
    assert_eq!(sum(m, "db_query_duration_count", &[]), client_count);
    assert_eq!(
        sum(m, "db_server_operation_duration_count", &[]),
        server_queries as f64
    );
    assert_eq!(
        sum(m, "db_transaction_duration_count", &[]),
        client_txns as f64
    );
    assert_eq!(
        sum(m, "db_lock_wait_duration_count", &[]),
        waits.len() as f64
    );
    assert!(waits.len() >= 4, "{} waits", waits.len());
    // The buckets of a series end with its count.
    assert_eq!(
        sum(m, "db_client_operation_duration_bucket", &[("le", "+Inf")]),
        client_count
    );
    // Retries, deadlocks, serialization failures, errors: assert_counts_match_the_workload.
    assert_eq!(
        sum(
            m,
            "db_contention_events_total",
            &[("db_contention_type", "lock_wait")]
        ),
        waits.len() as f64
    );
    // Slow: the pg_sleep(0.1)s, and statements that waited on a lock.
    let slow: Vec<&&Span> = client_queries
        .iter()
        .filter(|s| s.attrs.get("db.slow_query") == Some(&Value::Bool(true)))
        .collect();
    assert_eq!(sum(m, "dbtel_slow_queries_total", &[]), slow.len() as f64);
    assert_eq!(
        slow.iter()
            .filter(|s| s.text().contains("pg_sleep"))
            .count() as f64,
        did("slow")
    );
    assert!(slow.iter().all(|s| s.duration() > Duration::from_millis(50)
        && s.event_names().contains(&"slow_query_detected")));
    let fast_unmarked = client_queries
        .iter()
        .filter(|s| s.duration() <= Duration::from_millis(50))
        .all(|s| !s.attrs.contains_key("db.slow_query"));
    assert!(fast_unmarked);
    assert!(m.iter().any(|(n, l, _)| n == "db_transaction_active"
        && l.get("db_system_name").map(String::as_str) == Some("postgresql")));
    // 300 missing tables and a few others: at most 20 summaries, then `other`.
    let summaries: std::collections::BTreeSet<&str> = m
        .iter()
        .filter(|(n, _, _)| n == "db_query_duration_count")
        .filter_map(|(_, l, _)| l.get("db_query_summary").map(String::as_str))
        .collect();
    assert!(
        summaries.len() <= 21 && summaries.contains("other"),
        "{summaries:?}"
    );
    // The agent's own figures.
    assert_eq!(
        sum(m, "dbtel_spans_exported_total", &[]),
        spans.len() as f64
    );
    assert_eq!(sum(m, "dbtel_spans_made_total", &[]), spans.len() as f64);
    // The server (the workload has exited).
    assert_eq!(sum(m, "dbtel_traced_processes", &[]), 1.0);
    assert_eq!(sum(m, "dbtel_n_plus_one_total", &[]), did("n_plus_one"));

    let (rx, run) = (&r.rx, &r.run);
    // The last OTLP push carries the exit summary's figures.
    let summary = run.summary().to_string();
    let pushed = rx.metrics.latest();
    let value = |name: &str| {
        pushed
            .iter()
            .filter(|p| p.metric == name)
            .map(|p| p.value)
            .sum::<f64>()
    };
    let exported = value("dbtel.spans.exported");
    let events = value("dbtel.events.read");
    assert!(
        summary.starts_with(&format!("dbtel: {exported} spans exported, 0 failed"))
            && summary.contains(&format!(
                "; {events} events read, 0 lost in the ring buffer"
            )),
        "{summary} vs pushed exported {exported}, events {events}"
    );
    let unit = |name: &str| {
        pushed
            .iter()
            .find(|p| p.metric == name)
            .map(|p| p.unit.clone())
    };
    assert_eq!(unit("db.client.operation.duration").as_deref(), Some("s"));
    assert_eq!(
        unit("db.client.response.returned_rows").as_deref(),
        Some("{row}")
    );
    assert_eq!(
        pushed
            .iter()
            .filter(|p| p.metric == "db.client.operation.duration")
            .map(|p| p.count)
            .sum::<u64>() as f64,
        client_count
    );
    assert_eq!(
        rx.metrics
            .resource()
            .get("service.name")
            .map(String::as_str),
        Some("dbtel-agent")
    );
}

/// The documented PromQL, the dashboard and the rules against a real Prometheus.
fn prometheus_checks(prom: &Prometheus) {
    // The documented PromQL, verbatim.
    for q in [
        "histogram_quantile(0.95, rate(db_transaction_duration_bucket[5m]))",
        "rate(db_transaction_retries_total[5m])",
        "db_transaction_active",
        "histogram_quantile(0.99, rate(db_query_duration_bucket[5m]))",
        "rate(db_contention_events_total[5m])",
    ] {
        prom.wait_for(q, Duration::from_secs(20));
    }
    // Every panel of the dashboard shows data.
    for expr in dbtel_tests::promql::dashboard_exprs() {
        prom.wait_for(&expr, Duration::from_secs(20));
    }
    // The alerting rules load and evaluate; the workload's deadlocks fire
    // theirs (its retries stay under their alert's 1/s).
    let groups = prom.api("/api/v1/rules");
    let rules: Vec<&serde_json::Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(
        rules.len(),
        dbtel_tests::promql::rule_exprs().len(),
        "{groups}"
    );
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r}");
    }
    for (alert, expr) in dbtel_tests::promql::rule_exprs() {
        let answer = prom.query(&expr);
        if alert == "DbDeadlocks" {
            assert!(!answer.is_empty(), "{alert}: {expr}");
        }
    }
    let meta = prom.api("/api/v1/metadata?metric=db_query_duration");
    assert!(
        meta["db_query_duration"][0]["help"]
            .as_str()
            .is_some_and(|h| h.ends_with("Unit: s.")),
        "{meta}"
    );
}

#[test]
fn sampling_keeps_every_marked_trace_whole_and_metrics_count_everything() {
    let r = workload(
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ],
        false,
        |_| {},
    );
    // Counted as if nothing were sampled.
    assert_counts_match_the_workload(&r);
    let dropped = sum(&r.m, "dbtel_spans_dropped_total", &[("reason", "sampling")]);
    assert!(dropped > 0.0);
    assert!(
        r.run.summary().ends_with("dropped by sampling")
            && r.run.summary().contains(&format!("{dropped} dropped")),
        "{}",
        r.run.summary()
    );
    let spans = &r.spans;
    // Every failed statement's trace arrived, whole: parents all there.
    let failed = spans
        .iter()
        .filter(|s| s.kind == 3 && s.status_code == 2 && !is_txn(s))
        .count() as f64;
    assert_eq!(
        failed,
        r.did("errors") + r.did("serialization") + r.did("deadlocks")
    );
    let ids: std::collections::HashSet<&[u8]> =
        spans.iter().map(|s| s.span_id.as_slice()).collect();
    for s in spans {
        assert!(
            s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_slice()),
            "{} without its parent",
            s.name
        );
    }
    assert_eq!(
        spans.iter().filter(|s| s.kind == 1).count(),
        sum(&r.m, "db_lock_wait_duration_count", &[]) as usize
    );
    // Slow statements (their server spans are marked too, counted once).
    let slow = spans
        .iter()
        .filter(|s| s.kind == 3 && s.event_names().contains(&"slow_query_detected"))
        .count();
    assert_eq!(slow as f64, sum(&r.m, "dbtel_slow_queries_total", &[]));
    // Plain transactions: about a tenth kept.
    let plain = spans
        .iter()
        .filter(|s| s.kind == 3 && s.text() == "select balance from accounts where id = ?")
        .count() as f64;
    let ratio = plain / r.did("plain");
    assert!(
        (0.02..=0.25).contains(&ratio),
        "{plain} of {} kept",
        r.did("plain")
    );
}
