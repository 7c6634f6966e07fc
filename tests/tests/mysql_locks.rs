//! Lock waits seen from both sides: two MySQLdb programs (their client
//! library traced by PID) on a MariaDB server traced by PID. The server's
//! statement is a child of the client's; its lock wait, under it, names its
//! blocker (connection, query, state) and links the blocker's transaction
//! as its client traced it; a deadlock names both sides and the victim's
//! retry is counted; a lock wait timeout and a metadata lock behind an open
//! transaction end as the server ended them.

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use dbtel_tests::{
    drivers::App, mysql_spans::dump, otlp::Value, require_root, Agent, MariaDb, Receiver, Span,
};

const CLIENT: i32 = 3;
const SERVER: i32 = 2;
const UPDATE: &str = "update t set v = v + ? where id = ?";

/// What one side printed.
#[derive(Debug, Default)]
struct Side {
    conn: u64,
    errors: Vec<u32>,
    retried: bool,
}

/// Runs SCENARIO with sides A and B traced, the server too; returns the sides and the spans.
fn scenario(db: &MariaDb, name: &str) -> (BTreeMap<&'static str, Side>, Vec<Span>) {
    let rx = Receiver::start();
    let mut a = App::start("mysqldb_locks.py", db, &["shop", name, "A"]);
    let mut b = App::start("mysqldb_locks.py", db, &["shop", name, "B"]);
    let (server, pa, pb) = (db.pid().to_string(), a.pid.to_string(), b.pid.to_string());
    let agent = Agent::start(
        &[
            "--pid",
            &server,
            "--pid",
            &pa,
            "--pid",
            &pb,
            "--otlp-endpoint",
            &rx.http_endpoint(),
        ],
        Stdio::null(),
    );
    let tracing = agent
        .stderr_lines
        .iter()
        .find(|l| l.starts_with("dbtel: tracing"))
        .cloned()
        .unwrap_or_default();
    for pid in [&server, &pa, &pb] {
        assert!(tracing.contains(&format!("pid {pid} (")), "{tracing}");
    }
    a.go();
    b.go();
    let mut sides = BTreeMap::new();
    for (role, app) in [("A", a), ("B", b)] {
        let mut side = Side::default();
        for l in app.finish() {
            match l.split(' ').collect::<Vec<_>>()[..] {
                ["conn", id] => side.conn = id.parse().unwrap(),
                ["error", n] => side.errors.push(n.parse().unwrap()),
                ["retry"] => side.retried = true,
                _ => {}
            }
        }
        sides.insert(role, side);
    }
    std::thread::sleep(Duration::from_millis(500));
    let run = agent.interrupt();
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.summary().contains(" 0 lost in the ring buffer"),
        "{}",
        run.summary()
    );
    (sides, rx.spans())
}

fn of(spans: &[Span], kind: i32, conn: u64) -> Vec<&Span> {
    let mut v: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == kind && s.int("db.mysql.connection_id") == Some(conn as i64))
        .collect();
    v.sort_by_key(|s| s.start_ns);
    v
}

fn statements(spans: &[Span], kind: i32, conn: u64) -> Vec<&Span> {
    of(spans, kind, conn)
        .into_iter()
        .filter(|s| s.name != "transaction" && !s.name.starts_with("lock wait"))
        .collect()
}

fn transactions(spans: &[Span], kind: i32, conn: u64) -> Vec<&Span> {
    of(spans, kind, conn)
        .into_iter()
        .filter(|s| s.name == "transaction")
        .collect()
}

fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id)
        .collect()
}

/// The server's span of a client statement: its only server child.
fn server_of<'a>(spans: &'a [Span], client: &Span) -> &'a Span {
    let kids: Vec<&Span> = children(spans, client)
        .into_iter()
        .filter(|s| s.kind == SERVER)
        .collect();
    assert_eq!(kids.len(), 1, "{}\nunder\n{}", dump(&kids), dump(&[client]));
    assert_eq!(
        (kids[0].text(), kids[0].trace_id.clone()),
        (client.text(), client.trace_id.clone())
    );
    kids[0]
}

fn wait_under<'a>(spans: &'a [Span], statement: &Span) -> &'a Span {
    let waits: Vec<&Span> = children(spans, statement)
        .into_iter()
        .filter(|s| s.name.starts_with("lock wait"))
        .collect();
    assert_eq!(
        waits.len(),
        1,
        "{}",
        dump(&spans.iter().collect::<Vec<_>>())
    );
    waits[0]
}

