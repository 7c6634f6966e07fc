//! A node client on mysql2 (pure JavaScript: no client library to trace)
//! seen from the MariaDB server traced by PID: every statement of its
//! connections a SERVER span, text protocol and prepared statements alike,
//! checked against the general log; its error, its transaction, and a row
//! lock wait between two of its connections under the statement that waited.

use std::{collections::BTreeSet, process::Stdio, time::Duration};

use dbtel_tests::{
    drivers,
    mysql_spans::{
        catalog_connections, connections_after, dump, last_connection, pair_server_with_log,
        server_statement_spans, span_connections, SERVER,
    },
    require_root, Agent, MariaDb, Receiver, Span,
};

/// What mysql2_app.js printed: its connections (main, A, B) and the errnos it caught.
fn run_app(db: &MariaDb) -> (Vec<u64>, Vec<String>) {
    let socket = db.socket().display().to_string();
    let out = drivers::node()
        .arg(drivers::program("mysql2_app.js"))
        .args([socket.as_str(), "shop"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.lines().last() == Some("done"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut conns, mut errors) = (Vec::new(), Vec::new());
    for l in stdout.lines() {
        match l.split(' ').collect::<Vec<_>>()[..] {
            ["conn", id] => conns.push(id.parse().unwrap()),
            ["error", errno] => errors.push(errno.to_string()),
            ["done"] => {}
            _ => panic!("unexpected line {l:?} in {stdout}"),
        }
    }
    (conns, errors)
}

fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    let mut v: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id)
        .collect();
    v.sort_by_key(|s| s.end_ns);
    v
}

#[test]
fn a_mysql2_client_gets_server_spans_for_every_statement_and_its_lock_wait() {
    require_root();
    let db = MariaDb::start();
    db.cli("create database shop; create table shop.t (id int primary key, v int); insert into shop.t values (1, 0), (2, 0)");
    let before = last_connection(&db.general_log());
    let rx = Receiver::start();
    let pid = db.pid().to_string();
    let agent = Agent::start(
        &["--pid", &pid, "--otlp-endpoint", &rx.http_endpoint()],
        Stdio::null(),
    );
    let (conns, errors) = run_app(&db);
    assert_eq!(errors, ["1146"]);
    assert_eq!(
        connections_after(&db.general_log(), before),
        conns,
        "the program's connections (main, A, B), and only those"
    );
    let [main, a, b] = conns[..] else {
        panic!("{conns:?}")
    };
    db.wait_quit(&conns);
    std::thread::sleep(Duration::from_millis(500));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.summary().contains(" 0 lost in the ring buffer"),
        "{}",
        run.summary()
    );
    let spans = rx.spans();
    let all = || dump(&spans.iter().collect::<Vec<_>>());
    let log = db.general_log();

    // Statement by statement, as the server logged them: queries, each
    // prepare (named PREPARE ...) and each execution (the prepared text).
    let mut commands = Vec::new();
    for &conn in &conns {
        let got = server_statement_spans(&spans, conn);
        for (s, e) in pair_server_with_log(&got, &log, conn, db.pid()) {
            let what = format!(
                "connection {conn}: {} {:?}\n{}",
                e.command,
                e.text,
                dump(&[s])
            );
            assert_eq!(
                (s.str("user.name"), s.str("db.namespace")),
                (Some("root"), Some("shop")),
                "{what}"
            );
            assert_eq!(s.str("network.transport"), Some("unix"), "{what}");
            commands.push((conn, e.command.clone(), s.text().to_string()));
        }
    }
    let count = |conn: u64, command: &str| {
        commands
            .iter()
            .filter(|(c, m, _)| *c == conn && m == command)
            .count()
    };
    // mysql2 prepares a text once per connection and executes it again.
    assert_eq!(
        (
            count(main, "Prepare"),
            count(main, "Execute"),
            count(main, "Query")
        ),
        (2, 4, 6),
        "{commands:?}"
    );
    assert_eq!(
        (count(b, "Prepare"), count(b, "Execute"), count(b, "Query")),
        (1, 1, 0),
        "{commands:?}"
    );

    // The failing statement: the server's error number.
    let missing: Vec<&Span> = server_statement_spans(&spans, main)
        .into_iter()
        .filter(|s| s.text() == "select * from missing")
        .collect();
    assert_eq!(missing.len(), 1, "{}", all());
    assert_eq!(
        (
            missing[0].status_code,
            missing[0].str("db.response.status_code")
        ),
        (2, Some("1146"))
    );

    // The explicit transactions (main's and A's), committed, their
    // statements under them; everything else outside any transaction.
    let mut in_transactions = 0;
    for (conn, texts) in [
        (
            main,
            &[
                "START TRANSACTION",
                "update t set v = v + ? where id = ?",
                "select v from t where id = ?",
                "COMMIT",
            ][..],
        ),
        (
            a,
            &["begin", "update t set v = v + ? where id = ?", "commit"][..],
        ),
    ] {
        let txns: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                s.kind == SERVER
                    && s.name == "transaction"
                    && s.int("db.mysql.connection_id") == Some(conn as i64)
            })
            .collect();
        assert_eq!(txns.len(), 1, "connection {conn}\n{}", all());
        let t = txns[0];
        assert_eq!(t.str("db.transaction.outcome"), Some("committed"));
        let under = children(&spans, t);
        assert_eq!(
            under.iter().map(|s| s.text()).collect::<Vec<_>>(),
            texts,
            "connection {conn}\n{}",
            dump(&under)
        );
        assert!(
            under.iter().all(|s| s.trace_id == t.trace_id
                && t.start_ns <= s.start_ns
                && s.end_ns <= t.end_ns),
            "connection {conn}\n{}",
            dump(&under)
        );
        in_transactions += under.len();
    }
    let statements: usize = conns
        .iter()
        .map(|&c| server_statement_spans(&spans, c).len())
        .sum();
    let roots = conns
        .iter()
        .flat_map(|&c| server_statement_spans(&spans, c))
        .filter(|s| s.parent_span_id.is_empty())
        .count();
    assert_eq!(roots, statements - in_transactions, "{}", all());

    // B's prepared UPDATE waited for A's row lock: one wait under its
    // execution (its prepare, the same text, took no lock).
    let update = server_statement_spans(&spans, b)
        .into_iter()
        .find(|s| s.name == "UPDATE t")
        .expect("B's update");
    let waits = children(&spans, update);
    assert_eq!(waits.len(), 1, "{}", all());
    let w = waits[0];
    let what = dump(&[update, w]);
    assert_eq!(w.name, "lock wait t", "{what}");
    assert_eq!(
        (w.str("db.mysql.lock.type"), w.str("db.mysql.lock.outcome")),
        (Some("row"), Some("granted")),
        "{what}"
    );
    assert!(
        w.duration() >= Duration::from_millis(350) && w.duration() < Duration::from_millis(1500),
        "{:?}",
        w.duration()
    );
    assert!(
        update.start_ns <= w.start_ns && w.end_ns <= update.end_ns,
        "inside the update: {what}"
    );
    assert_eq!(w.trace_id, update.trace_id);
    assert_eq!(
        w.int("db.mysql.blocker.connection_id"),
        Some(a as i64),
        "{what}"
    );
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.name.starts_with("lock wait"))
            .count(),
        1,
        "{}",
        all()
    );

    // Nothing of the agent's own catalog session, nor of any other client.
    let catalog = catalog_connections(&log);
    assert_eq!(catalog.len(), 1, "one catalog session");
    assert_eq!(
        span_connections(&spans),
        conns.iter().copied().collect::<BTreeSet<u64>>(),
        "{}",
        all()
    );
}
