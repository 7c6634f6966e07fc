//! The MariaDB server traced by PID: a SERVER span for every statement of
//! every client (the CLI, PyMySQL: no client library), checked against the
//! general log; joined to the client's spans when the client is traced too;
//! row, table and metadata lock waits under the statement that waited, with
//! their outcome; a second server on the host left alone; the same with
//! the server's pool of threads, which runs a connection's commands on
//! whichever worker thread is free.

use std::{process::Stdio, time::Duration};

use dbtel_tests::{
    drivers,
    mysql_spans::{
        connections_after, dump, is_server_statement, last_connection, pair_server_with_log,
        server_statement_spans,
    },
    require_root, run_agent, Agent, MariaDb, Receiver, Span,
};

const SERVER: i32 = 2;

fn prepare(db: &MariaDb) {
    db.cli("create database shop; create table shop.t (id int primary key, v int); insert into shop.t values (1, 0), (2, 0)");
}

/// The agent on `db`'s server, started before the clients.
fn trace_server(db: &MariaDb, rx: &Receiver) -> Agent {
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
    assert!(
        line.contains(&format!(
            "pid {pid} (mariadbd): 8 probes on /usr/sbin/mariadbd"
        )),
        "{line}"
    );
    agent
}

/// Runs pymysql_locks.py SCENARIO; returns (connection ids by name, errors by name).
fn locks(db: &MariaDb, scenario: &str) -> (Vec<(String, u64)>, Vec<(String, String)>) {
    let socket = db.socket().display().to_string();
    let out = drivers::python()
        .arg(drivers::program("pymysql_locks.py"))
        .args([socket.as_str(), "shop", scenario])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("done"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conns = Vec::new();
    let mut errors = Vec::new();
    for l in stdout.lines() {
        match l.split(' ').collect::<Vec<_>>()[..] {
            ["conn", name, id] => conns.push((name.to_string(), id.parse().unwrap())),
            ["error", name, errno] => errors.push((name.to_string(), errno.to_string())),
            _ => {}
        }
    }
    (conns, errors)
}

fn server_statements(spans: &[Span], conn: u64) -> Vec<&Span> {
    let mut v: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.kind == SERVER
                && s.int("db.mysql.connection_id") == Some(conn as i64)
                && s.name != "transaction"
                && !s.name.starts_with("lock wait")
        })
        .collect();
    v.sort_by_key(|s| s.start_ns);
    v
}

fn waits_under<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.name.starts_with("lock wait") && s.parent_span_id == parent.span_id)
        .collect()
}

