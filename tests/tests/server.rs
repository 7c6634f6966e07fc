//! Server-side tracing alone: clients that dbtel does not trace (pgbench over
//! the extended protocol, psql) still yield SERVER spans, transactions and
//! lock waits; backends forked after the agent attached are traced; another
//! cluster on the same host (same postgres binary) is not.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use dbtel_tests::{require_root, scaled, Agent, Cluster, Receiver, Span};

const SERVER: i32 = 2;

fn psql(pg: &Cluster, cmds: &[&str]) -> Command {
    let mut c = Command::new(pg.bin("psql"));
    c.args(pg.conn_args()).args(["-X", "-q", "-d", "postgres"]);
    for s in cmds {
        c.args(["-c", s]);
    }
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

#[test]
fn untraced_clients_get_server_spans_and_another_cluster_is_left_alone() {
    require_root();
    let pg = Cluster::start();
    let other = Cluster::start();
    pg.pgbench_init(1);
    other.psql("postgres", "create table elsewhere (id int)");
    let rx = Receiver::start();
    let pm = pg.postmaster_pid();
    // Attach through a backend's PID (an idle psql session), not the postmaster's.
    let mut idle = psql(&pg, &["select pg_sleep(30)"]).spawn().unwrap();
    let backend = loop {
        let out = pg.psql("postgres", "select pid from pg_stat_activity where query like 'select pg_sleep(30)%' and pid <> pg_backend_pid()");
        if let Ok(p) = out.trim().parse::<u32>() {
            break p;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let agent = Agent::start(
        &[
            "--otlp-endpoint",
            &rx.http_endpoint(),
            "--pid",
            &backend.to_string(),
        ],
        Stdio::null(),
    );
    assert!(
        agent
            .stderr_lines
            .iter()
            .any(|l| l.contains(&format!("PostgreSQL server {pm} "))),
        "{:?}",
        agent.stderr_lines
    );

    // pgbench's two connections are backends forked after the attach. At
    // 100 transactions/s each lives ~250 ms: a backend that ran its 25
    // transactions in 15 ms (as one did) is gone before the catalog can be
    // asked about it, and its spans rightly go without the catalog's attributes.
    let out = Command::new(pg.bin("pgbench"))
        .args(pg.conn_args())
        .args([
            "-n", "-M", "extended", "-c", "2", "-t", "25", "-R", "100", "postgres",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A lock wait between two untraced psql sessions.
    let hold = format!(
        "select pg_sleep({})",
        scaled(Duration::from_millis(500)).as_secs_f64()
    );
    let mut holder = psql(
        &pg,
        &[
            "begin",
            "update pgbench_branches set bbalance = 0 where bid = 1",
            &hold,
            "commit",
        ],
    )
    .spawn()
    .unwrap();
    std::thread::sleep(scaled(Duration::from_millis(150)));
    let waiter = psql(
        &pg,
        &["update pgbench_branches set bbalance = 1 where bid = 1"],
    )
    .status()
    .unwrap();
    assert!(waiter.success());
    assert!(holder.wait().unwrap().success());
    // The other cluster's work must not show up.
    other.psql("postgres", "insert into elsewhere values (1)");
    let _ = idle.kill();
    let _ = idle.wait();
    std::thread::sleep(scaled(Duration::from_millis(700)));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();

    assert!(
        spans
            .iter()
            .all(|s| s.resource_int("process.pid") == Some(pm as i64)),
        "only the traced server's spans"
    );
    assert!(
        spans.iter().all(|s| !s.text().contains("elsewhere")),
        "nothing from the other cluster"
    );
    assert!(spans
        .iter()
        .all(|s| s.kind == SERVER || s.name.starts_with("lock wait")));

    // Every tpcb-like statement of both clients, exactly once: 2 × 25.
    let count = |name: &str| {
        spans
            .iter()
            .filter(|s| s.kind == SERVER && s.name == name)
            .count()
    };
    for name in [
        "UPDATE pgbench_accounts",
        "SELECT pgbench_accounts",
        "UPDATE pgbench_tellers",
        "INSERT pgbench_history",
    ] {
        assert_eq!(count(name), 50, "{name}");
    }
    let accounts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "UPDATE pgbench_accounts")
        .collect();
    assert_eq!(
        accounts[0].text(),
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;"
    );
    let txns: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "transaction" && s.int("db.transaction.statement_count") == Some(7))
        .collect();
    assert_eq!(txns.len(), 50, "BEGIN…END blocks of 7 statements");
    assert!(txns
        .iter()
        .all(|t| t.str("db.transaction.outcome") == Some("committed")));
    for a in &accounts {
        let parent = txns
            .iter()
            .find(|t| t.span_id == a.parent_span_id)
            .expect("each statement under its transaction");
        assert_eq!(parent.trace_id, a.trace_id);
        assert!(a.start_ns >= parent.start_ns && a.end_ns <= parent.end_ns + 1_000_000);
        // From the catalog: who the backend serves.
        assert_eq!(a.str("db.namespace"), Some("postgres"));
        assert_eq!(a.str("user.name"), Some("postgres"));
        assert_eq!(a.str("db.postgresql.application_name"), Some("pgbench"));
        assert_eq!(a.str("db.postgresql.backend_type"), Some("client backend"));
        assert_eq!(a.str("network.transport"), Some("unix"));
    }
    let backends: std::collections::BTreeSet<i64> = accounts
        .iter()
        .filter_map(|a| a.int("db.postgresql.backend.pid"))
        .collect();
    assert_eq!(backends.len(), 2, "two pgbench connections");

    // The wait hangs under the server's UPDATE; the blocker's server transaction is linked.
    // (pgbench's two clients contend on the single branch row too: those waits are real.)
    let waits: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name.starts_with("lock wait")
                && s.text() == "update pgbench_branches set bbalance = ? where bid = ?"
        })
        .collect();
    assert_eq!(waits.len(), 1, "{waits:#?}");
    let w = waits[0];
    assert_eq!(w.name, "lock wait pgbench_branches");
    let parent = spans
        .iter()
        .find(|s| s.span_id == w.parent_span_id)
        .expect("parent exported");
    assert_eq!(
        (parent.kind, parent.name.as_str()),
        (SERVER, "UPDATE pgbench_branches")
    );
    assert_eq!(
        parent.int("db.postgresql.backend.pid"),
        w.int("db.postgresql.backend.pid")
    );
    assert_eq!(
        parent.event_names(),
        ["contention_detected", "lock_contention_detected"]
    );
    assert!(
        w.duration() >= Duration::from_millis(250),
        "{:?}",
        w.duration()
    );
    let blocker = w
        .int("db.postgresql.blocker.pid")
        .expect("blocker from pg_blocking_pids");
    let holder_txn = spans
        .iter()
        .find(|s| s.name == "transaction" && s.int("db.postgresql.backend.pid") == Some(blocker))
        .expect("the holder's transaction block");
    assert_eq!(w.links.len(), 1);
    assert_eq!(
        (&w.links[0].trace_id, &w.links[0].span_id),
        (&holder_txn.trace_id, &holder_txn.span_id)
    );
    assert!(run.summary().contains(" 0 failed"), "{}", run.summary());
}

#[test]
fn a_catalog_that_cannot_be_reached_costs_only_the_attributes_only_it_gives() {
    require_root();
    let pg = Cluster::start();
    pg.psql("postgres", "create table t (id int primary key)");
    let rx = Receiver::start();
    let pm = pg.postmaster_pid().to_string();
    // Nothing listens on port 1: the catalog cannot connect.
    let agent = Agent::start_env(
        &["--otlp-endpoint", &rx.http_endpoint(), "--pid", &pm],
        &[("PGPORT", "1"), ("PGHOST", "127.0.0.1")],
        Stdio::null(),
    );
    assert!(
        agent
            .stderr_lines
            .iter()
            .any(|l| l.contains("catalog unavailable")),
        "{:?}",
        agent.stderr_lines
    );
    let out = psql(&pg, &["insert into t values (1)", "select * from t"])
        .status()
        .unwrap();
    assert!(out.success());
    std::thread::sleep(Duration::from_millis(500));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    assert!(!run.stderr.contains("PGPASSWORD"));
    let names: Vec<String> = rx
        .spans()
        .iter()
        .filter(|s| s.kind == SERVER)
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, ["INSERT t", "SELECT t"], "every statement");
    // Who the session serves, the backend said as it started; its peer only the catalog knows.
    for s in rx.spans() {
        assert_eq!(
            (
                s.str("user.name"),
                s.str("db.namespace"),
                s.str("db.postgresql.application_name")
            ),
            (Some("postgres"), Some("postgres"), Some("psql"))
        );
        assert_eq!(s.str("db.postgresql.backend_type"), Some("client backend"));
        assert_eq!(s.str("network.transport"), None);
    }
    assert!(run.summary().contains(" 0 failed"), "{}", run.summary());
}

