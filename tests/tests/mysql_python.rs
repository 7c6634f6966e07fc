//! MySQLdb (mysqlclient on libmariadb.so.3) traced by PID beside an untraced
//! twin: autocommit-off transactions, an error inside one, a deadlock whose
//! victim retries; and PyMySQL (no client library), which dbtel refuses.

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use dbtel_tests::{
    drivers::{self, App},
    mysql_spans::{dump, pair_with_log, statement_spans},
    require_root, run_agent, Agent, MariaDb, Receiver, Span,
};

/// What mysqldb_app.py printed: connection ids by name, the deadlock victim.
struct Printed {
    conns: BTreeMap<String, u64>,
    victim: String,
}

fn parse(lines: &[String]) -> Printed {
    let mut conns = BTreeMap::new();
    let mut victim = String::new();
    for l in lines {
        let f: Vec<&str> = l.split(' ').collect();
        match f[..] {
            ["conn", name, id] => {
                conns.insert(name.to_string(), id.parse().unwrap());
            }
            ["deadlock", name] => victim = name.to_string(),
            ["error", "1146"] | ["done"] => {}
            _ => panic!("unexpected line {l:?} in {lines:?}"),
        }
    }
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");
    assert!(lines.contains(&"error 1146".to_string()));
    assert!(
        victim == "b" || victim == "c",
        "one deadlock victim: {lines:?}"
    );
    assert_eq!(conns.len(), 3, "{lines:?}");
    Printed { conns, victim }
}

fn setup(db: &MariaDb, database: &str) {
    db.cli(&format!(
        "create database {database}; create table {database}.accounts (id int primary key, balance int, note varchar(64)); \
         insert into {database}.accounts values (1, 100, 'one'), (2, 200, 'two')"
    ));
}

/// A transaction as expected: its statements' texts (obfuscated), outcome, retry count.
struct Want {
    texts: &'static [&'static str],
    outcome: &'static str,
    retry: i64,
}

const MINUS: &str = "update accounts set balance = balance - ? where id = ?";
const PLUS: &str = "update accounts set balance = balance + ? where id = ?";

const MAIN: &[Want] = &[
    Want {
        texts: &["insert into accounts values (?, ?, ?)", "COMMIT"],
        outcome: "committed",
        retry: 0,
    },
    Want {
        texts: &[
            "select balance from accounts where id = ?",
            "update accounts set balance = balance + ?, note = ? where id = ?",
            "COMMIT",
        ],
        outcome: "committed",
        retry: 0,
    },
    Want {
        texts: &["delete from accounts where id = ?", "ROLLBACK"],
        outcome: "rolled_back",
        retry: 0,
    },
    Want {
        texts: &[
            "select balance from accounts where id = ?",
            "select * from no_such_table",
            "ROLLBACK",
        ],
        outcome: "rolled_back",
        retry: 0,
    },
];
const VICTIM: &[Want] = &[
    // The deadlock rolled it back: the client's ROLLBACK after it finds none.
    Want {
        texts: &[MINUS, PLUS],
        outcome: "rolled_back",
        retry: 0,
    },
    Want {
        texts: &[MINUS, PLUS, "COMMIT"],
        outcome: "committed",
        retry: 1,
    },
];
const WINNER: &[Want] = &[Want {
    texts: &[MINUS, PLUS, "COMMIT"],
    outcome: "committed",
    retry: 0,
}];

/// Every connection opens with these, before autocommit is off: no transaction.
const SESSION_SETUP: &[&str] = &["SET NAMES utf8mb4", "SET autocommit=?"];
const VICTIM_ROOTS: &[&str] = &["SET NAMES utf8mb4", "SET autocommit=?", "ROLLBACK"];
/// main's: with autocommit off, a statement that reads no table starts no
/// transaction on the server (SERVER_STATUS_IN_TRANS stays clear), so
/// neither it nor the COMMIT after it is in one.
const MAIN_ROOTS: &[&str] = &[
    "SET NAMES utf8mb4",
    "SET autocommit=?",
    "select sleep(?)",
    "COMMIT",
];