fn conn_of(conns: &[(String, u64)], name: &str) -> u64 {
    conns.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn every_statement_of_every_client_is_a_server_span() {
    require_root();
    let db = MariaDb::start();
    prepare(&db);
    let before = dbtel_tests::mysql_spans::last_connection(&db.general_log());
    let rx = Receiver::start();
    let agent = trace_server(&db, &rx);
    // The CLI (its client side not traced here) and PyMySQL.
    let mut cli = std::process::Command::new("mariadb")
        .args(db.client_args())
        .arg("--force")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(cli.stdin.as_mut().unwrap(), b"use shop;\nselect v from t where id = 1;\nupdate t set v = 5 where id = 2;\nselect * from missing;\n").unwrap();
    let out = cli.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR 1146"),
        "{out:?}"
    );
    let (conns, errors) = locks(&db, "row");
    assert!(errors.is_empty(), "{errors:?}");
    // A PyMySQL session over TCP, in a database chosen at login: it prints
    // its connection id and its own port.
    let script = "import pymysql, sys, time\n\
                  c = pymysql.connect(host='127.0.0.1', port=int(sys.argv[1]), user='root', database='shop', autocommit=True)\n\
                  print(c.thread_id(), c._sock.getsockname()[1], flush=True)\n\
                  cur = c.cursor()\ncur.execute('select v from t where id = 2')\ntime.sleep(0.1)\n\
                  cur.execute('select v from t where id = 1')\nc.close()\n";
    let out = drivers::python()
        .args(["-c", script, &db.port.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let (tcp_conn, tcp_port) = printed.trim().split_once(' ').expect("id port");
    let (tcp_conn, tcp_port): (u64, i64) = (tcp_conn.parse().unwrap(), tcp_port.parse().unwrap());
    std::thread::sleep(Duration::from_millis(800));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.summary()
            .contains("0 lost in the ring buffer, 0 undecodable"),
        "{}",
        run.summary()
    );
    let spans = rx.spans();
    let log = db.general_log();
    let (mut checked, mut tcp_sessions) = (0, 0);
    for conn in connections_after(&log, before) {
        // Each statement, and each COM_INIT_DB (a span `USE`, no text), in order.
        let logged: Vec<_> = log
            .iter()
            .filter(|e| {
                e.connection == conn
                    && (["Query", "Prepare", "Execute", "Init DB"].contains(&e.command.as_str()))
            })
            .collect();
        let got = server_statements(&spans, conn);
        let texts: Vec<&str> = got.iter().map(|s| s.text()).collect();
        let want: Vec<String> = logged
            .iter()
            .map(|e| {
                if e.command == "Init DB" {
                    String::new()
                } else {
                    dbtel_tests::expected_mysql_text(&e.text)
                }
            })
            .collect();
        assert_eq!(texts, want, "connection {conn}\n{}", dump(&got));
        for s in &got {
            assert_eq!(s.str("db.system.name"), Some("mariadb"));
            assert_eq!(s.resource_int("process.pid"), Some(db.pid() as i64));
        }
        // Who the session is: the catalog's PROCESSLIST, looked up at its
        // login, or for the CLI's (a millisecond, shorter than the lookup)
        // what end_connection said as it ended. The CLI chose its database
        // with `use shop`: checked from there on.
        let pymysql = conns.iter().any(|(_, c)| *c == conn) || conn == tcp_conn;
        let used = if pymysql {
            0
        } else {
            logged
                .iter()
                .position(|e| e.command == "Init DB")
                .expect("the CLI's use")
        };
        for (i, s) in got.iter().enumerate() {
            let what = dump(&[s]);
            assert_eq!(s.str("user.name"), Some("root"), "{what}");
            if i >= used {
                assert_eq!(s.str("db.namespace"), Some("shop"), "{what}");
            }
            if conn == tcp_conn {
                assert_eq!(s.str("network.transport"), Some("tcp"), "{what}");
                assert_eq!(
                    (s.str("client.address"), s.int("client.port")),
                    (Some("127.0.0.1"), Some(tcp_port)),
                    "{what}"
                );
                tcp_sessions += 1;
            } else {
                assert_eq!(s.str("network.transport"), Some("unix"), "{what}");
            }
        }
        checked += got.len();
    }
    assert!(checked >= 11, "{checked} statements checked");
    assert_eq!(tcp_sessions, 3, "its SET AUTOCOMMIT and both selects");
    // The failing statement: the server's own error number.
    let missing = spans
        .iter()
        .find(|s| s.kind == SERVER && s.text() == "select * from missing")
        .expect("the failing statement");
    assert_eq!(
        (
            missing.status_code,
            missing.str("db.response.status_code"),
            missing.str("error.type")
        ),
        (2, Some("1146"), Some("1146"))
    );
    // Its message's format from the server's errmsg.sys: no table name in it.
    assert_eq!(
        missing.status_message,
        "Table '%-.192s.%-.192s' doesn't exist"
    );
    // A's block: BEGIN, UPDATE, COMMIT in one server transaction.
    let a = conn_of(&conns, "A");
    let txns: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.kind == SERVER
                && s.name == "transaction"
                && s.int("db.mysql.connection_id") == Some(a as i64)
        })
        .collect();
    assert_eq!(txns.len(), 1, "{}", dump(&spans.iter().collect::<Vec<_>>()));
    assert_eq!(txns[0].str("db.transaction.outcome"), Some("committed"));
}

