//! The application's own traces: an application with the OpenTelemetry SDK
//! and psycopg2's instrumentation writing sqlcommenter comments
//! (tests/drivers/otel_app.py) exports to the same receiver as dbtel. Its
//! spans and dbtel's form one trace: client spans under the application's
//! spans, the transaction under the statement that first named it, the
//! server's spans under the application's when only the server is traced;
//! no comment is exported.

use std::process::Stdio;

use dbtel_tests::{
    drivers::{self, App},
    require_root, Agent, Cluster, Receiver, Span,
};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the application traced with `targets` (given the app's PID); returns
/// every span received and the application's trace id.
fn run(pg: &Cluster, targets: impl Fn(u32) -> Vec<String>) -> (Vec<Span>, String, u32) {
    let rx = Receiver::start();
    let mut cmd = drivers::apps_python();
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.http_endpoint());
    let mut app = App::spawn(cmd, "otel_app.py", &[&pg.dsn("postgres")]);
    let pid = app.pid;
    let mut args = vec!["--otlp-endpoint".to_string(), rx.http_endpoint()];
    args.extend(targets(pid));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&args, Stdio::null());
    app.go();
    let printed = app.finish();
    assert_eq!(
        printed.last().map(String::as_str),
        Some("done"),
        "{printed:?}"
    );
    let trace = printed[printed.len() - 2].clone();
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    (rx.spans(), trace, pid)
}

fn app_spans(spans: &[Span]) -> Vec<&Span> {
    spans
        .iter()
        .filter(|s| s.resource_str("service.name") == Some("otel-app"))
        .collect()
}

#[test]
fn the_applications_spans_and_dbtels_form_one_trace() {
    require_root();
    let pg = Cluster::start();
    let (spans, trace, pid) = run(&pg, |pid| vec!["--pid".into(), pid.to_string()]);
    let app = app_spans(&spans);
    // handle + one psycopg2 span per execute (4).
    let handle = app
        .iter()
        .find(|s| s.name == "handle")
        .expect("the app's span");
    let app_db: Vec<&&Span> = app.iter().filter(|s| s.name != "handle").collect();
    assert_eq!(
        app_db.len(),
        4,
        "{:?}",
        app.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let ours: Vec<&Span> = spans
        .iter()
        .filter(|s| s.resource_int("process.pid") == Some(pid.into()))
        .collect();
    // BEGIN, 3 statements, COMMIT, the transaction, the autocommit query.
    assert_eq!(
        ours.len(),
        7,
        "{:?}",
        ours.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(hex(&handle.trace_id), trace);
    for s in &ours {
        assert_eq!(
            hex(&s.trace_id),
            trace,
            "{} is not in the app's trace",
            s.name
        );
        assert!(
            !s.text().contains("traceparent") && !s.text().contains("/*"),
            "{}",
            s.text()
        );
    }
    let app_of = |text: &str| {
        app_db
            .iter()
            .find(|a| {
                a.str("db.statement")
                    .or(a.str("db.query.text"))
                    .is_some_and(|t| t.starts_with(text))
            })
            .unwrap_or_else(|| panic!("no app span for {text}"))
    };
    let txn = ours
        .iter()
        .find(|s| s.attrs.contains_key("db.transaction.outcome"))
        .unwrap();
    // The transaction is the child of the statement that first named the trace.
    assert_eq!(txn.parent_span_id, app_of("select 1").span_id);
    for t in ["BEGIN", "select ?", "COMMIT"] {
        for s in ours
            .iter()
            .filter(|s| s.text() == t && s.span_id != txn.span_id)
        {
            if s.text() == "select ?" && s.parent_span_id != txn.span_id {
                // The autocommit query: under its own application span.
                assert_eq!(s.parent_span_id, app_of("select 4").span_id);
            } else {
                assert_eq!(s.parent_span_id, txn.span_id, "{}", s.text());
            }
        }
    }
}

#[test]
fn a_traced_server_puts_its_spans_under_the_applications() {
    require_root();
    let pg = Cluster::start();
    let pm = pg.postmaster_pid();
    let (spans, trace, _) = run(&pg, |_| vec!["--pid".into(), pm.to_string()]);
    let app = app_spans(&spans);
    let server: Vec<&Span> = spans.iter().filter(|s| s.kind == 2).collect();
    assert!(
        server.len() >= 6,
        "{:?}",
        server.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for s in &server {
        assert_eq!(hex(&s.trace_id), trace, "{} ({})", s.name, s.text());
        assert!(!s.text().contains("traceparent"), "{}", s.text());
    }
    // The autocommit query's server span is the child of its app span.
    let ids: Vec<&[u8]> = app.iter().map(|s| s.span_id.as_slice()).collect();
    let four = server
        .iter()
        .find(|s| s.text() == "select ?" && ids.contains(&s.parent_span_id.as_slice()));
    assert!(
        four.is_some(),
        "a server statement under an application span"
    );
}
