//! psql fed statements on stdin, started by the agent (`dbtel-agent -- psql`).

use std::{
    process::Stdio,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use dbtel_tests::{otlp::Value, require_root, run_agent, run_agent_env, Agent, Cluster, Receiver};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// (statement, span name, db.query.text, db.collection.name, returned rows or SQLSTATE)
const SCRIPT: &[(&str, &str, &str, Option<&str>, Result<i64, &str>)] = &[
    ("select 1;", "SELECT", "select ?;", None, Ok(1)),
    (
        "select id, name from items where id <= 3 order by id;",
        "SELECT items",
        "select id, name from items where id <= ? order by id;",
        Some("items"),
        Ok(3),
    ),
    (
        "update items set name = 'renamed' where id = 2;",
        "UPDATE items",
        "update items set name = ? where id = ?;",
        Some("items"),
        Ok(0),
    ),
    (
        "insert into items values (6, 'six');",
        "INSERT items",
        "insert into items values (?, ?);",
        Some("items"),
        Ok(0),
    ),
    (
        "select * from missing_table;",
        "SELECT missing_table",
        "select * from missing_table;",
        Some("missing_table"),
        Err("42P01"),
    ),
    (
        "delete from items where id = 6;",
        "DELETE items",
        "delete from items where id = ?;",
        Some("items"),
        Ok(0),
    ),
    (
        "select pg_sleep(0.2);",
        "SELECT",
        "select pg_sleep(?);",
        None,
        Ok(1),
    ),
];

#[test]
fn psql_statements_become_one_client_span_each() {
    require_root();
    let pg = Cluster::start();
    pg.psql(
        "postgres",
        "create table items (id int primary key, name text)",
    );
    pg.psql(
        "postgres",
        "insert into items select g, 'item ' || g from generate_series(1, 5) g",
    );
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let psql = pg.bin("psql").display().to_string();
    let conn = pg.conn_args();
    let mut args: Vec<&str> = vec![
        "--otlp-endpoint",
        &endpoint,
        "--",
        &psql,
        "-X",
        "-q",
        "-d",
        "postgres",
    ];
    args.extend(conn.iter().map(String::as_str));
    let stdin: String = SCRIPT.iter().map(|s| format!("{}\n", s.0)).collect();

    let t0 = now_ns();
    let run = run_agent(&args, stdin.as_bytes(), Duration::from_secs(60));
    let t1 = now_ns();
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.stdout.contains("renamed") || run.stdout.contains("item 1"),
        "psql output passes through: {}",
        run.stdout
    );

    let mut spans = rx.spans();
    spans.sort_by_key(|s| s.start_ns);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let expected: Vec<&str> = SCRIPT.iter().map(|s| s.1).collect();
    assert_eq!(
        names, expected,
        "one span per statement, in order, none lost"
    );

    let socket = format!("{}/.s.PGSQL.{}", pg.socket_dir().display(), pg.port);
    let pid = spans[0]
        .resource_int("process.pid")
        .expect("resource process.pid");
    for (span, (sql, _, text, collection, outcome)) in spans.iter().zip(SCRIPT) {
        assert_eq!(span.kind, 3, "{sql}: kind CLIENT");
        assert_eq!(span.text(), *text, "{sql}: literals obfuscated");
        assert_eq!(span.str("db.system.name"), Some("postgresql"));
        assert_eq!(span.str("db.namespace"), Some("postgres"));
        assert_eq!(span.str("server.address"), Some(socket.as_str()));
        assert_eq!(span.str("network.transport"), Some("unix"));
        assert_eq!(span.str("db.collection.name"), *collection, "{sql}");
        assert_eq!(
            span.str("db.operation.name"),
            Some(span.name.split(' ').next().unwrap()),
            "{sql}"
        );
        assert_eq!(
            span.str("db.query.summary"),
            Some(span.name.as_str()),
            "{sql}"
        );
        assert_eq!(span.int("process.pid"), Some(pid));
        assert!(span.int("thread.id").is_some());
        assert!(span.int("db.postgresql.backend.pid").is_some_and(|p| p > 0));
        assert!(
            span.start_ns >= t0 && span.end_ns <= t1 && span.start_ns < span.end_ns,
            "{sql}: wall-clock timestamps"
        );
        match outcome {
            Ok(rows) => {
                assert_eq!(span.int("db.response.returned_rows"), Some(*rows), "{sql}");
                assert_eq!(span.status_code, 0, "{sql}");
            }
            Err(state) => {
                assert_eq!(span.str("db.response.status_code"), Some(*state));
                assert_eq!(span.str("error.type"), Some(*state));
                assert_eq!(span.status_code, 2, "status ERROR");
            }
        }
        assert_eq!(span.resource_str("service.name"), Some("psql"));
        assert_eq!(span.resource_str("process.executable.name"), Some("psql"));
        assert!(span
            .resource_str("host.name")
            .is_some_and(|h| !h.is_empty()));
    }
    let sleep = spans.last().unwrap();
    assert!(
        sleep.duration() >= Duration::from_millis(200),
        "pg_sleep(0.2) span lasted {:?}",
        sleep.duration()
    );
    assert!(sleep.duration() < Duration::from_secs(5));
    for pair in spans.windows(2) {
        assert!(
            pair[0].end_ns <= pair[1].start_ns,
            "psql runs one statement at a time"
        );
    }
    assert!(
        run.summary()
            .starts_with(&format!("dbtel: {} spans exported, 0 failed", SCRIPT.len())),
        "{}",
        run.summary()
    );
    assert!(
        run.summary().contains("0 lost in the ring buffer"),
        "{}",
        run.summary()
    );
}

