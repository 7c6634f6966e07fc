//! The mariadb CLI (Connector/C linked into the executable) fed statements on
//! stdin, started by the agent (`dbtel-agent -- mariadb ...`), over the unix
//! socket and over TCP; its spans compared with the server's general log.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbtel_tests::{
    mysql_spans::{
        connections_after, dump, last_connection, logged_statements, pair_with_log, statement_spans,
    },
    require_root, run_agent, AgentRun, MariaDb, Receiver, Span,
};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC. MariaDB's SLEEP() waits for a realtime
/// deadline while spans are measured on the monotonic clock: a realtime step
/// during the run (seen once on a CI VM: sleep(0.2) measured 199.26 ms)
/// shortens the sleep by the step, so the test allows exactly that much.
fn realtime_offset_ns() -> i128 {
    dbtel_agent::export::Clock::now().offset_ns()
}

/// What a statement's span reports: rows fetched, rows changed, an error (errno, SQLSTATE), or nothing.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Returned(i64),
    /// A result read row by row (mysql_use_result): no count known when the span ends.
    Streamed,
    Affected(i64),
    Error(&'static str, &'static str),
    Plain,
}
use Outcome::*;

/// (stdin line, span name, db.namespace, outcome). `use shop` is sent as
/// `SELECT DATABASE()` (its result read with mysql_use_result) and then
/// COM_INIT_DB, which is no span.
const SCRIPT: &[(&str, &str, Option<&str>, Outcome)] = &[
    ("create database shop;", "CREATE", None, Plain),
    ("use shop", "SELECT", None, Streamed),
    (
        "create table items (id int primary key, name varchar(50), note text);",
        "CREATE items",
        Some("shop"),
        Plain,
    ),
    (
        r#"insert into items values (1, 'apple', "it's red"), (2, 'pear', 'a \'b\' c');"#,
        "INSERT items",
        Some("shop"),
        Affected(2),
    ),
    (
        r#"insert into items (id, name) values (3, "plum"), (4, 'x''y');"#,
        "INSERT items",
        Some("shop"),
        Affected(2),
    ),
    (
        "select id, name from items -- the first two\n where id <= 2 /* ids */ order by id;",
        "SELECT items",
        Some("shop"),
        Returned(2),
    ),
    (
        "select * from missing_table;",
        "SELECT missing_table",
        Some("shop"),
        Error("1146", "42S02"),
    ),
    ("begin;", "BEGIN", Some("shop"), Plain),
    (
        "update items set name = 'fig' where id = 3;",
        "UPDATE items",
        Some("shop"),
        Affected(1),
    ),
    (
        "delete from items where id in (2, 4); # two rows",
        "DELETE items",
        Some("shop"),
        Affected(2),
    ),
    ("commit;", "COMMIT", Some("shop"), Plain),
    ("select sleep(0.2);", "SELECT", Some("shop"), Returned(1)),
];

/// Runs the CLI under the agent with `conn` (connection arguments) and `stdin`.
fn traced_cli(rx: &Receiver, conn: &[String], stdin: &str) -> AgentRun {
    let endpoint = rx.http_endpoint();
    // --force: go on after the failing statement; --comments: send comments (the CLI strips them by default).
    let mut args: Vec<&str> = vec!["--otlp-endpoint", &endpoint, "--", "mariadb"];
    args.extend(conn.iter().map(String::as_str));
    args.extend(["--force", "--comments"]);
    let run = run_agent(&args, stdin.as_bytes(), Duration::from_secs(60));
    assert!(run.status.success(), "{run:?}");
    run
}

/// The attach line for the CLI: the API is exported from the executable itself.
fn assert_attached(run: &AgentRun) {
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("dbtel: tracing"))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(
        line.contains(" (mariadb): ") && line.contains(" probes on /usr/bin/mariadb"),
        "{line}"
    );
}

