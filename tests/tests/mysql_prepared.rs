//! A C program on libmariadb.so.3 using prepared statements (prepare, bind,
//! execute, store result, fetch, close), mysql_send_query with
//! mysql_read_query_result, and a multi-statement text read with
//! mysql_next_result; traced from its start (`dbtel-agent -- program`) and
//! compared with the general log's Prepare / Execute / Query entries.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use dbtel_tests::{
    mysql_spans::{dump, pair_with_log, statement_spans},
    require_root, run_agent, MariaDb, Receiver, Span,
};

fn build(dir: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("c/mysql_prepared.c");
    let out = dir.join("mysql_prepared");
    let flags = Command::new("mariadb_config")
        .args(["--cflags", "--libs"])
        .output()
        .expect("mariadb_config (libmariadb-dev)");
    assert!(
        flags.status.success(),
        "mariadb_config: install libmariadb-dev (cargo xtask setup)"
    );
    let flags = String::from_utf8(flags.stdout).unwrap();
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .args(flags.split_whitespace())
        .status()
        .expect("cc");
    assert!(status.success());
    let ldd = String::from_utf8(Command::new("ldd").arg(&out).output().unwrap().stdout).unwrap();
    assert!(ldd.contains("libmariadb.so.3"), "{ldd}");
    out
}

const INSERT: &str = "insert into items (id, name) values (?, ?)";
const SELECT: &str = "select id, name from items where id >= ? order by id";
const MISSING: &str = "select * from no_such_table where id = ?";
const SENT: &str = "select count(*) from items where name <> ?";
const MULTI: &str =
    "select ?; select id from items where id > ?; update items set name = ? where id = ?";

