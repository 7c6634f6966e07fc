//! Lock contention seen from inside the server, hung under the traced
//! application query that suffered it: two psycopg2 programs and the
//! PostgreSQL server traced at once. The wait and the deadlock are run on
//! every server build: Debian's 15 through its USDT probes and through the
//! uprobe stand-ins (forced), and the wheels' 16.2 and 18.6 (no USDT).

use std::{process::Stdio, time::Duration};

use dbtel_tests::{
    otlp::Value, pg::Build, py::Session, require_root, scaled, Agent, AgentRun, Cluster, Receiver,
    Span,
};

/// A server build and how the agent probes it.
#[derive(Clone, Copy)]
struct Server {
    build: Build,
    /// --pg-server-probes.
    probes: &'static str,
    /// What the agent's attach line says of it.
    source: &'static str,
}

const DEBIAN_USDT: Server = Server {
    build: Build::Debian15,
    probes: "auto",
    source: "USDT",
};
const DEBIAN_UPROBES: Server = Server {
    build: Build::Debian15,
    probes: "uprobes",
    source: "uprobes on functions (no USDT)",
};
const WHEEL_16: Server = Server {
    build: Build::Wheel16,
    ..DEBIAN_UPROBES
};
const WHEEL_18: Server = Server {
    build: Build::Wheel18,
    ..DEBIAN_UPROBES
};

fn setup_on(build: Build) -> Cluster {
    // The deadlock check runs deadlock_timeout after a wait starts: PostgreSQL's
    // default (1 s), by which the catalog has named the blocker (waits are looked
    // up after 20 ms). At 400 ms the answer came too late on a loaded host (the
    // victim's deadlock without its other side: 3 of 4 runs right after a build).
    let deadlock_timeout = format!(
        "deadlock_timeout={}ms",
        scaled(Duration::from_millis(1000)).as_millis()
    );
    let pg = Cluster::start_logged_build(build, &[&deadlock_timeout]);
    pg.psql(
        "postgres",
        "create table accounts (id int primary key, balance int)",
    );
    pg.psql("postgres", "insert into accounts values (1, 100), (2, 100)");
    pg
}

/// The agent on both programs and the server.
fn trace_on(server: Server, pg: &Cluster, rx: &Receiver, sessions: &[&Session]) -> Agent {
    let mut args = vec![
        "--pg-server-probes".to_string(),
        server.probes.into(),
        "--otlp-endpoint".to_string(),
        rx.http_endpoint(),
        "--pid".into(),
        pg.postmaster_pid().to_string(),
    ];
    for s in sessions {
        args.extend(["--pid".into(), s.pid.to_string()]);
    }
    // The catalog: the test cluster over its socket, as PG* variables would say.
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The wait lookups' timings, shown when an assertion on them fails.
    let agent = Agent::start_env(&args, &[("RUST_LOG", LOOKUP_LOG)], Stdio::null());
    let attached = format!("PostgreSQL server {}", pg.postmaster_pid());
    assert!(
        agent
            .stderr_lines
            .iter()
            .flat_map(|l| l.split("; "))
            .any(|p| p.contains(&attached) && p.ends_with(&format!(", {}", server.source))),
        "{:?}",
        agent.stderr_lines
    );
    agent
}

const LOOKUP_LOG: &str = "info,dbtel_agent::postgres::server::side::waits=debug";