fn prepared() -> MariaDb {
    // METADATA_LOCK_INFO names a metadata lock's holders.
    let db = MariaDb::start_with(&["--plugin-load-add=metadata_lock_info"]);
    db.cli("create database shop; create table shop.t (id int primary key, v int); insert into shop.t values (1, 0), (2, 0)");
    db
}

#[test]
fn a_row_lock_wait_under_the_waiting_client_s_update_names_and_links_its_blocker() {
    require_root();
    let db = prepared();
    let (sides, spans) = scenario(&db, "row");
    let (a, b) = (&sides["A"], &sides["B"]);
    assert!(a.errors.is_empty() && b.errors.is_empty(), "{sides:?}");

    // B's UPDATE: the client's span, the server's under it, the wait under that.
    let client = statements(&spans, CLIENT, b.conn)
        .into_iter()
        .find(|s| s.text() == UPDATE)
        .expect("B's client UPDATE");
    let server = server_of(&spans, client);
    let w = wait_under(&spans, server);
    assert_eq!(w.name, "lock wait t");
    assert_eq!(
        (w.str("db.mysql.lock.type"), w.str("db.mysql.lock.outcome")),
        (Some("row"), Some("granted"))
    );
    // A held the row 0.5 s from its update; B asked for it 0.05 s later.
    assert!(
        w.duration() >= Duration::from_millis(400) && w.duration() < Duration::from_millis(1000),
        "{:?}",
        w.duration()
    );
    assert!(server.start_ns <= w.start_ns && w.end_ns <= server.end_ns);
    assert!(client.start_ns <= server.start_ns && server.end_ns <= client.end_ns + 1_000_000);

    // The blocker: A's connection, its last statement (idle in its transaction).
    assert_eq!(
        w.int("db.mysql.blocker.connection_id"),
        Some(a.conn as i64),
        "{}",
        dump(&[w])
    );
    assert_eq!(w.str("db.mysql.blocker.query"), Some(UPDATE));
    assert_eq!(w.str("db.mysql.blocker.state"), Some("Sleep"));
    assert_eq!(
        (w.str("db.mysql.lock.table"), w.str("db.mysql.lock.index")),
        (Some("shop.t"), Some("PRIMARY"))
    );
    assert_eq!(
        (
            w.str("db.mysql.lock.mode"),
            w.str("db.mysql.blocker.lock_mode")
        ),
        (Some("X"), Some("X"))
    );
    // Linked to A's transaction as A's client ran it.
    let a_txns = transactions(&spans, CLIENT, a.conn);
    assert_eq!(a_txns.len(), 1, "{}", dump(&a_txns));
    assert_eq!(w.links.len(), 1, "{:?}", w.links);
    assert_eq!(
        (&w.links[0].trace_id, &w.links[0].span_id),
        (&a_txns[0].trace_id, &a_txns[0].span_id)
    );
    assert_eq!(
        w.links[0].attrs.get("dbtel.link.type"),
        Some(&Value::Str("blocked_by".into()))
    );
    // Contention on B's statements, client and server.
    assert!(
        server.event_names().contains(&"lock_contention_detected"),
        "{:?}",
        server.event_names()
    );
    // A's transaction, committed, encloses its update.
    assert_eq!(a_txns[0].str("db.transaction.outcome"), Some("committed"));
}

