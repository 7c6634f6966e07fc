//! sysbench oltp_read_write (libmariadb.so.3, server-side prepared
//! statements, each event wrapped in BEGIN .. COMMIT): every prepare and
//! execution the general log records is one span, none lost, each
//! transaction parenting its statements. Traced on the client (the agent
//! starts sysbench), on the server (`--pid` of mariadbd, as the bench's
//! server lines), and on both (each server span the child of its client span).

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use dbtel_tests::{
    mysql_spans::{
        connections_after, dump, first_word, is_server_statement, last_connection,
        pair_server_with_log, pair_with_log, server_statement_spans, statement_spans, SERVER,
    },
    require_root, run_agent, run_agent_env, Agent, GeneralLog, MariaDb, Receiver, Span,
};

const EVENTS: usize = 200;

fn sysbench_args(db: &MariaDb) -> Vec<String> {
    [
        "oltp_read_write",
        "--db-driver=mysql",
        &format!("--mysql-socket={}", db.socket().display()),
        "--mysql-user=root",
        "--mysql-db=sbtest",
        "--tables=2",
        "--table-size=20", // small: the two threads meet, and deadlock now and then
    ]
    .map(String::from)
    .to_vec()
}

/// The table a sysbench statement names (sbtest1 or sbtest2), if any.
fn table(sql: &str) -> Option<&str> {
    ["sbtest1", "sbtest2"].into_iter().find(|t| sql.contains(t))
}

/// A connection's statements cut into transactions: each from a BEGIN to its
/// COMMIT, or to the next BEGIN (an event sysbench restarted after an ignored
/// error: the server rolled it back). Indexes into the connection's list.
fn transactions(logged: &[GeneralLog]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut open = false;
    for (i, e) in logged.iter().enumerate() {
        if e.command != "Execute" {
            continue;
        }
        if e.text == "BEGIN" {
            out.push(Vec::new());
            open = true;
        }
        if open {
            out.last_mut().unwrap().push(i);
        }
        if e.text == "COMMIT" {
            open = false;
        }
    }
    out
}

/// Operation, name, collection and rows of a span as its logged statement
/// says. `namespace`: whether the span carries db.namespace (the client's do).
fn check_statement(s: &Span, e: &GeneralLog, conn: u64, namespace: bool) {
    let what = format!("connection {conn}: {} {:?}", e.command, e.text);
    let op = first_word(&e.text);
    match e.command.as_str() {
        // A prepare is named after what it prepares.
        "Prepare" => {
            let summary = table(&e.text).map_or(op.clone(), |t| format!("{op} {t}"));
            assert_eq!(s.name, format!("PREPARE {summary}"), "{what}");
        }
        _ => {
            assert_eq!(s.str("db.operation.name"), Some(op.as_str()), "{what}");
            assert_eq!(
                s.name,
                table(&e.text).map_or(op.clone(), |t| format!("{op} {t}")),
                "{what}"
            );
        }
    }
    assert_eq!(s.str("db.collection.name"), table(&e.text), "{what}");
    if namespace {
        assert_eq!(s.str("db.namespace"), Some("sbtest"), "{what}");
    }
    if e.command == "Execute" && s.status_code == 0 {
        // sysbench stores every result (mysql_stmt_store_result).
        if (e.text.starts_with("SELECT c FROM sbtest") && e.text.contains(" WHERE id="))
            || e.text.starts_with("SELECT SUM(k)")
        {
            assert_eq!(s.int("db.response.returned_rows"), Some(1), "{what}");
        } else if op == "SELECT" {
            assert!(
                s.int("db.response.returned_rows")
                    .is_some_and(|n| (0..=100).contains(&n)),
                "{what}: {:?}",
                s.int("db.response.returned_rows")
            );
        } else if op == "INSERT" {
            assert_eq!(s.int("db.response.affected_rows"), Some(1), "{what}");
        } else if op == "UPDATE" || op == "DELETE" {
            assert!(
                s.int("db.response.affected_rows")
                    .is_some_and(|n| (0..=1).contains(&n)),
                "{what}"
            );
        }
    }
}

