//! Client transactions of a psycopg2 program: one span per transaction,
//! parenting its statements; outcome, aborted state, savepoints, idle time,
//! and a serialization failure retried.

use std::{
    io::{BufRead, Write},
    process::Stdio,
    time::Duration,
};

use dbtel_tests::{otlp::Value, require_root, Agent, Cluster, PyProgram, Receiver, Span};

/// Runs tests/py/txn.py traced by PID; returns its spans and what it printed.
fn run_script(pg: &Cluster) -> (Vec<Span>, Vec<String>) {
    let rx = Receiver::start();
    let p = PyProgram::start("txn.py", &pg.dsn("postgres"));
    let (pid, mut child, out) = (p.pid(), p.child, p.out);
    let agent = Agent::start(
        &[
            "--otlp-endpoint",
            &rx.http_endpoint(),
            "--pid",
            &pid.to_string(),
        ],
        Stdio::null(),
    );
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let printed: Vec<String> = out.lines().map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success());
    let run = agent.wait(Duration::from_secs(20));
    assert!(run.status.success(), "{run:?}");
    let mut spans = rx.spans_of(pid);
    spans.sort_by_key(|s| s.start_ns);
    assert!(
        run.summary()
            .starts_with(&format!("dbtel: {} spans exported, 0 failed", spans.len())),
        "{}",
        run.summary()
    );
    (spans, printed)
}

fn bool_attr(s: &Span, k: &str) -> Option<bool> {
    match s.attrs.get(k) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    }
}

fn f64_attr(s: &Span, k: &str) -> Option<f64> {
    match s.attrs.get(k) {
        Some(Value::Double(d)) => Some(*d),
        _ => None,
    }
}

/// A transaction as expected: its statements' texts, outcome, aborted flag,
/// error.type, event names, retry count.
struct Want {
    texts: &'static [&'static str],
    outcome: &'static str,
    aborted: bool,
    error: Option<&'static str>,
    events: &'static [&'static str],
    retry: i64,
}

const STARTED: &str = "transaction.started";
const COMMITTED: &str = "transaction.committed";
const ROLLED_BACK: &str = "transaction.rolled_back";
const SERIALIZABLE_BEGIN: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";

/// Transactions of the script in start order (the other connection's one
/// starts inside our first serializable attempt).
const WANT: &[Want] = &[
    Want {
        texts: &[
            "BEGIN",
            "insert into accounts values (?, ?)",
            "savepoint sp1",
            "update accounts set balance = balance + ? where id = ?",
            "release savepoint sp1",
            "COMMIT",
        ],
        outcome: "committed",
        aborted: false,
        error: None,
        events: &[
            STARTED,
            "transaction.savepoint",
            "transaction.savepoint_released",
            COMMITTED,
        ],
        retry: 0,
    },
    Want {
        texts: &[
            "BEGIN",
            "select balance from accounts where id = ?",
            "COMMIT",
        ],
        outcome: "committed",
        aborted: false,
        error: None,
        events: &[STARTED, COMMITTED],
        retry: 0,
    },
    Want {
        texts: &["BEGIN", "select ?/?", "COMMIT"],
        outcome: "rolled_back",
        aborted: true,
        error: Some("22012"),
        events: &[STARTED, "transaction.aborted", ROLLED_BACK],
        retry: 0,
    },
    Want {
        texts: &["BEGIN", "delete from accounts where id = ?", "ROLLBACK"],
        outcome: "rolled_back",
        aborted: false,
        error: None,
        events: &[STARTED, ROLLED_BACK],
        retry: 0,
    },
    Want {
        texts: &[
            SERIALIZABLE_BEGIN,
            "select balance from accounts where id = ?",
            "update accounts set balance = balance + ? where id = ?",
            "ROLLBACK",
        ],
        outcome: "rolled_back",
        aborted: true,
        error: Some("40001"),
        events: &[STARTED, "transaction.aborted", ROLLED_BACK],
        retry: 0,
    },
    // The other connection, committing between our read and our write.
    Want {
        texts: &[
            "BEGIN",
            "update accounts set balance = balance - ? where id = ?",
            "COMMIT",
        ],
        outcome: "committed",
        aborted: false,
        error: None,
        events: &[STARTED, COMMITTED],
        retry: 0,
    },
    Want {
        texts: &[
            SERIALIZABLE_BEGIN,
            "select balance from accounts where id = ?",
            "update accounts set balance = balance + ? where id = ?",
            "COMMIT",
        ],
        outcome: "committed",
        aborted: false,
        error: None,
        events: &[STARTED, COMMITTED],
        retry: 1,
    },
];