#[test]
fn cli_statements_over_the_socket_match_the_general_log() {
    require_root();
    let db = MariaDb::start();
    let before = last_connection(&db.general_log());
    let rx = Receiver::start();
    let stdin: String = SCRIPT.iter().map(|s| format!("{}\n", s.0)).collect();
    let offset0 = realtime_offset_ns();
    let t0 = now_ns();
    let run = traced_cli(&rx, &db.client_args(), &stdin);
    let t1 = now_ns();
    let step = Duration::from_nanos((realtime_offset_ns() - offset0).unsigned_abs() as u64);
    assert_attached(&run);
    assert!(
        run.stdout.contains("1\tapple\n") && run.stdout.contains("sleep(0.2)"),
        "the CLI's output passes through: {}",
        run.stdout
    );
    assert!(run.stderr.contains("ERROR 1146 (42S02)"), "{}", run.stderr);

    let conns = connections_after(&db.general_log(), before);
    assert_eq!(conns.len(), 1, "{:?}", db.general_log());
    let conn = conns[0];
    db.wait_quit(&conns);
    let log = db.general_log();
    // The ground truth itself: one logged statement per script line, `use` adding Init DB (no statement).
    let logged = logged_statements(&log, conn);
    assert_eq!(logged.len(), SCRIPT.len(), "{logged:#?}");
    assert_eq!(logged[1].text, "SELECT DATABASE()");
    assert!(log
        .iter()
        .any(|e| e.connection == conn && e.command == "Init DB" && e.text == "shop"));
    assert!(
        logged[5].text.contains("-- the first two\n") && logged[5].text.contains("/* ids */"),
        "comments reached the server: {:?}",
        logged[5]
    );

    let all = rx.spans();
    let spans = statement_spans(&all, conn);
    let pairs = pair_with_log(&spans, &log, conn, &|_| "mysql_real_query");
    let pid = spans[0]
        .resource_int("process.pid")
        .expect("resource process.pid");
    let socket = db.socket().display().to_string();
    for ((span, logged), (line, name, namespace, outcome)) in pairs.iter().zip(SCRIPT) {
        let what = format!("{line:?} (logged {:?})", logged.text);
        assert_eq!(span.name, *name, "{what}");
        assert_eq!(
            span.str("db.operation.name"),
            Some(name.split(' ').next().unwrap()),
            "{what}"
        );
        assert_eq!(
            span.str("db.collection.name"),
            name.split_once(' ').map(|n| n.1),
            "{what}"
        );
        assert_eq!(span.str("db.namespace"), *namespace, "{what}");
        assert_eq!(span.str("server.address"), Some(socket.as_str()), "{what}");
        assert_eq!(span.str("network.transport"), Some("unix"), "{what}");
        assert_eq!(
            span.int("server.port"),
            None,
            "{what}: no port over a unix socket"
        );
        assert_eq!(span.int("process.pid"), Some(pid), "{what}");
        assert!(
            span.start_ns >= t0 && span.end_ns <= t1,
            "{what}: wall-clock timestamps"
        );
        match outcome {
            Returned(n) => assert_eq!(span.int("db.response.returned_rows"), Some(*n), "{what}"),
            Affected(n) => assert_eq!(span.int("db.response.affected_rows"), Some(*n), "{what}"),
            Streamed => assert_eq!(span.int("db.response.returned_rows"), None, "{what}"),
            Error(..) | Plain => {}
        }
        if let Error(errno, sqlstate) = outcome {
            assert_eq!(span.status_code, 2, "{what}: status ERROR");
            assert_eq!(span.str("db.response.status_code"), Some(*errno), "{what}");
            assert_eq!(span.str("error.type"), Some(*errno), "{what}");
            assert_eq!(span.str("db.mysql.sqlstate"), Some(*sqlstate), "{what}");
        } else {
            assert_eq!(span.status_code, 0, "{what}");
            assert_eq!(span.str("db.response.status_code"), None, "{what}");
        }
        assert_eq!(
            span.resource_str("process.executable.name"),
            Some("mariadb"),
            "{what}"
        );
    }
    for pair in spans.windows(2) {
        assert!(
            pair[0].end_ns <= pair[1].start_ns,
            "the CLI runs one statement at a time\n{}",
            dump(&spans)
        );
    }
    let sleep = spans.last().unwrap();
    let floor = Duration::from_millis(200).saturating_sub(step);
    assert!(
        sleep.duration() >= floor && sleep.duration() < Duration::from_secs(2),
        "sleep(0.2): {:?} (realtime stepped {step:?} against monotonic during the run)",
        sleep.duration()
    );
    let others = spans
        .iter()
        .filter(|s| s.text() != "select sleep(?)")
        .map(|s| s.duration())
        .max()
        .unwrap();
    assert!(
        others < Duration::from_millis(200),
        "the other statements are quick: {others:?}"
    );

    // BEGIN .. COMMIT: one transaction span parenting its four statements; the rest are roots.
    let txns: Vec<&Span> = all.iter().filter(|s| s.name == "transaction").collect();
    assert_eq!(txns.len(), 1, "{}", dump(&all.iter().collect::<Vec<_>>()));
    let t = txns[0];
    let children: Vec<&&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == t.span_id)
        .collect();
    let texts: Vec<&str> = children.iter().map(|s| s.text()).collect();
    assert_eq!(
        texts,
        [
            "begin",
            "update items set name = ? where id = ?",
            "delete from items where id in (?, ?) ",
            "commit"
        ]
    );
    assert!(children.iter().all(|c| c.trace_id == t.trace_id));
    assert!(
        t.start_ns <= children[0].start_ns && children[3].end_ns <= t.end_ns,
        "the transaction encloses its statements"
    );
    assert_eq!(t.kind, 3);
    assert_eq!(t.str("db.system.name"), Some("mariadb"));
    assert_eq!(t.str("db.transaction.outcome"), Some("committed"));
    assert_eq!(t.int("db.transaction.statement_count"), Some(4));
    assert_eq!(t.int("db.transaction.retry_count"), Some(0));
    assert_eq!(t.int("db.mysql.connection_id"), Some(conn as i64));
    assert_eq!(t.str("db.namespace"), Some("shop"));
    let roots = spans.iter().filter(|s| s.parent_span_id.is_empty()).count();
    assert_eq!(
        roots,
        SCRIPT.len() - 4,
        "autocommit statements are roots\n{}",
        dump(&spans)
    );

    let total = SCRIPT.len() + 1;
    assert_eq!(
        all.len(),
        total,
        "{}",
        dump(&all.iter().collect::<Vec<_>>())
    );
    assert!(
        run.summary().starts_with(&format!(
            "dbtel: {total} spans exported, 0 failed to export, 0 lost in the export queue"
        )),
        "{}",
        run.summary()
    );
    assert!(
        run.summary().contains(" 0 lost in the ring buffer"),
        "{}",
        run.summary()
    );
}