/// sysbench prepares its tables (2 of 1000 rows) in a new database; returns
/// the last connection id before the run.
fn prepared_server() -> (MariaDb, u64) {
    let db = MariaDb::start();
    db.cli("create database sbtest");
    let prepare = Command::new("sysbench")
        .args(sysbench_args(&db))
        .arg("prepare")
        .output()
        .expect("sysbench (cargo xtask setup)");
    assert!(
        prepare.status.success(),
        "{}",
        String::from_utf8_lossy(&prepare.stderr)
    );
    let before = last_connection(&db.general_log());
    (db, before)
}

fn run_args() -> Vec<String> {
    [
        "--threads=2",
        &format!("--events={EVENTS}"),
        "--time=0",
        "run",
    ]
    .map(String::from)
    .to_vec()
}

/// The transactions sysbench reported: all its events.
fn assert_all_events(stdout: &str) {
    let done = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("transactions:"))
        .and_then(|r| r.split_whitespace().next());
    assert_eq!(done, Some(EVENTS.to_string().as_str()), "{stdout}");
}

/// The connection's transactions per BEGIN, as the log cuts them, beside
/// its server transaction spans (start order); asserts their outcomes and
/// counts.
fn server_transactions<'a>(
    all: &'a [Span],
    conn: u64,
    pairs: &[(&Span, GeneralLog)],
) -> (Vec<&'a Span>, Vec<Vec<usize>>) {
    let logged: Vec<GeneralLog> = pairs.iter().map(|p| p.1.clone()).collect();
    let groups = transactions(&logged);
    let mut txns: Vec<&Span> = all
        .iter()
        .filter(|s| {
            s.kind == SERVER
                && s.name == "transaction"
                && s.int("db.mysql.connection_id") == Some(conn as i64)
        })
        .collect();
    txns.sort_by_key(|s| s.start_ns);
    assert_eq!(
        txns.len(),
        groups.len(),
        "connection {conn}: one server transaction per BEGIN
{}",
        dump(&txns)
    );
    for (k, (t, group)) in txns.iter().zip(&groups).enumerate() {
        let what = format!("connection {conn}: server transaction {k}");
        let want: Vec<&Span> = group.iter().map(|&i| pairs[i].0).collect();
        let last = want.last().unwrap();
        if logged[*group.last().unwrap()].text == "COMMIT" {
            assert_eq!(
                (t.str("db.transaction.outcome"), t.str("error.type")),
                (Some("committed"), None),
                "{what}
{}",
                dump(&want)
            );
        } else {
            // Only a deadlock (or a lock wait timeout) ends a sysbench event early: the server rolled it back.
            let error = last.str("db.response.status_code");
            assert!(
                matches!(error, Some("1213" | "1205")),
                "{what}
{}",
                dump(&want)
            );
            assert_eq!(
                (t.str("db.transaction.outcome"), t.str("error.type")),
                (Some("rolled_back"), error),
                "{what}
{}",
                dump(&want)
            );
        }
        assert_eq!(
            t.int("db.transaction.statement_count"),
            Some(group.len() as i64),
            "{what}"
        );
        assert_eq!(t.str("db.system.name"), Some("mariadb"));
        assert!(
            t.start_ns <= want[0].start_ns && last.end_ns <= t.end_ns,
            "{what}: encloses its statements
{}",
            dump(&want)
        );
    }
    (txns, groups)
}

/// Lock waits (sysbench's two threads may meet on a row): each under a
/// statement of its own connection, in its time.
fn check_waits(all: &[Span]) -> usize {
    let waits: Vec<&Span> = all
        .iter()
        .filter(|s| s.name.starts_with("lock wait"))
        .collect();
    for w in &waits {
        let parent = all
            .iter()
            .find(|s| s.span_id == w.parent_span_id && is_server_statement(s))
            .unwrap_or_else(|| panic!("{} has no statement", dump(&[w])));
        assert_eq!(
            parent.int("db.mysql.connection_id"),
            w.int("db.mysql.connection_id")
        );
        assert!(
            parent.start_ns <= w.start_ns && w.end_ns <= parent.end_ns,
            "{}",
            dump(&[parent, w])
        );
    }
    waits.len()
}