#[test]
fn check_says_what_it_would_trace_in_a_mariadb_server() {
    require_root();
    let db = MariaDb::start();
    let pid = db.pid().to_string();
    let run = run_agent(
        &["check", "--pid", &pid, "--no-otlp"],
        b"",
        Duration::from_secs(30),
    );
    assert!(run.status.success(), "{run:?}");
    let want = format!("ok    PID {pid} (mariadbd): MariaDB server /usr/sbin/mariadbd: 8 probe sites, THD layout decoded");
    assert!(
        run.stdout
            .lines()
            .chain(run.stderr.lines())
            .any(|l| l == want),
        "{run:?}"
    );
    // Its catalog, found by the server's own socket; this server has no metadata_lock_info.
    let socket = db.socket().display().to_string();
    let want = format!(
        "ok    MariaDB server {pid}: catalog reachable (unix socket {socket} as root (the traced server's socket)); \
         metadata lock waits will not name their blockers: the server has no information_schema.METADATA_LOCK_INFO"
    );
    assert!(
        run.stdout.lines().any(|l| l.starts_with(&want)),
        "{}",
        run.stdout
    );
    // --all finds the same server (and its catalog) among the host's processes.
    let all = run_agent(
        &["check", "--all", "--no-otlp"],
        b"",
        Duration::from_secs(30),
    );
    let server = format!("ok    PID {pid} (mariadbd): MariaDB server /usr/sbin/mariadbd: 8 probe sites, THD layout decoded");
    assert!(all.stdout.lines().any(|l| l == server), "{all:?}");
    assert!(
        all.stdout.lines().any(|l| l.starts_with(&want)),
        "{}",
        all.stdout
    );
    // Selectors narrow it as they narrow the agent's --all: no probe sites, no catalog.
    let other = run_agent(
        &["check", "--all", "--exe", "postgres", "--no-otlp"],
        b"",
        Duration::from_secs(30),
    );
    let skipped =
        format!("ok    PID {pid} (mariadbd): MariaDB server /usr/sbin/mariadbd: not selected");
    assert!(other.stdout.lines().any(|l| l == skipped), "{other:?}");
    assert!(
        !other
            .stdout
            .contains(&format!("MariaDB server {pid}: catalog")),
        "{other:?}"
    );
    // An option file pointing elsewhere: said, and tracing would still work.
    let dir = tempfile::tempdir().unwrap();
    let cnf = dir.path().join("my.cnf");
    std::fs::write(&cnf, "[client]\nsocket=/nonexistent/mysqld.sock\n").unwrap();
    let run = run_agent(
        &[
            "check",
            "--pid",
            &pid,
            "--no-otlp",
            "--catalog-config",
            cnf.to_str().unwrap(),
        ],
        b"",
        Duration::from_secs(30),
    );
    assert!(run.status.success(), "{run:?}");
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("warn  MariaDB server {pid}: ")))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(
        line.contains("/nonexistent/mysqld.sock")
            && line.ends_with(
                "lock waits will not name their blockers, statements their user and database"
            ),
        "{line}"
    );
}