#[test]
fn parallel_workers_are_not_statements_of_their_own() {
    require_root();
    let pg = Cluster::start_logged();
    pg.psql(
        "postgres",
        "create table big as select g as id from generate_series(1, 200000) g; analyze big",
    );
    let rx = Receiver::start();
    let pm = pg.postmaster_pid().to_string();
    // No catalog: the workers are told apart by what they do, not by pg_stat_activity.
    let agent = Agent::start(
        &[
            "--otlp-endpoint",
            &rx.http_endpoint(),
            "--no-catalog",
            "--pid",
            &pm,
        ],
        Stdio::null(),
    );
    let settings = [
        "set max_parallel_workers_per_gather = 2",
        "set parallel_setup_cost = 0",
        "set parallel_tuple_cost = 0",
        "set min_parallel_table_scan_size = 0",
    ];
    for _ in 0..3 {
        let mut cmds: Vec<&str> = settings.to_vec();
        cmds.push("select count(*) from big where id % 7 = 3");
        assert!(psql(&pg, &cmds).status().unwrap().success());
    }
    std::thread::sleep(Duration::from_millis(700));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();
    let logged = pg
        .logged_statements()
        .into_iter()
        .filter(|(_, t)| t.starts_with("select count(*) from big"))
        .count();
    assert_eq!(logged, 3);
    let counts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.text() == "select count(*) from big where id % ? = ?")
        .collect();
    assert_eq!(
        counts.len(),
        logged,
        "one span per statement, none from the workers: {counts:?}"
    );
    assert!(
        spans.iter().all(|s| s.status_code != 2),
        "no error spans: {spans:?}"
    );
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("dbtel: server side:"))
        .unwrap_or("");
    let echoes: u32 = line
        .rsplit(", ")
        .next()
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        echoes >= 3,
        "parallel workers ran (and were told apart): {line}"
    );
}