/// The agent on mariadbd, started before sysbench and stopped (SIGINT)
/// once the server has logged both connections' Quit. Returns sysbench's
/// output, the agent's run and sysbench's connections.
fn server_traced_run(
    db: &MariaDb,
    rx: &Receiver,
    before: u64,
) -> (String, dbtel_tests::AgentRun, Vec<u64>) {
    let pid = db.pid().to_string();
    let agent = Agent::start(
        &["--pid", &pid, "--otlp-endpoint", &rx.http_endpoint()],
        Stdio::null(),
    );
    let line = agent
        .stderr_lines
        .iter()
        .find(|l| l.starts_with("dbtel: tracing"))
        .cloned()
        .unwrap_or_default();
    assert!(line.contains(&format!("pid {pid} (mariadbd)")), "{line}");
    let out = Command::new("sysbench")
        .args(sysbench_args(db))
        .args(run_args())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conns = connections_after(&db.general_log(), before);
    assert_eq!(conns.len(), 2, "one connection per thread");
    db.wait_quit(&conns);
    std::thread::sleep(Duration::from_millis(500));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        agent.interrupt(),
        conns,
    )
}

#[test]
fn sysbench_oltp_read_write_every_statement_one_span() {
    every_statement_one_span(&[]);
}

/// The same with the client programs' per-thread call slots cut to one:
/// sysbench's two threads meet in it, and a call's entry whose slot is taken
/// goes to the fallback map; nothing may be lost or mixed up.
#[test]
fn sysbench_threads_sharing_one_call_slot_every_statement_one_span() {
    every_statement_one_span(&[("DBTEL_TEST_MYSQL_CALL_SLOTS", "1")]);
}