#[test]
fn a_row_lock_wait_is_a_child_of_the_statement_that_waited() {
    require_root();
    let db = MariaDb::start();
    prepare(&db);
    let rx = Receiver::start();
    let agent = trace_server(&db, &rx);
    let (conns, _) = locks(&db, "row");
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.interrupt().status.success());
    let spans = rx.spans();
    let b = conn_of(&conns, "B");
    let update = server_statements(&spans, b)
        .into_iter()
        .find(|s| s.text().starts_with("update t"))
        .expect("B's update");
    let waits = waits_under(&spans, update);
    assert_eq!(
        waits.len(),
        1,
        "{}",
        dump(&spans.iter().collect::<Vec<_>>())
    );
    let w = waits[0];
    assert_eq!(w.str("db.mysql.lock.type"), Some("row"));
    assert_eq!(w.str("db.mysql.lock.outcome"), Some("granted"));
    assert!(
        w.duration() >= Duration::from_millis(350) && w.duration() < Duration::from_millis(1500),
        "{:?}",
        w.duration()
    );
    assert!(
        update.start_ns <= w.start_ns && w.end_ns <= update.end_ns,
        "inside the update"
    );
    assert_eq!(w.trace_id, update.trace_id);
    // Who blocked it: A, idle in its transaction after its update (from the
    // catalog's INNODB_LOCK_WAITS, looked up while B waited).
    let a = conn_of(&conns, "A");
    assert_eq!(
        w.int("db.mysql.blocker.connection_id"),
        Some(a as i64),
        "{}",
        dump(&[w])
    );
    assert_eq!(
        w.str("db.mysql.blocker.query"),
        Some("update t set v = v + ? where id = ?")
    );
    assert_eq!(w.str("db.mysql.blocker.state"), Some("Sleep"));
    assert_eq!(
        (
            w.str("db.mysql.lock.mode"),
            w.str("db.mysql.blocker.lock_mode")
        ),
        (Some("X"), Some("X"))
    );
    assert_eq!(
        (w.str("db.mysql.lock.table"), w.str("db.mysql.lock.index")),
        (Some("shop.t"), Some("PRIMARY"))
    );
    let age = w.int("db.mysql.blocker.transaction_age_ms").unwrap();
    assert!(
        (100..600).contains(&age),
        "A's transaction began 0.15 s before B's update: {age}"
    );
    // Linked to A's transaction, as the server ran it.
    let a_txn = spans
        .iter()
        .find(|s| s.name == "transaction" && s.int("db.mysql.connection_id") == Some(a as i64))
        .expect("A's transaction");
    assert_eq!(w.links.len(), 1, "{:?}", w.links);
    assert_eq!(
        (&w.links[0].trace_id, &w.links[0].span_id),
        (&a_txn.trace_id, &a_txn.span_id)
    );
    // The agent's catalog session is in the server's log, and makes no span.
    let catalog = dbtel_tests::mysql_spans::catalog_connections(&db.general_log());
    assert_eq!(catalog.len(), 1, "one catalog session");
    assert!(spans.iter().all(|s| s
        .int("db.mysql.connection_id")
        .is_none_or(|c| !catalog.contains(&(c as u64)))));
    // A's update did not wait.
    assert!(server_statements(&spans, a)
        .iter()
        .all(|s| waits_under(&spans, s).is_empty()));
}