#[test]
fn prepared_statements_send_query_and_multi_statements() {
    require_root();
    let db = MariaDb::start();
    db.cli("create database shop; create table shop.items (id int primary key, name varchar(50)); insert into shop.items values (1, 'one')");
    let dir = tempfile::tempdir().unwrap();
    let prog = build(dir.path());
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let (prog_s, socket) = (
        prog.display().to_string(),
        db.socket().display().to_string(),
    );
    let run = run_agent(
        &["--otlp-endpoint", &endpoint, "--", &prog_s, &socket, "shop"],
        b"",
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "{run:?}");
    // Started held: the library is named as the loader maps it, before the program runs.
    let named = |l: &str| {
        l.starts_with("dbtel: tracing ")
            && l.contains(" (mysql_prepared) ")
            && l.ends_with("/libmariadb.so.3")
    };
    assert!(run.stderr.lines().any(named), "{}", run.stderr);

    // What the API said.
    let printed: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|l| l.split('\t').collect())
        .collect();
    let conn: u64 = printed[0][1].parse().unwrap();
    let facts: Vec<String> = printed[1..].iter().map(|f| f.join(" ")).collect();
    assert_eq!(
        facts,
        [
            "affected 1",
            "affected 1",
            "affected 1",
            "error mysql_stmt_execute 1062 23000",
            "stmt_rows 2",
            "fetched 2",
            "error mysql_stmt_prepare 1146 42S02",
            "send_rows 1",
            "result 0 1",
            "result 1 2",
            "result 2 -1",
        ]
    );
    db.wait_quit(&[conn]);
    let log = db.general_log();
    // The ground truth: a failed prepare is not logged; closing a statement is.
    let commands: Vec<&str> = log
        .iter()
        .filter(|e| e.connection == conn)
        .map(|e| e.command.as_str())
        .collect();
    assert_eq!(
        commands,
        [
            "Connect",
            "Prepare",
            "Execute",
            "Execute",
            "Execute",
            "Execute",
            "Close stmt",
            "Prepare",
            "Execute",
            "Close stmt",
            "Query",
            "Query",
            "Quit"
        ]
    );

    let all = rx.spans();
    let spans = statement_spans(&all, conn);
    let listing = dump(&spans);
    // The prepare that failed: a span the log has no entry for.
    let failed: Vec<&Span> = spans
        .iter()
        .copied()
        .filter(|s| s.str("code.function.name") == Some("mysql_stmt_prepare") && s.status_code == 2)
        .collect();
    assert_eq!(failed.len(), 1, "{listing}");
    let f = failed[0];
    assert_eq!(
        (f.name.as_str(), f.text()),
        ("PREPARE SELECT no_such_table", MISSING)
    );
    assert_eq!(f.str("db.operation.name"), Some("PREPARE"));
    assert_eq!(
        (
            f.str("db.response.status_code"),
            f.str("error.type"),
            f.str("db.mysql.sqlstate")
        ),
        (Some("1146"), Some("1146"), Some("42S02"))
    );
    let logged_spans: Vec<&Span> = spans
        .iter()
        .copied()
        .filter(|s| s.span_id != f.span_id)
        .collect();
    let pairs = pair_with_log(&logged_spans, &log, conn, &|e| {
        if e.text.starts_with("select count") {
            "mysql_send_query"
        } else {
            "mysql_real_query"
        }
    });

    // (span name, text, affected rows, returned rows, error)
    type Row<'a> = (&'a str, &'a str, Option<i64>, Option<i64>, Option<&'a str>);
    let got: Vec<Row> = pairs
        .iter()
        .map(|(s, _)| {
            (
                s.name.as_str(),
                s.text(),
                s.int("db.response.affected_rows"),
                s.int("db.response.returned_rows"),
                s.str("error.type"),
            )
        })
        .collect();
    let multi_name = "SELECT SELECT items UPDATE items";
    let multi = pairs.last().unwrap().0;
    let want: Vec<Row> = vec![
        ("PREPARE INSERT items", INSERT, None, None, None),
        ("INSERT items", INSERT, Some(1), None, None),
        ("INSERT items", INSERT, Some(1), None, None),
        ("INSERT items", INSERT, Some(1), None, None),
        ("INSERT items", INSERT, None, None, Some("1062")),
        ("PREPARE SELECT items", SELECT, None, None, None),
        ("SELECT items", SELECT, None, Some(2), None),
        ("SELECT items", SENT, None, Some(1), None),
        // Several results: the rows of its two result sets together (the update's count is not asserted).
        (
            multi_name,
            MULTI,
            multi.int("db.response.affected_rows"),
            Some(3),
            None,
        ),
    ];
    assert_eq!(got, want, "{listing}");
    let duplicate = pairs[4].0;
    assert_eq!(
        (
            duplicate.status_code,
            duplicate.str("db.response.status_code"),
            duplicate.str("db.mysql.sqlstate")
        ),
        (2, Some("1062"), Some("23000"))
    );
    assert_eq!(multi.str("db.operation.name"), Some("SELECT"));
    assert_eq!(multi.status_code, 0);

    for s in &spans {
        assert_eq!(s.str("db.namespace"), Some("shop"), "{}", s.name);
        assert_eq!(s.str("server.address"), Some(socket.as_str()), "{}", s.name);
        assert_eq!(s.str("network.transport"), Some("unix"), "{}", s.name);
        assert!(
            s.parent_span_id.is_empty(),
            "autocommit: no transaction ({})",
            s.name
        );
        assert_eq!(
            s.resource_str("process.executable.name"),
            Some("mysql_prepared")
        );
    }
    for pair in spans.windows(2) {
        assert!(
            pair[0].end_ns <= pair[1].start_ns,
            "one call at a time\n{listing}"
        );
    }
    assert_eq!(
        all.len(),
        spans.len(),
        "no transaction or other span: {}",
        dump(&all.iter().collect::<Vec<_>>())
    );
    assert_eq!(all.len(), 10);
    assert!(
        run.summary().starts_with(
            "dbtel: 10 spans exported, 0 failed to export, 0 lost in the export queue"
        ),
        "{}",
        run.summary()
    );
    assert!(
        run.summary().contains(" 0 lost in the ring buffer"),
        "{}",
        run.summary()
    );
}