fn every_statement_one_span(env: &[(&str, &str)]) {
    require_root();
    let (db, before) = prepared_server();
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let mut args: Vec<String> = vec![
        "--otlp-endpoint".into(),
        endpoint,
        "--".into(),
        "sysbench".into(),
    ];
    args.extend(sysbench_args(&db));
    args.extend(run_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_agent_env(&args, env, b"", Duration::from_secs(180));
    assert!(run.status.success(), "{run:?}");
    // Started held: the library is named as the loader maps it, before the program runs.
    let named = |l: &str| {
        l.starts_with("dbtel: tracing ")
            && l.contains(" (sysbench) ")
            && l.ends_with("/libmariadb.so.3")
    };
    assert!(run.stderr.lines().any(named), "{}", run.stderr);
    assert_all_events(&run.stdout);

    let conns = connections_after(&db.general_log(), before);
    assert_eq!(conns.len(), 2, "one connection per thread");
    db.wait_quit(&conns);
    let log = db.general_log();
    let all = rx.spans();
    let mut statements = 0;
    let mut txn_total = 0;
    let mut begins = 0;
    for &conn in &conns {
        let spans = statement_spans(&all, conn);
        let pairs = pair_with_log(&spans, &log, conn, &|_| "mysql_real_query");
        statements += pairs.len();
        for (s, e) in &pairs {
            check_statement(s, e, conn, true);
        }

        // Transactions: one per BEGIN, parenting exactly its statements.
        let logged: Vec<GeneralLog> = pairs.iter().map(|p| p.1.clone()).collect();
        let groups = transactions(&logged);
        begins += groups.len();
        let mut txns: Vec<&Span> = all
            .iter()
            .filter(|s| {
                s.name == "transaction" && s.int("db.mysql.connection_id") == Some(conn as i64)
            })
            .collect();
        txns.sort_by_key(|s| s.start_ns);
        txn_total += txns.len();
        assert_eq!(
            txns.len(),
            groups.len(),
            "connection {conn}: one transaction per BEGIN"
        );
        let mut parented = 0;
        // Consecutive attempts rolled back by a deadlock or lock wait timeout.
        let mut retries = 0i64;
        for (k, (t, group)) in txns.iter().zip(&groups).enumerate() {
            let what = format!("connection {conn}: transaction {k}");
            let children: Vec<&Span> = spans
                .iter()
                .copied()
                .filter(|s| s.parent_span_id == t.span_id)
                .collect();
            let want: Vec<&Span> = group.iter().map(|&i| pairs[i].0).collect();
            assert_eq!(
                children.iter().map(|s| &s.span_id).collect::<Vec<_>>(),
                want.iter().map(|s| &s.span_id).collect::<Vec<_>>(),
                "{what}\n{}\n--\n{}",
                dump(&children),
                dump(&want)
            );
            parented += children.len();
            let committed = logged[*group.last().unwrap()].text == "COMMIT";
            assert_eq!(
                t.str("db.transaction.outcome"),
                Some(if committed {
                    "committed"
                } else {
                    "rolled_back"
                }),
                "{what}\n{}",
                dump(&want)
            );
            assert_eq!(
                t.int("db.transaction.statement_count"),
                Some(group.len() as i64),
                "{what}"
            );
            assert_eq!(t.int("db.transaction.retry_count"), Some(retries), "{what}");
            assert_eq!(t.str("db.system.name"), Some("mariadb"));
            assert_eq!(t.str("db.namespace"), Some("sbtest"));
            assert!(
                t.start_ns <= want[0].start_ns && want.last().unwrap().end_ns <= t.end_ns,
                "{what}: encloses its statements"
            );
            let last_error = want.last().unwrap().str("db.response.status_code");
            retries = if !committed && matches!(last_error, Some("1213" | "1205")) {
                retries + 1
            } else {
                0
            };
        }
        // Outside transactions: the prepares only.
        let roots: Vec<&Span> = spans
            .iter()
            .copied()
            .filter(|s| s.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), spans.len() - parented);
        assert!(
            roots
                .iter()
                .all(|s| s.str("db.operation.name") == Some("PREPARE")),
            "{}",
            dump(&roots)
        );
    }
    let executes = log
        .iter()
        .filter(|e| conns.contains(&e.connection) && e.command == "Execute")
        .count();
    let prepares = log
        .iter()
        .filter(|e| conns.contains(&e.connection) && e.command == "Prepare")
        .count();
    assert_eq!(
        prepares,
        2 * 20,
        "each thread prepares BEGIN, COMMIT and 9 statements per table"
    );
    assert!(executes >= EVENTS * 20, "{executes}");
    assert!(begins >= EVENTS);
    assert_eq!(txn_total, begins);
    assert_eq!(all.len(), statements + txn_total, "no other span");
    let total = all.len();
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
    // MySQL's spans feed the same metrics (the exit's OTLP push): every
    // statement and transaction once, labelled mariadb, retries as counted.
    let pushed = rx.metrics.latest();
    // Every return found its call's entry, in its slot or in the fallback.
    let unmatched: Vec<_> = pushed
        .iter()
        .filter(|p| {
            p.metric == "dbtel.events.lost" && p.attr("reason") == Some("mysql_return_unmatched")
        })
        .collect();
    assert!(
        unmatched.len() == 1 && unmatched[0].value == 0.0,
        "{unmatched:?}"
    );
    let count = |name: &str| -> u64 {
        pushed
            .iter()
            .filter(|p| p.metric == name)
            .inspect(|p| assert_eq!(p.attr("db.system.name"), Some("mariadb"), "{p:?}"))
            .map(|p| p.count)
            .sum()
    };
    assert_eq!(count("db.client.operation.duration") as usize, statements);
    assert_eq!(count("db.query.duration") as usize, statements);
    assert_eq!(count("db.transaction.duration") as usize, txn_total);
    let retried = all
        .iter()
        .filter(|s| s.int("db.transaction.retry_count").is_some_and(|n| n > 0))
        .count() as f64;
    let retries: f64 = pushed
        .iter()
        .filter(|p| p.metric == "db.transaction.retries")
        .map(|p| p.value)
        .sum();
    assert_eq!(retries, retried);
}