#[test]
fn lock_wait_timeout_deadlock_and_metadata_lock_outcomes() {
    require_root();
    // METADATA_LOCK_INFO names a metadata lock's holders.
    let db = MariaDb::start_with(&["--plugin-load-add=metadata_lock_info"]);
    prepare(&db);
    let rx = Receiver::start();
    let agent = trace_server(&db, &rx);
    let (timeout_conns, timeout_errors) = locks(&db, "timeout");
    assert_eq!(timeout_errors, [("B".to_string(), "1205".to_string())]);
    let (deadlock_conns, deadlock_errors) = locks(&db, "deadlock");
    assert_eq!(deadlock_errors.len(), 1, "{deadlock_errors:?}");
    assert_eq!(deadlock_errors[0].1, "1213");
    let (mdl_conns, mdl_errors) = locks(&db, "metadata");
    assert!(mdl_errors.is_empty(), "{mdl_errors:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.interrupt().status.success());
    let spans = rx.spans();
    let all = || dump(&spans.iter().collect::<Vec<_>>());

    let b = conn_of(&timeout_conns, "B");
    let update = server_statements(&spans, b)
        .into_iter()
        .find(|s| s.text().starts_with("update t"))
        .expect("B's update");
    assert_eq!(update.str("error.type"), Some("1205"));
    let w = waits_under(&spans, update);
    assert_eq!(w.len(), 1, "{}", all());
    assert_eq!(w[0].str("db.mysql.lock.outcome"), Some("lock_wait_timeout"));
    let a = conn_of(&timeout_conns, "A");
    assert_eq!(
        w[0].int("db.mysql.blocker.connection_id"),
        Some(a as i64),
        "{}",
        dump(&w)
    );
    assert!(
        w[0].duration() >= Duration::from_millis(900),
        "{:?}",
        w[0].duration()
    );

    let victim = conn_of(&deadlock_conns, &deadlock_errors[0].0);
    let failed = server_statements(&spans, victim)
        .into_iter()
        .find(|s| s.str("error.type") == Some("1213"))
        .expect("the victim's statement");
    let w = waits_under(&spans, failed);
    assert_eq!(w.len(), 1, "{}", all());
    assert_eq!(w[0].str("db.mysql.lock.outcome"), Some("deadlock"));
    // Both members of the cycle named on the victim's statement.
    let other = deadlock_conns
        .iter()
        .map(|(_, id)| *id)
        .find(|id| *id != victim)
        .unwrap();
    let ev = failed
        .events
        .iter()
        .find(|e| e.name == "deadlock_detected")
        .unwrap_or_else(|| panic!("{:?}", failed.event_names()));
    let int = |k: &str| match ev.attrs.get(k) {
        Some(dbtel_tests::otlp::Value::Int(n)) => Some(*n as u64),
        _ => None,
    };
    assert_eq!(
        (
            int("db.mysql.deadlock.victim.connection_id"),
            int("db.mysql.deadlock.other.connection_id")
        ),
        (Some(victim), Some(other))
    );
    // The other's client is not traced: its last statement here, the one that took the lock.
    let text = |k: &str| match ev.attrs.get(k) {
        Some(dbtel_tests::otlp::Value::Str(s)) => Some(s.as_str()),
        _ => None,
    };
    assert_eq!(
        (
            text("db.mysql.deadlock.victim.query"),
            text("db.mysql.deadlock.other.query")
        ),
        (
            Some("update t set v = v + ? where id = ?"),
            Some("update t set v = v + ? where id = ?")
        )
    );
    assert!(
        w[0].event_names().contains(&"deadlock_detected"),
        "{:?}",
        w[0].event_names()
    );
    // The victim's transaction was rolled back by the server.
    let txn = spans
        .iter()
        .find(|s| {
            s.name == "transaction"
                && s.kind == SERVER
                && s.int("db.mysql.connection_id") == Some(victim as i64)
        })
        .expect("its transaction");
    assert_eq!(
        (txn.str("db.transaction.outcome"), txn.str("error.type")),
        (Some("rolled_back"), Some("1213"))
    );

    let b = conn_of(&mdl_conns, "B");
    let alter = server_statements(&spans, b)
        .into_iter()
        .find(|s| s.text().starts_with("alter table"))
        .expect("the ALTER");
    let w = waits_under(&spans, alter);
    assert_eq!(w.len(), 1, "one wait, however many chunks: {}", all());
    assert_eq!(
        (
            w[0].str("db.mysql.lock.type"),
            w[0].str("db.mysql.lock.outcome")
        ),
        (Some("metadata"), Some("granted"))
    );
    // Its blocker: A, whose open transaction read t (a shared read lock on it).
    let a = conn_of(&mdl_conns, "A");
    assert_eq!(
        w[0].int("db.mysql.blocker.connection_id"),
        Some(a as i64),
        "{}",
        dump(&w)
    );
    assert_eq!(
        w[0].str("db.mysql.blocker.lock_mode"),
        Some("MDL_SHARED_READ")
    );
    assert_eq!(
        w[0].str("db.mysql.blocker.query"),
        Some("select v from t where id = ?")
    );
    assert_eq!(w[0].str("db.mysql.lock.table"), Some("shop.t"));
    let a_txn = spans
        .iter()
        .find(|s| s.name == "transaction" && s.int("db.mysql.connection_id") == Some(a as i64))
        .expect("A's transaction");
    assert_eq!(w[0].links.len(), 1);
    assert_eq!(
        w[0].links[0].span_id, a_txn.span_id,
        "linked to A's transaction"
    );
    assert!(
        w[0].duration() >= Duration::from_millis(1100),
        "{:?}",
        w[0].duration()
    );
}

#[test]
fn server_spans_are_children_of_the_traced_clients_spans_and_another_server_is_left_alone() {
    require_root();
    let db = MariaDb::start();
    prepare(&db);
    let other = MariaDb::start();
    other.cli("create database shop; create table shop.t (id int primary key, v int); insert into shop.t values (1, 0), (2, 0)");
    let rx = Receiver::start();
    let pid = db.pid().to_string();
    let socket = db.socket().display().to_string();
    // The server by PID and a MySQLdb client started by the agent.
    let script = "import MySQLdb\nc = MySQLdb.connect(unix_socket=SOCK, user='root', database='shop')\ncur = c.cursor()\n\
                  for i in range(5):\n    cur.execute('select v from t where id = %s', (i,))\n    cur.fetchall()\n\
                  cur.execute('update t set v = v + 1 where id = 1')\nc.commit()\nc.close()\n"
        .replace("SOCK", &format!("{socket:?}"));
    let python = drivers::python()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let run = run_agent(
        &[
            "--pid",
            &pid,
            "--otlp-endpoint",
            &rx.http_endpoint(),
            "--",
            &python,
            "-c",
            &script,
        ],
        b"",
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "{run:?}");
    // Meanwhile nothing of the other server is seen.
    other.cli("select v from shop.t where id = 2");
    let spans = rx.spans();
    let server: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SERVER && s.name != "transaction")
        .collect();
    let client: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == 3 && s.name != "transaction")
        .collect();
    let selects: Vec<&&Span> = server
        .iter()
        .filter(|s| s.text() == "select v from t where id = ?")
        .collect();
    assert_eq!(selects.len(), 5, "{}", dump(&server));
    for s in &server {
        let parent = client
            .iter()
            .find(|c| c.span_id == s.parent_span_id)
            .unwrap_or_else(|| {
                panic!(
                    "{:?} has no client parent\n{}",
                    s.text(),
                    dump(&spans.iter().collect::<Vec<_>>())
                )
            });
        assert_eq!(parent.text(), s.text());
        assert_eq!(parent.trace_id, s.trace_id);
        assert_eq!(
            parent.int("db.mysql.connection_id"),
            s.int("db.mysql.connection_id")
        );
        assert!(
            parent.start_ns <= s.start_ns && s.end_ns <= parent.end_ns + 1_000_000,
            "the server's work inside the client's call"
        );
    }
    assert!(spans
        .iter()
        .all(|s| s.resource_int("process.pid") != Some(other.pid() as i64)));
    // The general log of the traced server agrees on the count.
    let logged: usize = db
        .general_log()
        .iter()
        .filter(|e| e.command == "Query")
        .count();
    assert!(
        server.len() >= 7 && server.len() <= logged,
        "{} server spans, {logged} logged",
        server.len()
    );
}