#[test]
fn errors_are_the_ones_the_client_got_and_caught_ones_fail_nothing() {
    require_root();
    let pg = Cluster::start_logged();
    let rx = Receiver::start();
    let pm = pg.postmaster_pid().to_string();
    let agent = Agent::start(
        &["--otlp-endpoint", &rx.http_endpoint(), "--pid", &pm],
        Stdio::null(),
    );
    let statements = [
        "do $$ begin raise exception 'boom'; end $$",
        "do $$ begin begin perform 1/0; exception when others then null; end; end $$",
        "select 'no_such_table'::regclass",
        "set work_mem = 'lots'",
        "vacuum no_such_table",
        "select 1",
    ];
    // One psql session, one -c each: it goes on after an error.
    psql(&pg, &statements).status().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");

    let logged = pg.logged_statements();
    let backend = logged
        .iter()
        .find(|(_, t)| t.contains("raise exception 'boom'"))
        .unwrap()
        .0;
    assert_eq!(
        logged.iter().filter(|(p, _)| *p == backend).count(),
        statements.len()
    );
    let errors: Vec<String> = pg
        .logged_errors()
        .into_iter()
        .filter(|(p, _)| *p == backend)
        .map(|(_, c)| c)
        .collect();
    assert_eq!(
        errors,
        ["P0001", "42P01", "22023", "42P01"],
        "what the server reported"
    );
    let mut spans: Vec<Span> = rx
        .spans()
        .into_iter()
        .filter(|s| s.kind == SERVER && s.int("db.postgresql.backend.pid") == Some(backend as i64))
        .collect();
    spans.sort_by_key(|s| s.start_ns);
    assert_eq!(spans.len(), statements.len(), "{spans:?}");
    let got: Vec<&str> = spans.iter().filter_map(|s| s.str("error.type")).collect();
    assert_eq!(
        got, errors,
        "the spans' errors, statement by statement: {spans:?}"
    );
    assert_eq!(
        spans[1].status_code, 0,
        "the caught division by zero fails nothing"
    );
    assert_eq!(spans[5].status_code, 0);
}
