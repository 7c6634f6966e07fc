//! sysbench oltp_read_write (libmariadb.so.3, server-side prepared
//! statements, each event wrapped in BEGIN .. COMMIT) started by the agent:
//! every prepare and execution the general log records is one span, none
//! lost, each transaction parenting its statements.

use std::{process::Command, time::Duration};

use dbtel_tests::{
    mysql_spans::{connections_after, dump, first_word, last_connection, pair_with_log, statement_spans},
    require_root, run_agent, GeneralLog, MariaDb, Receiver, Span,
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
        "--table-size=1000",
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

#[test]
fn sysbench_oltp_read_write_every_statement_one_span() {
    require_root();
    let db = MariaDb::start();
    db.cli("create database sbtest");
    let prepare = Command::new("sysbench").args(sysbench_args(&db)).arg("prepare").output().expect("sysbench (cargo xtask setup)");
    assert!(prepare.status.success(), "{}", String::from_utf8_lossy(&prepare.stderr));
    let before = last_connection(&db.general_log());

    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();
    let mut args: Vec<String> = vec!["--otlp-endpoint".into(), endpoint, "--".into(), "sysbench".into()];
    args.extend(sysbench_args(&db));
    args.extend(["--threads=2", &format!("--events={EVENTS}"), "--time=0", "run"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_agent(&args, b"", Duration::from_secs(180));
    assert!(run.status.success(), "{run:?}");
    // Started held: the library is named as the loader maps it, before the program runs.
    let named = |l: &str| l.starts_with("dbtel: tracing ") && l.contains(" (sysbench) ") && l.ends_with("/libmariadb.so.3");
    assert!(run.stderr.lines().any(named), "{}", run.stderr);
    let done = run.stdout.lines().find_map(|l| l.trim().strip_prefix("transactions:")).and_then(|r| r.split_whitespace().next());
    assert_eq!(done, Some(EVENTS.to_string().as_str()), "{}", run.stdout);

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
        // Operation and collection as logged; a prepare is named after what it prepares.
        for (s, e) in &pairs {
            let what = format!("connection {conn}: {} {:?}", e.command, e.text);
            let op = first_word(&e.text);
            match e.command.as_str() {
                "Prepare" => {
                    let summary = table(&e.text).map_or(op.clone(), |t| format!("{op} {t}"));
                    assert_eq!(s.name, format!("PREPARE {summary}"), "{what}");
                }
                _ => {
                    assert_eq!(s.str("db.operation.name"), Some(op.as_str()), "{what}");
                    assert_eq!(s.name, table(&e.text).map_or(op.clone(), |t| format!("{op} {t}")), "{what}");
                }
            }
            assert_eq!(s.str("db.collection.name"), table(&e.text), "{what}");
            assert_eq!(s.str("db.namespace"), Some("sbtest"), "{what}");
            if e.command == "Execute" && s.status_code == 0 {
                // sysbench stores every result (mysql_stmt_store_result).
                if (e.text.starts_with("SELECT c FROM sbtest") && e.text.contains(" WHERE id=")) || e.text.starts_with("SELECT SUM(k)") {
                    assert_eq!(s.int("db.response.returned_rows"), Some(1), "{what}");
                } else if op == "SELECT" {
                    assert!(s.int("db.response.returned_rows").is_some_and(|n| (0..=100).contains(&n)), "{what}: {:?}", s.int("db.response.returned_rows"));
                } else if op == "INSERT" {
                    assert_eq!(s.int("db.response.affected_rows"), Some(1), "{what}");
                } else if op == "UPDATE" || op == "DELETE" {
                    assert!(s.int("db.response.affected_rows").is_some_and(|n| (0..=1).contains(&n)), "{what}");
                }
            }
        }

        // Transactions: one per BEGIN, parenting exactly its statements.
        let logged: Vec<GeneralLog> = pairs.iter().map(|p| p.1.clone()).collect();
        let groups = transactions(&logged);
        begins += groups.len();
        let mut txns: Vec<&Span> = all.iter().filter(|s| s.name == "transaction" && s.int("db.mysql.connection_id") == Some(conn as i64)).collect();
        txns.sort_by_key(|s| s.start_ns);
        txn_total += txns.len();
        assert_eq!(txns.len(), groups.len(), "connection {conn}: one transaction per BEGIN");
        let mut parented = 0;
        let mut after_error = false;
        for (k, (t, group)) in txns.iter().zip(&groups).enumerate() {
            let what = format!("connection {conn}: transaction {k}");
            let children: Vec<&Span> = spans.iter().copied().filter(|s| s.parent_span_id == t.span_id).collect();
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
            assert_eq!(t.str("db.transaction.outcome"), Some(if committed { "committed" } else { "rolled_back" }), "{what}\n{}", dump(&want));
            assert_eq!(t.int("db.transaction.statement_count"), Some(group.len() as i64), "{what}");
            assert_eq!(t.int("db.transaction.retry_count"), Some(i64::from(after_error)), "{what}");
            assert_eq!(t.str("db.system.name"), Some("mariadb"));
            assert_eq!(t.str("db.namespace"), Some("sbtest"));
            assert!(t.start_ns <= want[0].start_ns && want.last().unwrap().end_ns <= t.end_ns, "{what}: encloses its statements");
            let last_error = want.last().unwrap().str("db.response.status_code");
            after_error = !committed && matches!(last_error, Some("1213" | "1205"));
        }
        // Outside transactions: the prepares only.
        let roots: Vec<&Span> = spans.iter().copied().filter(|s| s.parent_span_id.is_empty()).collect();
        assert_eq!(roots.len(), spans.len() - parented);
        assert!(roots.iter().all(|s| s.str("db.operation.name") == Some("PREPARE")), "{}", dump(&roots));
    }
    let executes = log.iter().filter(|e| conns.contains(&e.connection) && e.command == "Execute").count();
    let prepares = log.iter().filter(|e| conns.contains(&e.connection) && e.command == "Prepare").count();
    assert_eq!(prepares, 2 * 20, "each thread prepares BEGIN, COMMIT and 9 statements per table");
    assert!(executes >= EVENTS * 20, "{executes}");
    assert!(begins >= EVENTS);
    assert_eq!(txn_total, begins);
    assert_eq!(all.len(), statements + txn_total, "no other span");
    let total = all.len();
    assert!(run.summary().starts_with(&format!("dbtel: {total} spans exported, 0 failed to export, 0 lost in the export queue")), "{}", run.summary());
    assert!(run.summary().contains(" 0 lost in the ring buffer"), "{}", run.summary());
}
