//! Statements sent without a Sync between them — pgjdbc's executeBatch,
//! asyncpg's executemany, psycopg 3's pipelined executemany — and a
//! simple-protocol text of several statements: one SERVER span per statement
//! the server ran, with its exact text and row count, checked against the
//! server's csvlog statement by statement; a failure in a batch is its one
//! ERROR span, the statements the server then skipped have none. COPY's rows
//! are counted on both sides.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use dbtel_tests::{
    drivers, expected_text, otlp::Value, require_root, Agent, Cluster, Receiver, Span,
};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// Runs a driver program to its end; its stdout lines.
fn run(mut c: Command) -> Vec<String> {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn python(args: &[&str]) -> Command {
    let mut c = drivers::python();
    c.arg(drivers::program("batches.py")).args(args);
    c
}

/// Every row count a span carries, by attribute.
fn rows(s: &Span) -> Vec<(&'static str, i64)> {
    ["db.response.returned_rows", "db.response.affected_rows"]
        .into_iter()
        .filter_map(|k| Some((k, s.int(k)?)))
        .collect()
}

#[test]
fn batched_statements_are_one_server_span_each_as_the_server_logged_them() {
    require_root();
    let pg = Cluster::start_logged();
    pg.psql(
        "postgres",
        "create table items (id int primary key, v text)",
    );
    let rx = Receiver::start();
    let pm = pg.postmaster_pid().to_string();
    let agent = Agent::start(
        &["--otlp-endpoint", &rx.http_endpoint(), "--pid", &pm],
        Stdio::null(),
    );

    let port = pg.port.to_string();
    let java = |mode: &str| {
        let mut c = drivers::java(drivers::program("Batch.java").to_str().unwrap());
        c.args([port.as_str(), mode]);
        run(c)
    };
    assert_eq!(
        java("ok"),
        ["50", "5", "done"],
        "50 rows inserted, 5 deleted"
    );
    assert_eq!(java("fail"), ["23505", "done"]);
    assert_eq!(
        java("fetch"),
        ["45", "done"],
        "45 rows fetched 20 at a time"
    );
    let url = format!(
        "postgresql://postgres@/postgres?host={}&port={}",
        pg.socket_dir().display(),
        pg.port
    );
    assert_eq!(run(python(&["asyncpg", &url])), ["done"]);
    assert_eq!(run(python(&["psycopg", &pg.dsn("postgres")])), ["done"]);
    std::thread::sleep(Duration::from_millis(700));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    assert!(run.summary().contains(" 0 failed"), "{}", run.summary());
    let spans = rx.spans();

    // The drivers' backends, in the order they ran: JDBC ok, fail, fetch, asyncpg, psycopg.
    let logged = pg.logged_executions();
    let mut backends: Vec<u32> = Vec::new();
    for (pid, text) in &logged {
        if text.contains("items") && !text.starts_with("create table") && !backends.contains(pid) {
            backends.push(*pid);
        }
    }
    assert_eq!(backends.len(), 5, "{logged:#?}");
    let errors = pg.logged_errors();
    let mut txn_sizes = Vec::new();
    for pid in &backends {
        let want: Vec<String> = logged
            .iter()
            .filter(|(p, _)| p == pid)
            .map(|(_, t)| expected_text(t))
            .collect();
        let mut mine: Vec<&Span> = spans
            .iter()
            .filter(|s| s.kind == SERVER && s.int("db.postgresql.backend.pid") == Some(*pid as i64))
            .collect();
        mine.sort_by_key(|s| s.start_ns);
        let (txns, stmts): (Vec<&Span>, Vec<&Span>) =
            mine.into_iter().partition(|s| s.name == "transaction");
        let got: Vec<&str> = stmts.iter().map(|s| s.text()).collect();
        assert_eq!(
            got, want,
            "backend {pid}: one span per statement the server ran, in order"
        );
        assert!(
            stmts.windows(2).all(|w| w[0].end_ns <= w[1].start_ns),
            "backend {pid}: one after the other"
        );

        // Each INSERT and DELETE touched one row; the SELECT whose portal was
        // suspended twice is the Execute that finished it (its command tag's
        // 5 rows); nothing else counts rows.
        for s in &stmts {
            let dml = s.name.starts_with("INSERT") || s.name.starts_with("DELETE");
            let want: &[(&str, i64)] = match s.name.as_str() {
                _ if dml && s.status_code != 2 => &[("db.response.affected_rows", 1)],
                "SELECT items" => &[("db.response.returned_rows", 5)],
                _ => &[],
            };
            assert_eq!(rows(s), want, "backend {pid}: {} {:?}", s.name, s.text());
        }
        let failed: Vec<&str> = stmts
            .iter()
            .filter(|s| s.status_code == 2)
            .map(|s| s.str("error.type").unwrap_or("none"))
            .collect();
        let logged_errors: Vec<&str> = errors
            .iter()
            .filter(|(p, _)| p == pid)
            .map(|(_, c)| c.as_str())
            .collect();
        assert_eq!(
            failed, logged_errors,
            "backend {pid}: the errors the server reported, no others"
        );

        // The block: BEGIN … COMMIT/ROLLBACK as logged, every statement of it under its span.
        assert!(txns.len() <= 1, "backend {pid}: {txns:?}");
        if let Some(t) = txns.first() {
            let begin = want
                .iter()
                .position(|t| t == "BEGIN")
                .expect("a logged BEGIN");
            let end = want
                .iter()
                .position(|t| t == "COMMIT" || t == "ROLLBACK")
                .expect("a logged end");
            assert_eq!(
                t.int("db.transaction.statement_count"),
                Some((end - begin + 1) as i64),
                "backend {pid}"
            );
            assert!(
                stmts[begin..=end]
                    .iter()
                    .all(|s| s.parent_span_id == t.span_id),
                "backend {pid}: under its block"
            );
            txn_sizes.push((
                t.int("db.transaction.statement_count"),
                t.str("db.transaction.outcome"),
                t.str("error.type"),
            ));
        } else {
            txn_sizes.push((None, None, None));
        }
    }
    // pgjdbc: BEGIN, 50 INSERTs, 5 DELETEs, COMMIT; then BEGIN, 2 INSERTs, the
    // failing one, ROLLBACK (the 2 after it never ran); then BEGIN, the SELECT
    // fetched in three Executes, COMMIT; asyncpg's executemany runs in an
    // implicit transaction; psycopg: BEGIN, 50 INSERTs, COMMIT.
    let committed = |n| (Some(n), Some("committed"), None);
    assert_eq!(
        txn_sizes,
        [
            committed(57),
            (Some(5), Some("rolled_back"), Some("23505")),
            committed(3),
            (None, None, None),
            committed(52)
        ]
    );
    let error_spans: Vec<&Span> = spans
        .iter()
        .filter(|s| s.status_code == 2 && s.name != "transaction")
        .collect();
    assert_eq!(error_spans.len(), 1, "{error_spans:#?}");
    assert_eq!(error_spans[0].str("db.response.status_code"), Some("23505"));
}

#[test]
fn a_text_of_several_statements_and_copy_count_their_rows_on_both_sides() {
    require_root();
    let pg = Cluster::start_logged();
    pg.psql(
        "postgres",
        "create table items (id int primary key, v text)",
    );
    let rx = Receiver::start();
    let pm = pg.postmaster_pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("rows.tsv");
    std::fs::write(
        &tsv,
        (1..=7)
            .map(|i| format!("{i}\titem {i}\n"))
            .collect::<String>(),
    )
    .unwrap();

    // psql, traced with its server: a text of four statements, \copy in and out.
    let psql = pg.bin("psql").display().to_string();
    let mut args = vec![
        "--otlp-endpoint".to_string(),
        rx.http_endpoint(),
        "--pid".into(),
        pm.clone(),
        "--".into(),
        psql,
    ];
    args.extend(pg.conn_args());
    args.extend(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"].map(String::from));
    for c in [
        format!("\\copy items from {}", tsv.display()),
        "begin; insert into items values (8, 'x'), (9, 'y'); update items set v = 'z' where id > 5; commit".into(),
        "\\copy items to /dev/null".into(),
    ] {
        args.extend(["-c".to_string(), c]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = dbtel_tests::run_agent(&args, b"", Duration::from_secs(30));
    assert!(run.status.success(), "{run:?}");

    // psycopg2's copy_expert, traced by PID with the server.
    let rx2 = Receiver::start();
    let script = "import io, sys, psycopg2\nc = psycopg2.connect(sys.argv[1])\nprint(flush=True)\nsys.stdin.readline()\ncur = c.cursor()\n\
                  cur.copy_expert('copy items from stdin', io.StringIO('20\\ta\\n21\\tb\\n'))\nout = io.StringIO()\n\
                  cur.copy_expert('copy items to stdout', out)\nc.commit()\nprint(len(out.getvalue().splitlines()))\n";
    let mut py = drivers::python()
        .args(["-c", script, &pg.dsn("postgres")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pypid = py.id().to_string();
    let agent = Agent::start(
        &[
            "--otlp-endpoint",
            &rx2.http_endpoint(),
            "--pid",
            &pypid,
            "--pid",
            &pm,
        ],
        Stdio::null(),
    );
    py.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "11", "rows copied out");
    assert!(py.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(700));
    let run2 = agent.interrupt();
    assert!(run2.status.success(), "{run2:?}");

    let spans: Vec<Span> = rx.spans().into_iter().chain(rx2.spans()).collect();
    let mut server: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SERVER && s.name != "transaction")
        .collect();
    server.sort_by_key(|s| s.start_ns);
    // What the clients' backends ran (not the agent's catalog connection), a
    // text of several statements split where psql's server split it.
    let logged = pg.logged_statements();
    let clients: Vec<u32> = logged
        .iter()
        .filter(|(_, t)| t.contains("items") && !t.starts_with("create"))
        .map(|(p, _)| *p)
        .collect();
    let ran: Vec<String> = logged
        .iter()
        .filter(|(p, _)| clients.contains(p))
        .flat_map(|(_, t)| t.split("; ").map(expected_text).collect::<Vec<_>>())
        .collect();
    assert_eq!(ran.len(), 10, "{logged:?}");
    let got: Vec<&str> = server.iter().map(|s| s.text()).collect();
    assert_eq!(
        got, ran,
        "one span per statement, each of a text of several included"
    );
    let counts: Vec<(&str, Vec<(&str, i64)>)> =
        server.iter().map(|s| (s.text(), rows(s))).collect();
    let (ret, aff) = ("db.response.returned_rows", "db.response.affected_rows");
    assert_eq!(
        counts,
        [
            ("COPY  items FROM STDIN ", vec![(aff, 7)]),
            ("begin", vec![]),
            ("insert into items values (?, ?), (?, ?)", vec![(aff, 2)]),
            ("update items set v = ? where id > ?", vec![(aff, 4)]),
            ("commit", vec![]),
            ("COPY  items TO STDOUT ", vec![(ret, 9)]),
            ("BEGIN", vec![]),
            ("copy items from stdin", vec![(aff, 2)]),
            ("copy items to stdout", vec![(ret, 11)]),
            ("COMMIT", vec![]),
        ]
    );
    // The four statements of the psql text are one block of four.
    let blocks: Vec<(Option<i64>, Option<&str>)> = spans
        .iter()
        .filter(|s| s.kind == SERVER && s.name == "transaction")
        .map(|s| {
            (
                s.int("db.transaction.statement_count"),
                s.str("db.transaction.outcome"),
            )
        })
        .collect();
    assert_eq!(
        blocks,
        [(Some(4), Some("committed")), (Some(4), Some("committed"))]
    );

    // The clients' COPY spans: rows copied in are affected, rows copied out returned.
    let client: BTreeMap<&str, Vec<(&str, i64)>> = spans
        .iter()
        .filter(|s| s.kind == CLIENT && s.name.starts_with("COPY"))
        .map(|s| (s.text(), rows(s)))
        .collect();
    let want: BTreeMap<&str, Vec<(&str, i64)>> = [
        ("COPY  items FROM STDIN ", vec![(ret, 0), (aff, 7)]),
        ("COPY  items TO STDOUT ", vec![(ret, 9)]),
        ("copy items from stdin", vec![(ret, 0), (aff, 2)]),
        ("copy items to stdout", vec![(ret, 11)]),
    ]
    .into();
    assert_eq!(client, want);
    let copies: Vec<&Span> = spans
        .iter()
        .filter(|s| s.text().to_ascii_lowercase().starts_with("copy"))
        .collect();
    assert_eq!(copies.len(), 8, "client and server, 4 each");
    for s in copies {
        assert_eq!(
            (s.name.as_str(), s.attrs.get("db.collection.name")),
            ("COPY items", Some(&Value::Str("items".into()))),
            "{:?}",
            s.text()
        );
    }
}