#[test]
fn raw_text_flag_and_truncation_limit() {
    require_root();
    let pg = Cluster::start();
    let rx = Receiver::start();
    let endpoint = rx.grpc_endpoint();
    let psql = pg.bin("psql").display().to_string();
    let conn = pg.conn_args();
    let long = format!("select '{}' as padding, 42 as answer;", "x".repeat(200));
    let mut args: Vec<&str> = vec![
        "--otlp-protocol",
        "grpc",
        "--otlp-endpoint",
        &endpoint,
        "--raw-query-text",
        "--max-query-length",
        "64",
        "--",
        &psql,
        "-X",
        "-q",
        "-d",
        "postgres",
    ];
    args.extend(conn.iter().map(String::as_str));
    let stdin = format!("select 'kept literal';\n{long}\n");
    let run = run_agent(&args, stdin.as_bytes(), Duration::from_secs(60));
    assert!(run.status.success(), "{run:?}");
    let mut spans = rx.spans();
    spans.sort_by_key(|s| s.start_ns);
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(spans[0].text(), "select 'kept literal';");
    assert_eq!(spans[0].attrs.get("dbtel.query.text_truncated"), None);
    assert_eq!(spans[1].text(), &long[..64], "cut at --max-query-length");
    assert_eq!(
        spans[1].attrs.get("dbtel.query.text_truncated"),
        Some(&Value::Bool(true))
    );
}

#[test]
fn collector_down_is_counted_not_silent() {
    require_root();
    let pg = Cluster::start();
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{closed}");
    let psql = pg.bin("psql").display().to_string();
    let conn = pg.conn_args();
    let mut args: Vec<&str> = vec![
        "--otlp-endpoint",
        &endpoint,
        "--",
        &psql,
        "-X",
        "-q",
        "-d",
        "postgres",
    ];
    args.extend(conn.iter().map(String::as_str));
    let run = run_agent(&args, b"select 1;\nselect 2;\n", Duration::from_secs(90));
    assert!(
        run.status.success(),
        "the command's status, not the exporter's: {run:?}"
    );
    assert!(
        run.summary()
            .starts_with("dbtel: 0 spans exported, 2 failed to export"),
        "{}",
        run.summary()
    );
    assert!(
        run.stderr.contains("span export failed"),
        "logged: {}",
        run.stderr
    );
}

#[test]
fn interrupt_forwards_to_the_command_and_flushes_spans() {
    require_root();
    let pg = Cluster::start();
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let psql = pg.bin("psql").display().to_string();
    let conn = pg.conn_args();
    let mut args: Vec<&str> = vec![
        "--otlp-endpoint",
        &endpoint,
        "--",
        &psql,
        "-X",
        "-d",
        "postgres",
        "-c",
        "select 1",
        "-c",
        "select pg_sleep(30)",
    ];
    args.extend(conn.iter().map(String::as_str));
    let mut agent = Agent::start(&args, Stdio::null());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(agent.running(), "pg_sleep(30) still runs");
    let run = agent.interrupt();
    // psql gets the SIGINT, cancels its query and exits; the agent exports both spans.
    let mut spans = rx.spans();
    spans.sort_by_key(|s| s.start_ns);
    assert_eq!(spans.len(), 2, "{spans:?}\n{}", run.stderr);
    assert_eq!((spans[0].text(), spans[0].status_code), ("select ?", 0));
    assert_eq!(spans[1].text(), "select pg_sleep(?)");
    assert_eq!(
        spans[1].str("db.response.status_code"),
        Some("57014"),
        "query_canceled"
    );
    assert!(spans[1].duration() >= Duration::from_millis(1000));
    assert!(
        run.summary()
            .starts_with("dbtel: 2 spans exported, 0 failed"),
        "{}",
        run.summary()
    );
}

#[test]
fn otel_environment_sampler_service_name_and_resource() {
    require_root();
    let pg = Cluster::start();
    let psql = pg.bin("psql").display().to_string();
    let conn = pg.conn_args();
    let stdin = b"select 1;\nselect 2;\nselect 3;\n";
    let run_with = |env: &[(&str, &str)]| {
        let rx = Receiver::start();
        let endpoint = rx.http_endpoint();
        let mut args: Vec<&str> = vec!["--", &psql, "-X", "-q", "-d", "postgres"];
        args.extend(conn.iter().map(String::as_str));
        let mut env = env.to_vec();
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint));
        let run = run_agent_env(&args, &env, stdin, Duration::from_secs(60));
        assert!(run.status.success(), "{run:?}");
        (rx.spans(), run)
    };
    // Sampler off: nothing is exported, nothing is lost.
    let (spans, run) = run_with(&[("OTEL_TRACES_SAMPLER", "always_off")]);
    assert!(spans.is_empty(), "{spans:?}");
    assert!(
        run.summary()
            .starts_with("dbtel: 0 spans exported, 0 failed to export, 0 lost"),
        "{}",
        run.summary()
    );
    // Service name and extra resource attributes from the environment.
    let (spans, run) = run_with(&[
        ("OTEL_SERVICE_NAME", "billing"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test",
        ),
    ]);
    assert_eq!(spans.len(), 3, "{}", run.stderr);
    for s in &spans {
        assert_eq!(s.resource_str("service.name"), Some("billing"));
        assert_eq!(s.resource_str("deployment.environment.name"), Some("test"));
        assert_eq!(s.resource_str("process.executable.name"), Some("psql"));
    }
}