/// The agent's lines about its lock-wait lookups and the catalog.
fn lookups(run: &AgentRun) -> String {
    run.stderr
        .lines()
        .filter(|l| l.contains("lock wait") || l.contains("catalog"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Both programs exit, then the agent is stopped (the server stays traced
/// until then); the pauses let the last events through.
fn finish(agent: Agent, sessions: [Session; 2]) -> AgentRun {
    std::thread::sleep(Duration::from_millis(500));
    for s in sessions {
        s.exit();
    }
    std::thread::sleep(Duration::from_millis(500));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    run
}

fn by_kind<'a>(spans: &'a [Span], pid: u32, name: &str, kind: i32) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| {
            s.name == name && s.kind == kind && s.resource_int("process.pid") == Some(pid as i64)
        })
        .collect()
}

const CLIENT: i32 = 3;
const SERVER: i32 = 2;
const INTERNAL: i32 = 1;

#[test]
fn a_blocked_update_shows_the_wait_its_blocker_and_a_link_to_the_blocking_transaction() {
    blocked_update(DEBIAN_USDT);
}

#[test]
fn a_blocked_update_through_the_uprobe_stand_ins() {
    blocked_update(DEBIAN_UPROBES);
}

#[test]
fn a_blocked_update_on_the_16_wheel() {
    blocked_update(WHEEL_16);
}

#[test]
fn a_blocked_update_on_the_18_wheel() {
    blocked_update(WHEEL_18);
}

fn blocked_update(server: Server) {
    require_root();
    let pg = setup_on(server.build);
    let rx = Receiver::start();
    let (mut a, mut b) = (Session::start(&pg), Session::start(&pg));
    let agent = trace_on(server, &pg, &rx, &[&a, &b]);

    assert_eq!(
        a.run("sql update accounts set balance = balance - 10 where id = 1"),
        "ok"
    );
    b.send("sql update accounts set balance = balance + 10 where id = 1");
    assert_eq!(
        a.run(&format!(
            "sleep {}",
            scaled(Duration::from_millis(500)).as_secs_f64()
        )),
        "ok"
    );
    assert_eq!(a.run("commit"), "ok");
    assert_eq!(b.reply(), "ok");
    assert_eq!(b.run("commit"), "ok");
    let (apid, bpid, abackend, bbackend) = (a.pid, b.pid, a.backend, b.backend);
    let run = finish(agent, [a, b]);
    let spans = rx.spans();

    let b_update = by_kind(&spans, bpid, "UPDATE accounts", CLIENT);
    assert_eq!(
        b_update.len(),
        1,
        "{:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let b_update = b_update[0];
    assert_eq!(
        b_update.event_names(),
        ["contention_detected", "lock_contention_detected"]
    );

    let waits: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("lock wait"))
        .collect();
    assert_eq!(waits.len(), 1, "one lock wait: {waits:#?}");
    let w = waits[0];
    assert_eq!(w.name, "lock wait accounts");
    assert_eq!(w.kind, INTERNAL);
    // Client UPDATE > server UPDATE > the wait inside it.
    let server_updates: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.kind == SERVER
                && s.name == "UPDATE accounts"
                && s.int("db.postgresql.backend.pid") == Some(bbackend)
        })
        .collect();
    assert_eq!(server_updates.len(), 1);
    assert_eq!(
        (&w.trace_id, &w.parent_span_id),
        (&b_update.trace_id, &server_updates[0].span_id),
        "under the server's UPDATE"
    );
    assert!(
        w.duration() >= Duration::from_millis(450),
        "A held the row for 500 ms: {:?}",
        w.duration()
    );
    assert!(
        w.duration() <= b_update.duration(),
        "the wait lies within the query"
    );
    assert!(w.start_ns >= b_update.start_ns && w.end_ns <= b_update.end_ns);
    assert_eq!(w.str("db.collection.name"), Some("accounts"));
    assert_eq!(
        w.str("db.postgresql.lock.relation"),
        Some("public.accounts"),
        "from the tuple lock B holds; the lookups:\n{}",
        lookups(&run)
    );
    assert_eq!(w.str("db.postgresql.lock.type"), Some("transactionid"));
    assert_eq!(w.str("db.postgresql.lock.mode"), Some("ShareLock"));
    assert_eq!(w.str("db.postgresql.lock.outcome"), Some("granted"));
    assert_eq!(w.int("db.postgresql.backend.pid"), Some(bbackend));
    assert_eq!(
        w.int("db.postgresql.blocker.pid"),
        Some(abackend),
        "{}",
        lookups(&run)
    );
    assert_eq!(
        w.str("db.postgresql.blocker.query"),
        Some("update accounts set balance = balance - ? where id = ?")
    );
    assert_eq!(
        w.str("db.postgresql.blocker.state"),
        Some("idle in transaction")
    );
    assert_eq!(w.status_code, 0);

    // The link points at A's client transaction span.
    let a_txn = by_kind(&spans, apid, "transaction", CLIENT);
    assert_eq!(a_txn.len(), 1, "A ran one transaction");
    assert_eq!(w.links.len(), 1, "{:?}", w.links);
    assert_eq!(
        (&w.links[0].trace_id, &w.links[0].span_id),
        (&a_txn[0].trace_id, &a_txn[0].span_id)
    );
    assert!(
        matches!(w.links[0].attrs.get("db.postgresql.backend.pid"), Some(Value::Int(p)) if *p == abackend)
    );

    // The server's view of B's UPDATE sits under the client's.
    assert_eq!(server_updates[0].parent_span_id, b_update.span_id);
    assert_eq!(
        server_updates[0].resource_int("process.pid"),
        Some(pg.postmaster_pid() as i64)
    );
    assert!(server_updates[0].duration() >= Duration::from_millis(450));
}