/// Runs pymysql_interleave.py with `n` connections of `rounds` rounds;
/// returns the connection ids, and the error numbers by connection id.
fn interleaved(db: &MariaDb, n: usize, rounds: usize) -> (Vec<u64>, Vec<(u64, String)>) {
    let socket = db.socket().display().to_string();
    let out = drivers::python()
        .arg(drivers::program("pymysql_interleave.py"))
        .args([socket.as_str(), "shop", &n.to_string(), &rounds.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("done"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ids = vec![0; n];
    let mut errors = Vec::new();
    for l in stdout.lines() {
        match l.split(' ').collect::<Vec<_>>()[..] {
            ["conn", i, id] => ids[i.parse::<usize>().unwrap()] = id.parse().unwrap(),
            ["error", i, errno] => errors.push((i.parse::<usize>().unwrap(), errno.to_string())),
            _ => {}
        }
    }
    (
        ids.clone(),
        errors.into_iter().map(|(i, e)| (ids[i], e)).collect(),
    )
}

#[test]
fn with_a_pool_of_threads_every_connection_is_followed_across_threads_and_a_row_lock_wait_is_its_statements(
) {
    require_root();
    let db = MariaDb::start_with(&["--thread-handling=pool-of-threads"]);
    assert_eq!(db.cli("select @@thread_handling").trim(), "pool-of-threads");
    prepare(&db);
    db.cli(
        "create table shop.counters (id int primary key, n int); insert into shop.counters values (0, 0), (1, 0), (2, 0), (3, 0);\
         create table shop.events (id int auto_increment primary key, conn int, round int)",
    );
    let before = last_connection(&db.general_log());
    let rx = Receiver::start();
    let agent = trace_server(&db, &rx);
    const N: usize = 4;
    const ROUNDS: usize = 12;
    let (workers, errors) = interleaved(&db, N, ROUNDS);
    // Rounds 0, 3, 6 and 9 of each connection fail.
    assert_eq!(errors.len(), 4 * N, "{errors:?}");
    assert!(errors.iter().all(|(_, e)| e == "1146"), "{errors:?}");
    let (lockers, lock_errors) = locks(&db, "row");
    assert!(lock_errors.is_empty(), "{lock_errors:?}");
    let conns = connections_after(&db.general_log(), before);
    assert_eq!(conns.len(), N + 2, "{conns:?}");
    db.wait_quit(&conns);
    std::thread::sleep(Duration::from_millis(500));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.summary()
            .contains(" 0 lost in the ring buffer, 0 undecodable"),
        "{}",
        run.summary()
    );
    let spans = rx.spans();
    let all = || dump(&spans.iter().collect::<Vec<_>>());
    let log = db.general_log();

    // Each connection's statements as its log says, in order, whichever threads ran them.
    let mut moved = 0;
    for &conn in &conns {
        let logged: Vec<_> = log
            .iter()
            .filter(|e| e.connection == conn && ["Query", "Init DB"].contains(&e.command.as_str()))
            .collect();
        let got = server_statement_spans(&spans, conn);
        let texts: Vec<&str> = got.iter().map(|s| s.text()).collect();
        let want: Vec<String> = logged
            .iter()
            .map(|e| {
                if e.command == "Init DB" {
                    String::new()
                } else {
                    dbtel_tests::expected_mysql_text(&e.text)
                }
            })
            .collect();
        assert_eq!(texts, want, "connection {conn}\n{}", dump(&got));
        for (s, e) in got.iter().zip(&logged) {
            let what = format!("connection {conn}: {} {:?}", e.command, e.text);
            assert_eq!(
                (s.str("db.system.name"), s.resource_int("process.pid")),
                (Some("mariadb"), Some(db.pid() as i64)),
                "{what}"
            );
            if e.command == "Init DB" {
                assert_eq!(s.name, "USE", "{what}");
            }
            let failed = e.text == "select * from missing";
            assert_eq!(s.str("error.type"), failed.then_some("1146"), "{what}");
            assert!(s.start_ns <= s.end_ns, "{what}");
        }
        let threads: std::collections::BTreeSet<i64> =
            got.iter().filter_map(|s| s.int("thread.id")).collect();
        moved += usize::from(threads.len() > 1);
    }
    assert!(
        moved >= 1,
        "no connection's commands ran on more than one thread: not a pool of threads?"
    );

    // Each worker's BEGIN .. COMMIT blocks: a committed server transaction apiece, parenting its 4 statements.
    for &conn in &workers {
        let statements = server_statement_spans(&spans, conn);
        let mut txns: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                s.kind == SERVER
                    && s.name == "transaction"
                    && s.int("db.mysql.connection_id") == Some(conn as i64)
            })
            .collect();
        txns.sort_by_key(|s| s.start_ns);
        assert_eq!(txns.len(), ROUNDS, "connection {conn}\n{}", dump(&txns));
        for t in &txns {
            let children: Vec<&Span> = statements
                .iter()
                .copied()
                .filter(|s| s.parent_span_id == t.span_id)
                .collect();
            let texts: Vec<&str> = children.iter().map(|s| s.text()).collect();
            assert_eq!(
                texts,
                [
                    "begin",
                    "insert into events (conn, round) values (?, ?)",
                    "update counters set n = n + ? where id = ?",
                    "commit"
                ],
                "connection {conn}"
            );
            assert_eq!(
                (
                    t.str("db.transaction.outcome"),
                    t.int("db.transaction.statement_count")
                ),
                (Some("committed"), Some(4)),
                "connection {conn}"
            );
            assert!(
                children.iter().all(|c| c.trace_id == t.trace_id
                    && t.start_ns <= c.start_ns
                    && c.end_ns <= t.end_ns),
                "connection {conn}\n{}",
                dump(&children)
            );
        }
        let roots = statements
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .count();
        assert_eq!(
            roots,
            statements.len() - 4 * ROUNDS,
            "connection {conn}: the rest outside transactions"
        );
    }

    // The row lock wait: under B's update, granted; the only wait.
    let b = conn_of(&lockers, "B");
    let update = server_statement_spans(&spans, b)
        .into_iter()
        .find(|s| s.text().starts_with("update t"))
        .expect("B's update");
    let waits = waits_under(&spans, update);
    assert_eq!(waits.len(), 1, "{}", all());
    let w = waits[0];
    assert_eq!(
        (w.str("db.mysql.lock.type"), w.str("db.mysql.lock.outcome")),
        (Some("row"), Some("granted"))
    );
    assert_eq!(w.int("db.mysql.connection_id"), Some(b as i64));
    assert!(
        w.duration() >= Duration::from_millis(350) && w.duration() < Duration::from_millis(1500),
        "{:?}",
        w.duration()
    );
    assert!(
        update.start_ns <= w.start_ns && w.end_ns <= update.end_ns,
        "inside the update"
    );
    assert_eq!(w.trace_id, update.trace_id);
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.name.starts_with("lock wait"))
            .count(),
        1,
        "{}",
        all()
    );
}