#[test]
fn transactions_parent_their_statements() {
    require_root();
    let pg = Cluster::start();
    pg.psql(
        "postgres",
        "create table accounts (id int primary key, balance int)",
    );
    pg.psql("postgres", "insert into accounts values (1, 100)");
    let (spans, printed) = run_script(&pg);
    assert_eq!(printed, ["22012", "40001", "done"]);
    let dump = || {
        spans
            .iter()
            .map(|s| format!("{} {:?} {:?}", s.name, s.text(), s.parent_span_id))
            .collect::<Vec<_>>()
            .join("\n")
    };

    let (txns, queries): (Vec<&Span>, Vec<&Span>) =
        spans.iter().partition(|s| s.name == "transaction");
    assert_eq!(txns.len(), WANT.len(), "{}", dump());
    for (t, w) in txns.iter().zip(WANT) {
        let what = format!("transaction {:?}", w.texts);
        assert_eq!(t.kind, 3, "CLIENT");
        assert!(t.parent_span_id.is_empty(), "{what}: a root");
        let children: Vec<&&Span> = queries
            .iter()
            .filter(|q| q.parent_span_id == t.span_id)
            .collect();
        let texts: Vec<&str> = children.iter().map(|q| q.text()).collect();
        assert_eq!(texts, w.texts, "{what}\n{}", dump());
        assert!(
            children.iter().all(|q| q.trace_id == t.trace_id),
            "{what}: one trace"
        );
        assert!(
            t.start_ns <= children[0].start_ns && children.last().unwrap().end_ns <= t.end_ns,
            "{what}: encloses them"
        );
        assert_eq!(t.str("db.system.name"), Some("postgresql"));
        assert_eq!(t.str("db.transaction.outcome"), Some(w.outcome), "{what}");
        assert_eq!(
            bool_attr(t, "db.transaction.aborted"),
            Some(w.aborted),
            "{what}"
        );
        assert_eq!(
            t.int("db.transaction.statement_count"),
            Some(w.texts.len() as i64),
            "{what}"
        );
        assert_eq!(t.int("db.transaction.retry_count"), Some(w.retry), "{what}");
        assert_eq!(t.str("error.type"), w.error, "{what}");
        assert_eq!(
            t.status_code,
            if w.error.is_some() { 2 } else { 0 },
            "{what}"
        );
        assert_eq!(t.event_names(), w.events, "{what}");
        assert_eq!(t.str("db.namespace"), Some("postgres"));
        assert_eq!(t.str("network.transport"), Some("unix"));
        assert!(t.int("db.postgresql.backend.pid").is_some_and(|p| p > 0));
    }

    let savepoint = &txns[0].events[1];
    assert_eq!(
        savepoint.attrs.get("db.transaction.savepoint.name"),
        Some(&Value::Str("sp1".into()))
    );
    let idle = f64_attr(txns[1], "db.transaction.idle_time_ms").unwrap();
    assert!(
        (280.0..2000.0).contains(&idle),
        "idle in transaction: {idle} ms"
    );
    assert!(f64_attr(txns[0], "db.transaction.idle_time_ms").unwrap() < 280.0);
    let aborted = &txns[2].events[1];
    assert_eq!(
        aborted.attrs.get("db.response.status_code"),
        Some(&Value::Str("22012".into()))
    );
    // The other connection's transaction ran on its own backend.
    assert_ne!(
        txns[5].int("db.postgresql.backend.pid"),
        txns[4].int("db.postgresql.backend.pid")
    );
    assert_eq!(
        txns[6].int("db.postgresql.backend.pid"),
        txns[4].int("db.postgresql.backend.pid")
    );

    // Autocommit statements are roots of traces of their own; nothing else is.
    let roots: Vec<&&Span> = queries
        .iter()
        .filter(|q| q.parent_span_id.is_empty())
        .collect();
    let texts: Vec<&str> = roots.iter().map(|q| q.text()).collect();
    assert_eq!(texts, ["select ?", "select ?"], "{}", dump());
    assert_ne!(roots[0].trace_id, roots[1].trace_id);
    assert!(roots
        .iter()
        .all(|r| txns.iter().all(|t| t.trace_id != r.trace_id)));
    assert_eq!(
        queries.len(),
        WANT.iter().map(|w| w.texts.len()).sum::<usize>() + 2
    );
}