#[test]
fn a_deadlock_names_both_sides_rolls_the_victim_back_and_its_retry_is_counted() {
    deadlock(DEBIAN_USDT);
}

#[test]
fn a_deadlock_through_the_uprobe_stand_ins() {
    deadlock(DEBIAN_UPROBES);
}

#[test]
fn a_deadlock_on_the_16_wheel() {
    deadlock(WHEEL_16);
}

#[test]
fn a_deadlock_on_the_18_wheel() {
    deadlock(WHEEL_18);
}

fn deadlock(server: Server) {
    require_root();
    let pg = setup_on(server.build);
    let rx = Receiver::start();
    let (mut a, mut b) = (Session::start(&pg), Session::start(&pg));
    let agent = trace_on(server, &pg, &rx, &[&a, &b]);

    assert_eq!(
        a.run("sql update accounts set balance = 1 where id = 1"),
        "ok"
    );
    assert_eq!(
        b.run("sql update accounts set balance = 2 where id = 2"),
        "ok"
    );
    // A waits first, so A's deadlock check runs first: A is the victim.
    a.send("sql update accounts set balance = 1 where id = 2");
    std::thread::sleep(scaled(Duration::from_millis(50)));
    b.send("sql update accounts set balance = 2 where id = 1");
    assert_eq!(a.reply(), "err 40P01");
    assert_eq!(a.run("rollback"), "ok");
    assert_eq!(b.reply(), "ok");
    assert_eq!(b.run("commit"), "ok");
    // The application retries its transaction.
    assert_eq!(
        a.run("sql update accounts set balance = 1 where id = 1"),
        "ok"
    );
    assert_eq!(
        a.run("sql update accounts set balance = 1 where id = 2"),
        "ok"
    );
    assert_eq!(a.run("commit"), "ok");
    let (apid, bpid, abackend, bbackend) = (a.pid, b.pid, a.backend, b.backend);
    let run = finish(agent, [a, b]);
    assert!(run.stderr.contains("1 deadlocks"), "{}", run.stderr);
    let spans = rx.spans();

    let waits: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "lock wait accounts")
        .collect();
    assert_eq!(waits.len(), 2, "{waits:#?}");
    let victim_wait = waits
        .iter()
        .find(|w| w.int("db.postgresql.backend.pid") == Some(abackend))
        .unwrap();
    let other_wait = waits
        .iter()
        .find(|w| w.int("db.postgresql.backend.pid") == Some(bbackend))
        .unwrap();
    assert_eq!(
        victim_wait.str("db.postgresql.lock.outcome"),
        Some("deadlock")
    );
    assert_eq!(victim_wait.str("error.type"), Some("deadlock"));
    assert_eq!(victim_wait.status_code, 2);
    assert_eq!(
        other_wait.str("db.postgresql.lock.outcome"),
        Some("granted")
    );
    assert!(
        victim_wait.end_ns <= other_wait.end_ns,
        "the victim's abort lets the other through"
    );

    // deadlock_detected names both participants, on both waits and on the victim's query.
    let a_updates = by_kind(&spans, apid, "UPDATE accounts", CLIENT);
    let victim_query = a_updates
        .iter()
        .find(|s| s.str("db.response.status_code") == Some("40P01"))
        .expect("A's failed UPDATE");
    for (what, s) in [
        ("victim wait", *victim_wait),
        ("other wait", *other_wait),
        ("victim query", *victim_query),
    ] {
        let ev = s
            .events
            .iter()
            .find(|e| e.name == "deadlock_detected")
            .unwrap_or_else(|| panic!("{what}: {:?}", s.event_names()));
        assert_eq!(
            ev.attrs.get("db.postgresql.deadlock.victim.pid"),
            Some(&Value::Int(abackend)),
            "{what}"
        );
        // The other side comes from the catalog's answer about the victim's
        // wait (asked 20 ms into it): the agent's log says if it was late.
        assert_eq!(
            ev.attrs.get("db.postgresql.deadlock.other.pid"),
            Some(&Value::Int(bbackend)),
            "{what}\n{}",
            run.stderr
        );
        assert_eq!(
            ev.attrs.get("db.postgresql.deadlock.victim.query"),
            Some(&Value::Str(
                "update accounts set balance = ? where id = ?".into()
            ))
        );
        let b_txn = by_kind(&spans, bpid, "transaction", CLIENT);
        let hex: String = b_txn[0]
            .trace_id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            ev.attrs.get("db.postgresql.deadlock.other.trace_id"),
            Some(&Value::Str(hex)),
            "{what}: B's trace"
        );
    }

    // The victim's transaction rolled back with 40P01; its retry counted and committed.
    let mut a_txns = by_kind(&spans, apid, "transaction", CLIENT);
    a_txns.sort_by_key(|s| s.start_ns);
    assert_eq!(a_txns.len(), 2);
    assert_eq!(a_txns[0].str("db.transaction.outcome"), Some("rolled_back"));
    assert_eq!(a_txns[0].str("error.type"), Some("40P01"));
    assert_eq!(a_txns[1].str("db.transaction.outcome"), Some("committed"));
    assert_eq!(a_txns[1].int("db.transaction.retry_count"), Some(1));
}