/// sysbench on a table of `rows` rows (sbtest1), over the socket.
fn sysbench(db: &MariaDb, script: &str, rows: usize, run: &[&str]) -> String {
    let mut args: Vec<String> = [
        script,
        "--db-driver=mysql",
        "--mysql-user=root",
        "--mysql-db=sbtest",
        "--tables=1",
    ]
    .map(String::from)
    .to_vec();
    args.extend([
        format!("--mysql-socket={}", db.socket().display()),
        format!("--table-size={rows}"),
    ]);
    let out = std::process::Command::new("sysbench")
        .args(args)
        .args(run)
        .output()
        .expect("sysbench (cargo xtask setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn with_a_pool_of_threads_a_wait_stays_with_its_statement_when_a_pending_commit_resumes_it_on_another_thread(
) {
    // Autocommit UPDATEs of 4 rows from 6 connections: row lock waits, and
    // commits whose redo write is pending (the command returns WOULDBLOCK
    // and is resumed, end_statement included, by whichever worker is free).
    require_root();
    let db = MariaDb::start_with(&["--thread-handling=pool-of-threads"]);
    db.cli("create database sbtest");
    sysbench(&db, "oltp_update_non_index", 4, &["prepare"]);
    let before = last_connection(&db.general_log());
    let rx = Receiver::start();
    let agent = trace_server(&db, &rx);
    let out = sysbench(
        &db,
        "oltp_update_non_index",
        4,
        &["--threads=6", "--events=3000", "--time=0", "run"],
    );
    assert!(
        out.contains("transactions:                        3000 "),
        "{out}"
    );
    let conns = connections_after(&db.general_log(), before);
    assert_eq!(conns.len(), 6, "{conns:?}");
    db.wait_quit(&conns);
    std::thread::sleep(Duration::from_millis(500));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.summary()
            .contains(" 0 lost in the ring buffer, 0 undecodable"),
        "{}",
        run.summary()
    );
    let spans = rx.spans();
    let log = db.general_log();
    for &conn in &conns {
        pair_server_with_log(&server_statement_spans(&spans, conn), &log, conn, db.pid());
    }
    // Every wait under the UPDATE of its own connection that waited, granted.
    let waits: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("lock wait"))
        .collect();
    let mut elsewhere = 0;
    for w in &waits {
        let parent = spans
            .iter()
            .find(|s| s.span_id == w.parent_span_id && is_server_statement(s));
        let parent = parent.unwrap_or_else(|| panic!("no statement for {}", dump(&[w])));
        let what = dump(&[parent, w]);
        assert_eq!(
            parent.int("db.mysql.connection_id"),
            w.int("db.mysql.connection_id"),
            "{what}"
        );
        assert_eq!(parent.text(), "UPDATE sbtest1 SET c=? WHERE id=?", "{what}");
        assert!(
            parent.start_ns <= w.start_ns && w.end_ns <= parent.end_ns,
            "{what}: {}..{} in {}..{}",
            w.start_ns,
            w.end_ns,
            parent.start_ns,
            parent.end_ns
        );
        assert_eq!(
            (w.str("db.mysql.lock.type"), w.str("db.mysql.lock.outcome")),
            (Some("row"), Some("granted")),
            "{what}"
        );
        elsewhere += usize::from(parent.int("thread.id") != w.int("thread.id"));
    }
    assert!(
        waits.len() >= 20,
        "{} lock waits: too little contention to test",
        waits.len()
    );
    assert!(
        elsewhere >= 1,
        "no statement ended on another thread than its wait: nothing tested"
    );
}