#[test]
fn sysbench_with_the_server_traced_every_statement_one_server_span() {
    require_root();
    let (db, before) = prepared_server();
    let rx = Receiver::start();
    let (stdout, run, conns) = server_traced_run(&db, &rx, before);
    assert!(run.status.success(), "{run:?}");
    assert_all_events(&stdout);
    assert!(
        run.summary()
            .contains(" 0 lost in the ring buffer, 0 undecodable"),
        "{}",
        run.summary()
    );
    let log = db.general_log();
    let all = rx.spans();
    let (mut statements, mut txn_total, mut begins) = (0, 0, 0);
    for &conn in &conns {
        let spans = server_statement_spans(&all, conn);
        let pairs = pair_server_with_log(&spans, &log, conn, db.pid());
        statements += pairs.len();
        for (s, e) in &pairs {
            check_statement(s, e, conn, false);
        }
        // Each server transaction parents exactly its statements, BEGIN to COMMIT.
        let (txns, groups) = server_transactions(&all, conn, &pairs);
        begins += groups.len();
        txn_total += txns.len();
        let mut parented = 0;
        for (k, (t, group)) in txns.iter().zip(&groups).enumerate() {
            let children: Vec<&Span> = spans
                .iter()
                .copied()
                .filter(|s| s.parent_span_id == t.span_id)
                .collect();
            let want: Vec<&Span> = group.iter().map(|&i| pairs[i].0).collect();
            assert_eq!(
                children.iter().map(|s| &s.span_id).collect::<Vec<_>>(),
                want.iter().map(|s| &s.span_id).collect::<Vec<_>>(),
                "connection {conn}: server transaction {k}\n{}\n--\n{}",
                dump(&children),
                dump(&want)
            );
            assert!(children.iter().all(|c| c.trace_id == t.trace_id));
            assert!(
                t.parent_span_id.is_empty(),
                "the client is not traced: a root"
            );
            parented += children.len();
        }
        // Outside transactions: the prepares only, each a root.
        let roots: Vec<&Span> = spans
            .iter()
            .copied()
            .filter(|s| s.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), spans.len() - parented, "{}", dump(&spans));
        assert!(
            roots
                .iter()
                .all(|s| s.str("db.operation.name") == Some("PREPARE")),
            "{}",
            dump(&roots)
        );
    }
    let executes = log
        .iter()
        .filter(|e| conns.contains(&e.connection) && e.command == "Execute")
        .count();
    let prepares = log
        .iter()
        .filter(|e| conns.contains(&e.connection) && e.command == "Prepare")
        .count();
    assert_eq!(
        prepares,
        2 * 20,
        "each thread prepares BEGIN, COMMIT and 9 statements per table"
    );
    assert_eq!(statements, executes + prepares);
    assert!(executes >= EVENTS * 20, "{executes}");
    assert!(begins >= EVENTS);
    assert_eq!(txn_total, begins);
    let waits = check_waits(&all);
    assert_eq!(
        all.len(),
        statements + txn_total + waits,
        "no other span\n{}",
        dump(
            &all.iter()
                .filter(|s| !is_server_statement(s) && s.name != "transaction")
                .collect::<Vec<_>>()
        )
    );
    let total = all.len();
    assert!(
        run.summary().starts_with(&format!(
            "dbtel: {total} spans exported, 0 failed to export, 0 lost in the export queue"
        )),
        "{}",
        run.summary()
    );
}