#[test]
fn lock_timeout_and_statement_timeout_close_the_wait_with_their_outcome() {
    timeouts(DEBIAN_USDT);
}

/// A wait ended by an error never returns from ProcSleep: the stand-ins
/// close it at the abort, as the USDT path does.
#[test]
fn lock_timeout_and_statement_timeout_on_the_18_wheel() {
    timeouts(WHEEL_18);
}

fn timeouts(server: Server) {
    require_root();
    let pg = setup_on(server.build);
    let rx = Receiver::start();
    let (mut a, mut b) = (Session::start(&pg), Session::start(&pg));
    let agent = trace_on(server, &pg, &rx, &[&a, &b]);

    assert_eq!(
        a.run("sql update accounts set balance = 0 where id = 1"),
        "ok"
    );
    assert_eq!(b.run("sql set lock_timeout = '300ms'"), "ok");
    assert_eq!(
        b.run("sql update accounts set balance = 5 where id = 1"),
        "err 55P03"
    );
    assert_eq!(b.run("rollback"), "ok");
    assert_eq!(b.run("sql set statement_timeout = '300ms'"), "ok");
    assert_eq!(
        b.run("sql update accounts set balance = 6 where id = 1"),
        "err 57014"
    );
    assert_eq!(b.run("rollback"), "ok");
    assert_eq!(a.run("commit"), "ok");
    let bbackend = b.backend;
    finish(agent, [a, b]);
    let mut waits: Vec<Span> = rx
        .spans()
        .into_iter()
        .filter(|s| s.name == "lock wait accounts")
        .collect();
    waits.sort_by_key(|s| s.start_ns);
    let outcomes: Vec<Option<&str>> = waits
        .iter()
        .map(|w| w.str("db.postgresql.lock.outcome"))
        .collect();
    assert_eq!(outcomes, [Some("lock_timeout"), Some("statement_timeout")]);
    for w in &waits {
        assert_eq!(w.int("db.postgresql.backend.pid"), Some(bbackend));
        assert_eq!(w.status_code, 2);
        let d = w.duration();
        assert!(
            d >= Duration::from_millis(250) && d < Duration::from_secs(5),
            "waited about the 300 ms timeout: {d:?}"
        );
    }
}