fn assert_transactions(
    all: &[Span],
    statements: &[&Span],
    conn: u64,
    want: &[Want],
    roots: &[&str],
    database: &str,
) {
    let mut txns: Vec<&Span> = all
        .iter()
        .filter(|s| s.name == "transaction" && s.int("db.mysql.connection_id") == Some(conn as i64))
        .collect();
    txns.sort_by_key(|s| s.start_ns);
    let listing = || format!("{}\ntransactions:\n{}", dump(statements), dump(&txns));
    assert_eq!(txns.len(), want.len(), "connection {conn}\n{}", listing());
    for (t, w) in txns.iter().zip(want) {
        let what = format!("connection {conn}: transaction {:?}", w.texts);
        let children: Vec<&&Span> = statements
            .iter()
            .filter(|s| s.parent_span_id == t.span_id)
            .collect();
        let texts: Vec<&str> = children.iter().map(|s| s.text()).collect();
        assert_eq!(texts, w.texts, "{what}\n{}", listing());
        assert!(
            children.iter().all(|c| c.trace_id == t.trace_id),
            "{what}: one trace"
        );
        assert!(t.parent_span_id.is_empty(), "{what}: a root");
        assert!(
            t.start_ns <= children[0].start_ns && children.last().unwrap().end_ns <= t.end_ns,
            "{what}: encloses them"
        );
        assert_eq!(t.kind, 3, "{what}");
        assert_eq!(t.str("db.system.name"), Some("mariadb"), "{what}");
        assert_eq!(t.str("db.namespace"), Some(database), "{what}");
        assert_eq!(t.str("db.transaction.outcome"), Some(w.outcome), "{what}");
        assert_eq!(
            t.int("db.transaction.statement_count"),
            Some(w.texts.len() as i64),
            "{what}"
        );
        assert_eq!(t.int("db.transaction.retry_count"), Some(w.retry), "{what}");
    }
    // Everything else is a root of its own.
    let got: Vec<&str> = statements
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .map(|s| s.text())
        .collect();
    assert_eq!(got, roots, "connection {conn}\n{}", listing());
}