#[test]
fn cli_over_tcp_carries_address_port_and_database() {
    require_root();
    let db = MariaDb::start();
    db.cli("create database shop; create table shop.items (id int primary key, name text); insert into shop.items values (1, 'a'), (2, 'b')");
    let before = last_connection(&db.general_log());
    let rx = Receiver::start();
    let mut conn = db.tcp_client_args();
    conn.push("--database=shop".into());
    let run = traced_cli(
        &rx,
        &conn,
        "select id, name from items order by id;\nselect connection_id();\nselect * from nope;\n",
    );
    assert_attached(&run);
    let conns = connections_after(&db.general_log(), before);
    assert_eq!(conns.len(), 1);
    let id = conns[0];
    db.wait_quit(&conns);
    let log = db.general_log();
    assert!(
        log.iter().any(|e| e.connection == id
            && e.command == "Connect"
            && e.text == "root@127.0.0.1 on shop using TCP/IP"),
        "{log:#?}"
    );
    assert!(
        run.stdout.contains(&format!("\n{id}\n")),
        "CONNECTION_ID() is the log's connection id: {}",
        run.stdout
    );

    let all = rx.spans();
    let spans = statement_spans(&all, id);
    let pairs = pair_with_log(&spans, &log, id, &|_| "mysql_real_query");
    assert_eq!(pairs.len(), 3, "{}", dump(&spans));
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["SELECT items", "SELECT", "SELECT nope"]);
    for s in &spans {
        assert_eq!(s.str("server.address"), Some("127.0.0.1"), "{}", s.name);
        assert_eq!(s.int("server.port"), Some(db.port as i64), "{}", s.name);
        assert_eq!(s.str("network.transport"), Some("tcp"), "{}", s.name);
        assert_eq!(s.str("db.namespace"), Some("shop"), "{}", s.name);
    }
    assert_eq!(spans[0].int("db.response.returned_rows"), Some(2));
    assert_eq!(
        (
            spans[2].str("error.type"),
            spans[2].str("db.mysql.sqlstate")
        ),
        (Some("1146"), Some("42S02"))
    );
    assert_eq!(all.len(), 3, "no other span");
    assert!(
        run.summary()
            .starts_with("dbtel: 3 spans exported, 0 failed to export, 0 lost in the export queue"),
        "{}",
        run.summary()
    );
}