#[test]
fn sysbench_traced_on_both_sides_each_server_span_the_child_of_its_client_span() {
    require_root();
    let (db, before) = prepared_server();
    let rx = Receiver::start();
    let pid = db.pid().to_string();
    let mut args: Vec<String> = [
        "--pid",
        &pid,
        "--otlp-endpoint",
        &rx.http_endpoint(),
        "--",
        "sysbench",
    ]
    .map(String::from)
    .to_vec();
    args.extend(sysbench_args(&db));
    args.extend(run_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_agent(&args, b"", Duration::from_secs(180));
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.stderr.lines().any(
            |l| l.starts_with("dbtel: tracing") && l.contains(&format!("pid {pid} (mariadbd)"))
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("dbtel: tracing") && l.contains(" (sysbench) ")),
        "{}",
        run.stderr
    );
    assert_all_events(&run.stdout);
    assert!(
        run.summary()
            .contains(" 0 lost in the ring buffer, 0 undecodable"),
        "{}",
        run.summary()
    );
    let conns = connections_after(&db.general_log(), before);
    assert_eq!(conns.len(), 2, "one connection per thread");
    db.wait_quit(&conns);
    let log = db.general_log();
    let all = rx.spans();
    let client_side: Vec<Span> = all
        .iter()
        .filter(|s| s.kind != SERVER && !s.name.starts_with("lock wait"))
        .cloned()
        .collect();
    let (mut statements, mut server_txns, mut client_txns) = (0, 0, 0);
    for &conn in &conns {
        let client = pair_with_log(&statement_spans(&client_side, conn), &log, conn, &|_| {
            "mysql_real_query"
        });
        let server_spans = server_statement_spans(&all, conn);
        let server = pair_server_with_log(&server_spans, &log, conn, db.pid());
        assert_eq!(client.len(), server.len());
        // Statement by statement: the server's span is the child of the client's.
        for ((c, e), (s, _)) in client.iter().zip(&server) {
            let what = format!("connection {conn}: {} {:?}", e.command, e.text);
            check_statement(s, e, conn, false);
            if s.parent_span_id != c.span_id {
                let parent: Vec<&Span> = all
                    .iter()
                    .filter(|p| p.span_id == s.parent_span_id)
                    .collect();
                let near: Vec<&Span> = all
                    .iter()
                    .filter(|p| p.start_ns.abs_diff(c.start_ns) < 2_000_000)
                    .collect();
                let ends = |v: &[&Span]| {
                    v.iter()
                        .map(|x| {
                            format!(
                                "{}..{} {} {:?}",
                                x.start_ns,
                                x.end_ns,
                                x.kind,
                                x.int("db.mysql.connection_id")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                panic!("{what}: the server's parent is not the client's span\n{}\n{}\nparent: {}\nnear:\n{}", dump(&[c, s]), ends(&[c, s]), dump(&parent), ends(&near));
            }
            assert_eq!(s.trace_id, c.trace_id, "{what}");
            assert_eq!(
                (s.text(), s.int("db.mysql.connection_id")),
                (c.text(), c.int("db.mysql.connection_id")),
                "{what}"
            );
            assert_eq!(s.name, c.name, "{what}");
            // The server's work inside the client's call; a prepare's reply
            // goes out before the server's end of it, which can come later.
            assert!(
                c.start_ns <= s.start_ns && s.start_ns <= c.end_ns,
                "{what}: begins inside the client's call\n{}",
                dump(&[c, s])
            );
            assert!(
                e.command == "Prepare" || s.end_ns <= c.end_ns,
                "{what}: ends inside the client's call\n{}",
                dump(&[c, s])
            );
        }
        statements += client.len();
        // Each server transaction: the child of the client's transaction holding the same statements.
        let (txns, groups) = server_transactions(&all, conn, &server);
        server_txns += txns.len();
        let mut ctxns: Vec<&Span> = client_side
            .iter()
            .filter(|s| {
                s.name == "transaction" && s.int("db.mysql.connection_id") == Some(conn as i64)
            })
            .collect();
        ctxns.sort_by_key(|s| s.start_ns);
        client_txns += ctxns.len();
        for (k, (t, group)) in txns.iter().zip(&groups).enumerate() {
            let begin = client[group[0]].0;
            let ctxn = ctxns
                .iter()
                .find(|c| c.span_id == begin.parent_span_id)
                .unwrap_or_else(|| {
                    panic!(
                        "connection {conn}: transaction {k}: the client's BEGIN has no transaction"
                    )
                });
            assert_eq!(
                (&t.parent_span_id, &t.trace_id),
                (&ctxn.span_id, &ctxn.trace_id),
                "connection {conn}: server transaction {k}"
            );
            assert!(
                group
                    .iter()
                    .all(|&i| client[i].0.parent_span_id == ctxn.span_id),
                "connection {conn}: transaction {k}"
            );
        }
    }
    let waits = check_waits(&all);
    let server_statements = all.iter().filter(|s| is_server_statement(s)).count();
    assert_eq!(server_statements, statements, "no other server statement");
    assert_eq!(
        all.len(),
        2 * statements + server_txns + client_txns + waits,
        "no other span"
    );
    let total = all.len();
    assert!(
        run.summary().starts_with(&format!(
            "dbtel: {total} spans exported, 0 failed to export, 0 lost in the export queue"
        )),
        "{}",
        run.summary()
    );
}