#[test]
fn mysqldb_traced_by_pid_beside_an_untraced_twin() {
    require_root();
    let db = MariaDb::start();
    setup(&db, "app_a");
    setup(&db, "app_b");
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();

    let mut traced = App::start("mysqldb_app.py", &db, &["app_a"]);
    let mut twin = App::start("mysqldb_app.py", &db, &["app_b"]);
    let (pid, twin_pid) = (traced.pid, twin.pid);
    let agent = Agent::start(
        &["--otlp-endpoint", &endpoint, "--pid", &pid.to_string()],
        Stdio::null(),
    );
    let line = agent
        .stderr_lines
        .iter()
        .find(|l| l.starts_with("dbtel: tracing"))
        .unwrap();
    assert!(
        line.starts_with(&format!("dbtel: tracing pid {pid} (python"))
            && line.contains(" probes on ")
            && line.ends_with("libmariadb.so.3"),
        "{line}"
    );

    traced.go();
    twin.go();
    let printed = parse(&traced.finish());
    let twin_printed = parse(&twin.finish());
    // The last traced process has exited: the agent exits by itself.
    let run = agent.wait(Duration::from_secs(30));
    assert!(run.status.success(), "{run:?}");

    let mine: Vec<u64> = printed.conns.values().copied().collect();
    let twins: Vec<u64> = twin_printed.conns.values().copied().collect();
    db.wait_quit(&[mine.clone(), twins.clone()].concat());
    let log = db.general_log();
    assert!(
        rx.spans_of(twin_pid).is_empty(),
        "an untraced process on the same libmariadb yields nothing"
    );
    let all = rx.spans_of(pid);
    assert_eq!(
        all.len(),
        rx.spans().len(),
        "every span is the traced process's"
    );
    let on_twins = all
        .iter()
        .filter(|s| {
            s.int("db.mysql.connection_id")
                .is_some_and(|c| twins.contains(&(c as u64)))
        })
        .count();
    assert_eq!(on_twins, 0);

    let socket = db.socket().display().to_string();
    let mut statements_total = 0;
    for (name, &conn) in &printed.conns {
        let spans = statement_spans(&all, conn);
        let pairs = pair_with_log(&spans, &log, conn, &|_| "mysql_real_query");
        statements_total += pairs.len();
        for (s, logged) in &pairs {
            let what = format!("{name} ({conn}): {:?}", logged.text);
            assert_eq!(s.str("db.namespace"), Some("app_a"), "{what}");
            assert_eq!(s.str("server.address"), Some(socket.as_str()), "{what}");
            assert_eq!(s.str("network.transport"), Some("unix"), "{what}");
            assert_eq!(s.int("process.pid"), Some(pid as i64), "{what}");
            assert!(
                s.resource_str("process.executable.name")
                    .is_some_and(|n| n.starts_with("python")),
                "{what}"
            );
        }
        let (want, roots) = match name.as_str() {
            "main" => (MAIN, MAIN_ROOTS),
            n if n == printed.victim => (VICTIM, VICTIM_ROOTS),
            _ => (WINNER, SESSION_SETUP),
        };
        assert_transactions(&all, &spans, conn, want, roots, "app_a");
    }

    // The failing statement, the deadlock, the lock wait, the sleep.
    let main = statement_spans(&all, printed.conns["main"]);
    let missing = main
        .iter()
        .find(|s| s.text() == "select * from no_such_table")
        .unwrap();
    assert_eq!(missing.status_code, 2);
    assert_eq!(
        (
            missing.str("db.response.status_code"),
            missing.str("error.type")
        ),
        (Some("1146"), Some("1146"))
    );
    assert_eq!(missing.str("db.mysql.sqlstate"), Some("42S02"));
    let insert = main.iter().find(|s| s.name == "INSERT accounts").unwrap();
    assert_eq!(insert.int("db.response.affected_rows"), Some(1));
    let select = main.iter().find(|s| s.name == "SELECT accounts").unwrap();
    assert_eq!(select.int("db.response.returned_rows"), Some(1));
    let sleep = main.iter().find(|s| s.text() == "select sleep(?)").unwrap();
    assert!(
        sleep.duration() >= Duration::from_millis(200) && sleep.duration() < Duration::from_secs(2),
        "{:?}",
        sleep.duration()
    );

    let victim = statement_spans(&all, printed.conns[&printed.victim]);
    let deadlocked: Vec<&&Span> = victim.iter().filter(|s| s.status_code == 2).collect();
    assert_eq!(deadlocked.len(), 1, "{}", dump(&victim));
    let d = deadlocked[0];
    assert_eq!(
        (
            d.text(),
            d.str("db.response.status_code"),
            d.str("error.type")
        ),
        (PLUS, Some("1213"), Some("1213"))
    );
    assert_eq!(d.str("db.mysql.sqlstate"), Some("40001"));
    // b's second update waits for c's first lock (c pauses 0.3 s before closing the cycle).
    let b = statement_spans(&all, printed.conns["b"]);
    let waited = b.iter().find(|s| s.text() == PLUS).unwrap();
    assert!(
        waited.duration() >= Duration::from_millis(250),
        "b's update waited for the lock: {:?}",
        waited.duration()
    );

    let txns = all.iter().filter(|s| s.name == "transaction").count();
    assert_eq!(txns, MAIN.len() + VICTIM.len() + WINNER.len());
    assert_eq!(
        all.len(),
        statements_total + txns,
        "no other span: {}",
        dump(&all.iter().collect::<Vec<_>>())
    );
    assert!(
        run.summary().starts_with(&format!(
            "dbtel: {} spans exported, 0 failed to export, 0 lost in the export queue",
            all.len()
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
fn pymysql_has_no_client_library_to_trace() {
    require_root();
    let db = MariaDb::start();
    setup(&db, "app_p");
    let rx = Receiver::start();
    let endpoint = rx.http_endpoint();

    // By PID: refused, in one line saying why.
    let mut app = App::start("pymysql_app.py", &db, &["app_p"]);
    let pid = app.pid.to_string();
    let run = run_agent(
        &["--otlp-endpoint", &endpoint, "--pid", &pid],
        b"",
        Duration::from_secs(30),
    );
    assert!(!run.status.success(), "{run:?}");
    assert!(
        run.stderr
            .contains("uses no client library dbtel traces (libpq, libmariadb, libmysqlclient)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&pid),
        "the refusal names the process: {}",
        run.stderr
    );
    // The application itself is untouched and works.
    app.go();
    let printed = app.finish();
    assert_eq!(
        printed.last().map(String::as_str),
        Some("done"),
        "{printed:?}"
    );

    // Under `--`: the command runs and exits; the agent says at exit that it made no client-library call.
    let python = drivers::python()
        .get_program()
        .to_str()
        .unwrap()
        .to_string();
    let program = drivers::program("pymysql_app.py").display().to_string();
    let socket = db.socket().display().to_string();
    let run = run_agent(
        &[
            "--otlp-endpoint",
            &endpoint,
            "--",
            &python,
            &program,
            &socket,
            "app_p",
        ],
        b"go\n",
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "{run:?}");
    assert!(run.stdout.ends_with("done\n"), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("made no call into a database client library"),
        "{}",
        run.stderr
    );
    assert!(rx.spans().is_empty(), "{:?}", rx.spans());
    // Both runs really talked to the server.
    let updates = db
        .general_log()
        .iter()
        .filter(|e| {
            e.command == "Query" && e.text == "update accounts set note = 'pymysql' where id = 2"
        })
        .count();
    assert_eq!(updates, 2);
}