#[test]
fn prepare_transaction_ends_the_clients_block_as_prepared() {
    require_root();
    let pg = Cluster::start_logged_with(&["max_prepared_transactions=5"]);
    pg.psql("postgres", "create table twophase (id int)");
    let rx = Receiver::start();
    let psql = pg.bin("psql").display().to_string();
    let mut args = vec![
        "--otlp-endpoint".to_string(),
        rx.http_endpoint(),
        "--".into(),
        psql,
    ];
    args.extend(pg.conn_args());
    args.extend(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"].map(String::from));
    for sql in [
        "begin",
        "insert into twophase values (1)",
        "prepare transaction 'g1'",
        "commit prepared 'g1'",
    ] {
        args.extend(["-c".to_string(), sql.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = dbtel_tests::run_agent(&args, b"", Duration::from_secs(30));
    assert!(run.status.success(), "{run:?}");
    let logged: Vec<String> = pg
        .logged_statements()
        .into_iter()
        .map(|(_, t)| t)
        .filter(|t| !t.contains("create table"))
        .collect();
    assert_eq!(
        logged,
        [
            "begin",
            "insert into twophase values (1)",
            "prepare transaction 'g1'",
            "commit prepared 'g1'"
        ]
    );
    let spans = rx.spans();
    let txns: Vec<&Span> = spans.iter().filter(|s| s.name == "transaction").collect();
    assert_eq!(txns.len(), 1, "{spans:?}");
    let t = txns[0];
    assert_eq!(t.str("db.transaction.outcome"), Some("prepared"));
    assert_eq!(t.int("db.transaction.statement_count"), Some(3));
    assert_eq!(t.status_code, 0);
    assert_eq!(t.event_names().last(), Some(&"transaction.prepared"));
    let mut under: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == t.span_id)
        .collect();
    under.sort_by_key(|s| s.start_ns);
    let under: Vec<&str> = under.iter().map(|s| s.text()).collect();
    assert_eq!(
        under,
        [
            "begin",
            "insert into twophase values (?)",
            "prepare transaction ?"
        ]
    );
    let insert = spans
        .iter()
        .find(|s| s.text() == "insert into twophase values (?)")
        .unwrap();
    assert_eq!(
        insert.int("db.response.affected_rows"),
        Some(1),
        "INSERT 0 1"
    );
    let commit = spans
        .iter()
        .find(|s| s.text() == "commit prepared ?")
        .expect("COMMIT PREPARED span");
    assert!(
        commit.parent_span_id.is_empty(),
        "COMMIT PREPARED runs outside any block"
    );
}

#[test]
fn sql_level_execute_is_named_and_described_by_its_prepared_statement() {
    require_root();
    let pg = Cluster::start_logged();
    pg.psql("postgres", "create table prep (id int, v text)");
    let rx = Receiver::start();
    let psql = pg.bin("psql").display().to_string();
    let pm = pg.postmaster_pid().to_string();
    let mut args = vec![
        "--otlp-endpoint".to_string(),
        rx.http_endpoint(),
        "--pid".into(),
        pm,
        "--".into(),
        psql,
    ];
    args.extend(pg.conn_args());
    args.extend(["-X", "-q", "-d", "postgres"].map(String::from));
    for sql in [
        "PREPARE getone (int) AS select v from prep where id = $1",
        "EXECUTE getone(1)",
        "DEALLOCATE getone",
    ] {
        args.extend(["-c".to_string(), sql.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = dbtel_tests::run_agent(&args, b"", Duration::from_secs(30));
    assert!(run.status.success(), "{run:?}");
    let logged: Vec<String> = pg
        .logged_statements()
        .into_iter()
        .map(|(_, t)| t)
        .filter(|t| t.contains("getone"))
        .collect();
    assert_eq!(
        logged,
        [
            "PREPARE getone (int) AS select v from prep where id = $1",
            "EXECUTE getone(1)",
            "DEALLOCATE getone"
        ]
    );
    let spans = rx.spans();
    let executes: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.str("db.postgresql.statement.name") == Some("getone") && s.name == "SELECT prep"
        })
        .collect();
    assert_eq!(
        executes.len(),
        2,
        "the client's and the server's EXECUTE: {spans:?}"
    );
    for s in &executes {
        assert_eq!(
            (s.text(), s.str("db.collection.name")),
            ("select v from prep where id = $1", Some("prep"))
        );
    }
    let (client, server) = (
        executes.iter().find(|s| s.kind == 3).unwrap(),
        executes.iter().find(|s| s.kind == 2).unwrap(),
    );
    assert_eq!(server.parent_span_id, client.span_id);
}