#[test]
fn deadlock_timeout_and_metadata_lock_between_traced_clients() {
    require_root();
    let db = prepared();

    // Deadlock: the victim's UPDATE fails with 1213 on both sides, its wait
    // ends in a deadlock naming both connections, and its retry is counted.
    let (sides, spans) = scenario(&db, "deadlock");
    let (victim, other) = match (&sides["A"].errors[..], &sides["B"].errors[..]) {
        ([1213], []) => (&sides["A"], &sides["B"]),
        ([], [1213]) => (&sides["B"], &sides["A"]),
        _ => panic!("one victim: {sides:?}"),
    };
    assert!(victim.retried);
    let failed = statements(&spans, CLIENT, victim.conn)
        .into_iter()
        .find(|s| s.str("error.type") == Some("1213"))
        .expect("the victim's failed UPDATE");
    let server = server_of(&spans, failed);
    assert_eq!(server.str("error.type"), Some("1213"));
    let w = wait_under(&spans, server);
    assert_eq!(w.str("db.mysql.lock.outcome"), Some("deadlock"));
    // (It lasted less than the catalog's grace: the deadlock event names the other side.)
    let ev = server
        .events
        .iter()
        .find(|e| e.name == "deadlock_detected")
        .expect("deadlock_detected");
    assert_eq!(
        ev.attrs.get("db.mysql.deadlock.victim.connection_id"),
        Some(&Value::Int(victim.conn as i64))
    );
    assert_eq!(
        ev.attrs.get("db.mysql.deadlock.other.connection_id"),
        Some(&Value::Int(other.conn as i64))
    );
    // Both queries: the victim's, and what the other's client runs.
    for side in ["victim", "other"] {
        assert_eq!(
            ev.attrs.get(&format!("db.mysql.deadlock.{side}.query")),
            Some(&Value::Str(UPDATE.into())),
            "{side}"
        );
    }
    // The same event on the victim's wait.
    let on_wait = w
        .events
        .iter()
        .find(|e| e.name == "deadlock_detected")
        .expect("deadlock_detected on the wait");
    assert_eq!(on_wait.attrs, ev.attrs);
    // The other side is traced: its client span is named.
    let other_update = statements(&spans, CLIENT, other.conn)
        .into_iter()
        .filter(|s| s.text() == UPDATE)
        .nth(1)
        .expect("the other's second UPDATE");
    let hex = other_update
        .span_id
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    assert_eq!(
        ev.attrs.get("db.mysql.deadlock.other.span_id"),
        Some(&Value::Str(hex))
    );
    let txns = transactions(&spans, CLIENT, victim.conn);
    let outcomes: Vec<(Option<&str>, Option<i64>)> = txns
        .iter()
        .map(|t| {
            (
                t.str("db.transaction.outcome"),
                t.int("db.transaction.retry_count"),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [(Some("rolled_back"), Some(0)), (Some("committed"), Some(1))],
        "{}",
        dump(&txns)
    );

    // Lock wait timeout: B's UPDATE waits a second behind A, then 1205.
    let (sides, spans) = scenario(&db, "timeout");
    let (a, b) = (&sides["A"], &sides["B"]);
    assert_eq!(
        (a.errors.as_slice(), b.errors.as_slice()),
        (&[][..], &[1205][..])
    );
    let failed = statements(&spans, CLIENT, b.conn)
        .into_iter()
        .find(|s| s.text() == UPDATE)
        .expect("B's UPDATE");
    assert_eq!(failed.str("error.type"), Some("1205"));
    let w = wait_under(&spans, server_of(&spans, failed));
    assert_eq!(w.str("db.mysql.lock.outcome"), Some("lock_wait_timeout"));
    assert!(
        w.duration() >= Duration::from_millis(900),
        "{:?}",
        w.duration()
    );
    assert_eq!(w.int("db.mysql.blocker.connection_id"), Some(a.conn as i64));

    // ALTER TABLE behind A's open transaction: a metadata lock wait, A its blocker.
    let (sides, spans) = scenario(&db, "metadata");
    let (a, b) = (&sides["A"], &sides["B"]);
    assert!(a.errors.is_empty() && b.errors.is_empty(), "{sides:?}");
    let alter = statements(&spans, CLIENT, b.conn)
        .into_iter()
        .find(|s| s.text().starts_with("alter table"))
        .expect("B's ALTER");
    let w = wait_under(&spans, server_of(&spans, alter));
    assert_eq!(
        (w.str("db.mysql.lock.type"), w.str("db.mysql.lock.outcome")),
        (Some("metadata"), Some("granted"))
    );
    assert!(
        w.duration() >= Duration::from_millis(850),
        "{:?}",
        w.duration()
    );
    assert_eq!(
        w.int("db.mysql.blocker.connection_id"),
        Some(a.conn as i64),
        "{}",
        dump(&[w])
    );
    assert_eq!(w.str("db.mysql.blocker.lock_mode"), Some("MDL_SHARED_READ"));
    assert_eq!(w.str("db.mysql.lock.table"), Some("shop.t"));
    let a_txns = transactions(&spans, CLIENT, a.conn);
    assert_eq!(a_txns.len(), 1, "{}", dump(&a_txns));
    assert_eq!(
        w.links.first().map(|l| &l.span_id),
        Some(&a_txns[0].span_id)
    );
}
