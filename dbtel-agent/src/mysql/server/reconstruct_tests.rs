//! Server hits as the probes send them (encoded, then decoded), and the
//! spans they must give: names, attributes, parents, times.

use dbtel_common::{mysite, Kind};
use opentelemetry::KeyValue;

use super::*;
use crate::{
    events::{self, encode, Origin},
    pipeline::dbspan::Kind as SpanKind,
};

const SRV: u32 = 900;
const T1: u32 = 901;
const T2: u32 = 902;
const CID: u64 = 42;
/// The other member of a deadlock cycle.
const OTHER: u64 = 77;

/// server_status
const AC: u64 = 0x2;
const TX: u64 = 0x3;
const MORE: u64 = 0x8;
/// Diagnostics_area status
const OK: u64 = 1;
const EOF: u64 = 2;
const ERR: u64 = 5;
const PREPARED: u64 = 6;
/// thd_wait_begin types
const ROW: u64 = 3;
const MDL: u64 = 5;

/// One end_statement's arguments.
#[derive(Clone, Copy)]
struct End {
    cid: u64,
    text: Option<&'static str>,
    status: u64,
    errno: u64,
    server_status: u64,
    start_us: u64,
    command: u64,
    affected: u64,
    sent: u64,
}

impl End {
    fn query(text: &'static str) -> Self {
        End {
            cid: CID,
            text: Some(text),
            status: OK,
            errno: 0,
            server_status: AC,
            start_us: 0,
            command: 3,
            affected: 0,
            sent: 0,
        }
    }
    fn rows(mut self, sent: u64) -> Self {
        (self.status, self.sent) = (EOF, sent);
        self
    }
    fn affected(mut self, n: u64) -> Self {
        self.affected = n;
        self
    }
    fn status(mut self, server_status: u64) -> Self {
        self.server_status = server_status;
        self
    }
    fn error(mut self, errno: u64) -> Self {
        (self.status, self.errno) = (ERR, errno);
        self
    }
    fn command(mut self, command: u64) -> Self {
        self.command = command;
        self
    }
    fn args(&self) -> [u64; dbtel_common::USDT_MAX_ARGS] {
        let len = self.text.map_or(0, |t| t.len() as u64);
        [
            self.cid,
            0x7f00_0000_1000,
            len,
            self.errno,
            self.status,
            self.server_status,
            self.start_us,
            self.command,
            self.affected,
            self.sent,
        ]
    }
}

/// Replays one server's hits; `client` plays a traced client of connection CID.
struct R {
    t: Tracker,
    out: Vec<DbSpan>,
    /// CLOCK_MONOTONIC ns of the next hit.
    now: u64,
    client: Option<Ids>,
    /// The traced client of connection OTHER.
    other: Option<Ids>,
}

impl R {
    fn new() -> Self {
        R {
            t: Tracker::new("mariadb", Text::Obfuscated, IdGen::seeded(1)),
            out: vec![],
            now: 5_000_000_000,
            client: None,
            other: None,
        }
    }

    fn hit(
        &mut self,
        tid: u32,
        site: u32,
        args: [u64; dbtel_common::USDT_MAX_ARGS],
        text: Option<&str>,
    ) {
        let at = Origin {
            pid: SRV,
            tid,
            ts_ns: self.now,
            conn: u64::from(SRV),
        };
        let bytes = encode::server_of(Kind::MyServer, at, site, args, text);
        let (h, at) = events::header(&bytes).expect("header");
        let hit = events::server_hit(&h, at, &bytes).expect("decodes");
        let (c, o) = (self.client, self.other);
        self.t.on_hit(
            &hit,
            &mut move |q| match q.connection_id() {
                CID => c,
                OTHER => o,
                _ => None,
            },
            &|_| None,
            &mut self.out,
        );
    }

    fn after(&mut self, us: u64) -> u64 {
        self.now += us * 1000;
        self.now
    }

    /// A statement starts now: its start_utime.
    fn start(&mut self) -> u64 {
        self.now / 1000
    }

    /// An end_statement on `tid`, `us` µs from now: its time.
    fn end(&mut self, tid: u32, us: u64, e: End) -> u64 {
        self.after(us);
        self.hit(tid, mysite::STATEMENT_DONE, e.args(), e.text);
        self.now
    }

    /// A statement of `us` µs on T1: (start, end) in ns.
    fn run(&mut self, us: u64, mut e: End) -> (u64, u64) {
        e.start_us = self.start();
        let end = self.end(T1, us, e);
        (e.start_us * 1000, end)
    }

    /// A wait of `us` µs on `tid`: (begin, end) in ns.
    fn wait(&mut self, tid: u32, kind: u64, us: u64) -> (u64, u64) {
        let begin = self.now;
        self.hit(
            tid,
            mysite::WAIT_BEGIN,
            [0x7000_0000, kind, 0, 0, 0, 0, 0, 0, 0, 0],
            None,
        );
        self.after(us);
        self.hit(
            tid,
            mysite::WAIT_END,
            [0x7000_0000, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            None,
        );
        (begin, self.now)
    }

    /// The login's end_statement (command 11): the session starts outside a transaction.
    fn login(&mut self, cid: u64) {
        let mut e = End::query("").command(11);
        (e.cid, e.text, e.start_us) = (cid, None, self.start());
        self.end(T1, 10, e);
    }

    fn take(&mut self) -> Vec<DbSpan> {
        std::mem::take(&mut self.out)
    }
}

/// A row lock wait of connection `cid` on `tid` (InnoDB names its THD), `us` µs: (begin, end).
fn row_wait_of(r: &mut R, tid: u32, cid: u64, us: u64) -> (u64, u64) {
    let begin = r.now;
    r.hit(
        tid,
        mysite::WAIT_BEGIN,
        [0x7000_0000, ROW, cid, 0, 0, 0, 0, 0, 0, 0],
        None,
    );
    r.after(us);
    r.hit(
        tid,
        mysite::WAIT_END,
        [0x7000_0000, cid, 0, 0, 0, 0, 0, 0, 0, 0],
        None,
    );
    (begin, r.now)
}

fn get(s: &DbSpan, k: &str) -> Option<String> {
    s.attribute(k).map(|v| v.to_string())
}

/// An attribute of the deadlock_detected event on a victim's statement.
fn deadlock_attr(s: &DbSpan, k: &str) -> Option<String> {
    let ev = s
        .events
        .iter()
        .find(|e| e.name == "deadlock_detected")
        .expect("deadlock_detected on the victim's statement");
    ev.attributes
        .iter()
        .find(|kv| kv.key.as_str() == k)
        .map(|kv| kv.value.to_string())
}

fn names(spans: &[DbSpan]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

/// The attributes every statement span of connection CID on T1 ends with.
fn who() -> [KeyValue; 3] {
    [
        KeyValue::new("db.mysql.connection_id", 42i64),
        KeyValue::new("process.pid", 900i64),
        KeyValue::new("thread.id", 901i64),
    ]
}

#[test]
fn an_autocommit_statement_is_one_root_server_span() {
    let mut r = R::new();
    let (s, e) = r.run(250, End::query("SELECT a FROM t WHERE id = 5").rows(1));
    let (s2, e2) = r.run(
        120,
        End::query("UPDATE t SET v = v + 1 WHERE id = 7").affected(3),
    );
    let out = r.take();
    assert_eq!(names(&out), ["SELECT t", "UPDATE t"]);
    let q = &out[0];
    assert_eq!(
        (
            q.kind,
            q.pid,
            q.start_ns,
            q.end_ns,
            q.ids.parent_span_id,
            q.error.as_deref()
        ),
        (SpanKind::Server, SRV, s, e, 0, None)
    );
    assert_eq!(e - s, 250_000);
    let mut want = vec![KeyValue::new("db.system.name", "mariadb")];
    want.extend(who());
    want.extend([
        KeyValue::new("db.response.returned_rows", 1i64),
        // The text's facts: a block its spans share, exported after.
        KeyValue::new("db.operation.name", "SELECT"),
        KeyValue::new("db.collection.name", "t"),
        KeyValue::new("db.query.summary", "SELECT t"),
        KeyValue::new("db.query.text", "SELECT a FROM t WHERE id = ?"),
    ]);
    assert_eq!(q.exported_attributes(), want);
    let u = &out[1];
    assert_eq!(
        (u.start_ns, u.end_ns, u.affected_rows(), u.rows()),
        (s2, e2, Some(3), None)
    );
    assert_eq!(
        get(u, "db.query.text").as_deref(),
        Some("UPDATE t SET v = v + ? WHERE id = ?")
    );
    assert_ne!(q.ids.trace_id, u.ids.trace_id, "each its own trace");
    assert_eq!(r.t.counters.statements, 2);
}

#[test]
fn a_text_of_several_statements_is_a_span_each_up_to_the_one_that_failed() {
    // "select 1; select 2; select nosuchcol from dual; select 4": the server
    // stops at the error, and the failed one says no MORE_RESULTS.
    let mut r = R::new();
    let (s1, e1) = r.run(30, End::query("select 1").rows(1).status(AC | MORE));
    assert!(r.out.is_empty(), "held until the next end says what it was");
    let (s2, e2) = r.run(40, End::query("select 2").rows(1).status(AC | MORE));
    assert_eq!(
        names(&r.out),
        ["SELECT"],
        "another start: the first was a statement of its own"
    );
    let (s3, e3) = r.run(50, End::query("select nosuchcol from dual").error(1054));
    let out = r.take();
    assert_eq!(names(&out), ["SELECT", "SELECT", "SELECT dual"]);
    let times: Vec<(u64, u64)> = out.iter().map(|s| (s.start_ns, s.end_ns)).collect();
    assert_eq!(times, [(s1, e1), (s2, e2), (s3, e3)]);
    assert!(out.iter().all(|s| s.ids.parent_span_id == 0));
    assert_eq!(
        (out[0].rows(), out[1].rows(), out[2].rows()),
        (Some(1), Some(1), None)
    );
    let f = &out[2];
    assert_eq!(f.error.as_deref(), Some("1054"));
    assert_eq!(
        (get(f, "db.response.status_code").as_deref(), f.error_type()),
        (Some("1054"), Some("1054"))
    );
    assert!(r.t.counters.statements == 3 && r.t.counters.inner_results == 0);
}

#[test]
fn a_call_with_two_result_sets_is_one_span_and_its_waits_are_its_own() {
    let mut r = R::new();
    let start = r.start();
    // Its result sets' ends come with the CALL's start_utime; then its own end.
    let mut inner = End::query("select * from t").rows(2).status(AC | MORE);
    inner.start_us = start;
    r.end(T1, 100, inner);
    let (wb, we) = r.wait(T1, ROW, 300);
    inner.text = Some("select 2");
    r.end(T1, 100, inner);
    let mut own = End::query("call p(5)");
    own.start_us = start;
    let end = r.end(T1, 50, own);
    let out = r.take();
    assert_eq!(
        names(&out),
        ["lock wait row", "CALL"],
        "named as the client names it"
    );
    let (w, c) = (&out[0], &out[1]);
    assert_eq!(
        (c.start_ns, c.end_ns, c.rows(), c.error.as_deref()),
        (start * 1000, end, None, None)
    );
    assert_eq!(get(c, "db.query.text").as_deref(), Some("call p(?)"));
    assert_eq!(
        (w.start_ns, w.end_ns, w.ids.parent_span_id, w.ids.trace_id),
        (wb, we, c.ids.span_id, c.ids.trace_id)
    );
    assert_eq!(get(w, "db.mysql.lock.outcome").as_deref(), Some("granted"));
    assert_eq!(r.t.counters.inner_results, 2);
    // A CALL inside a text of several: its result sets, its own end, then the next statement.
    let start = r.start();
    inner.start_us = start;
    r.end(T1, 100, inner);
    own.start_us = start;
    own.server_status = AC | MORE;
    let call_end = r.end(T1, 10, own);
    assert!(r.out.is_empty());
    r.run(10, End::query("select 3").rows(1));
    let out = r.take();
    assert_eq!(names(&out), ["CALL", "SELECT"]);
    assert_eq!((out[0].start_ns, out[0].end_ns), (start * 1000, call_end));
}

#[test]
fn a_prepare_and_its_execution() {
    let mut r = R::new();
    let text = "SELECT a FROM t WHERE id = ?";
    let mut p = End::query(text).command(22);
    p.status = PREPARED; // a successful COM_STMT_PREPARE wrote its own reply
    let (ps, pe) = r.run(80, p);
    let (xs, xe) = r.run(90, End::query(text).command(23).rows(1));
    r.run(
        20,
        End::query("SELECT a FROM nope WHERE id = ?")
            .command(22)
            .error(1146),
    );
    let out = r.take();
    assert_eq!(
        names(&out),
        ["PREPARE SELECT t", "SELECT t", "PREPARE SELECT nope"]
    );
    let mut want = vec![
        KeyValue::new("db.system.name", "mariadb"),
        KeyValue::new("db.operation.name", "PREPARE"),
        KeyValue::new("db.collection.name", "t"),
        KeyValue::new("db.query.summary", "PREPARE SELECT t"),
        KeyValue::new("db.query.text", text),
    ];
    want.extend(who());
    assert_eq!(
        (out[0].start_ns, out[0].end_ns, out[0].error.as_deref()),
        (ps, pe, None)
    );
    assert_eq!(out[0].attributes, want);
    assert_eq!(
        (
            out[1].start_ns,
            out[1].end_ns,
            out[1].rows(),
            out[1].operation()
        ),
        (xs, xe, Some(1), Some("SELECT"))
    );
    assert_eq!(
        (out[2].error.as_deref(), out[2].error_type()),
        (Some("1146"), Some("1146"))
    );
}

#[test]
fn logins_read_errors_and_other_commands_make_no_span() {
    let mut r = R::new();
    r.login(CID);
    let mut killed = End::query("").command(0).error(1158);
    killed.text = None;
    r.end(T1, 10, killed);
    let mut ping = End::query("").command(14);
    ping.text = None;
    r.end(T1, 10, ping);
    assert!(r.out.is_empty());
    assert_eq!(r.t.counters.other_commands, 1);
    assert_eq!(
        r.t.connections_held(SRV),
        1,
        "the login made the connection known"
    );
}

#[test]
fn begin_update_commit_is_one_server_transaction_parenting_its_statements() {
    let mut r = R::new();
    r.login(CID);
    let (bs, _) = r.run(20, End::query("BEGIN").status(TX));
    r.run(
        300,
        End::query("UPDATE t SET v = 1 WHERE id = 1")
            .status(TX)
            .affected(1),
    );
    let (_, ce) = r.run(500, End::query("COMMIT").status(AC));
    let out = r.take();
    assert_eq!(names(&out), ["BEGIN", "UPDATE t", "COMMIT", "transaction"]);
    let t = &out[3];
    assert_eq!(
        (
            t.kind,
            t.pid,
            t.start_ns,
            t.end_ns,
            t.ids.parent_span_id,
            t.error.as_deref()
        ),
        (SpanKind::Server, SRV, bs, ce, 0, None)
    );
    assert_eq!(
        t.attributes,
        vec![
            KeyValue::new("db.system.name", "mariadb"),
            KeyValue::new("db.mysql.connection_id", 42i64),
            KeyValue::new("db.transaction.outcome", "committed"),
            KeyValue::new("db.transaction.aborted", false),
            KeyValue::new("db.transaction.statement_count", 3i64),
            KeyValue::new("process.pid", 900i64),
        ]
    );
    let events: Vec<(&str, u64)> = t.events.iter().map(|e| (e.name, e.ts_ns)).collect();
    assert_eq!(
        events,
        [("transaction.started", bs), ("transaction.committed", ce)]
    );
    for s in &out[..3] {
        assert_eq!(
            (s.ids.trace_id, s.ids.parent_span_id),
            (t.ids.trace_id, t.ids.span_id),
            "{}",
            s.name
        );
    }
    // After it, autocommit statements are roots again.
    r.run(10, End::query("SELECT 1").rows(1));
    assert_eq!(r.take()[0].ids.parent_span_id, 0);
}

#[test]
fn with_autocommit_off_the_first_transactional_statement_opens_it() {
    let mut r = R::new();
    r.login(CID);
    r.run(10, End::query("SET autocommit=0").status(0));
    r.run(10, End::query("SELECT 1").rows(1).status(0)); // no table: no transaction
    let (ss, _) = r.run(
        100,
        End::query("SELECT v FROM t WHERE id = 1")
            .rows(1)
            .status(0x1),
    );
    r.run(
        100,
        End::query("UPDATE t SET v = 2 WHERE id = 1")
            .affected(1)
            .status(0x1),
    );
    let (_, ce) = r.run(10, End::query("COMMIT").status(0));
    let out = r.take();
    assert_eq!(
        names(&out),
        [
            "SET",
            "SELECT",
            "SELECT t",
            "UPDATE t",
            "COMMIT",
            "transaction"
        ]
    );
    let t = &out[5];
    assert_eq!(
        (
            t.start_ns,
            t.end_ns,
            get(t, "db.transaction.statement_count").as_deref()
        ),
        (ss, ce, Some("3"))
    );
    assert!(out[..2].iter().all(|s| s.ids.parent_span_id == 0));
    assert!(out[2..5]
        .iter()
        .all(|s| s.ids.parent_span_id == t.ids.span_id));
    // SET autocommit=1 commits an open transaction.
    let (ss, _) = r.run(10, End::query("DELETE FROM t WHERE id = 9").status(0x1));
    let (_, se) = r.run(10, End::query("SET autocommit=1").status(AC));
    let out = r.take();
    assert_eq!(names(&out), ["DELETE t", "SET", "transaction"]);
    assert_eq!(
        (
            out[2].start_ns,
            out[2].end_ns,
            get(&out[2], "db.transaction.outcome").as_deref()
        ),
        (ss, se, Some("committed"))
    );
}

#[test]
fn a_deadlock_rolls_the_transaction_back_and_ends_its_wait() {
    let mut r = R::new();
    r.login(CID);
    let (bs, _) = r.run(10, End::query("BEGIN").status(TX));
    let mut u = End::query("UPDATE t SET v = 3 WHERE id = 2")
        .error(1213)
        .status(AC);
    u.start_us = r.start();
    r.after(50);
    let (wb, we) = r.wait(T1, ROW, 400);
    // The detector weighs the two members of the cycle (this one and 77).
    r.hit(
        T1 + 1,
        mysite::DEADLOCK,
        [OTHER, CID, 0, 0, 0, 0, 0, 0, 0, 0],
        None,
    );
    let ue = r.end(T1, 30, u);
    let out = r.take();
    assert_eq!(
        names(&out),
        ["BEGIN", "lock wait t", "UPDATE t", "transaction"]
    );
    let attr = |k: &str| deadlock_attr(&out[2], k);
    assert_eq!(
        (
            attr("db.mysql.deadlock.victim.connection_id"),
            attr("db.mysql.deadlock.other.connection_id")
        ),
        (Some(CID.to_string()), Some(OTHER.to_string()))
    );
    let (w, q, t) = (&out[1], &out[2], &out[3]);
    assert_eq!(
        (t.start_ns, t.end_ns, t.error.as_deref()),
        (bs, ue, Some("1213"))
    );
    for (k, v) in [
        ("db.transaction.outcome", "rolled_back"),
        ("db.transaction.aborted", "true"),
        ("error.type", "1213"),
    ] {
        assert_eq!(get(t, k).as_deref(), Some(v), "{k}");
    }
    assert_eq!(
        t.events.last().map(|e| e.name),
        Some("transaction.rolled_back")
    );
    assert_eq!(
        (q.ids.parent_span_id, q.error.as_deref()),
        (t.ids.span_id, Some("1213"))
    );
    assert_eq!(
        (w.start_ns, w.end_ns, w.ids.parent_span_id),
        (wb, we, q.ids.span_id)
    );
    assert_eq!(
        (get(w, "db.mysql.lock.outcome").as_deref(), w.error_type()),
        (Some("deadlock"), Some("deadlock"))
    );
    assert_eq!(w.error.as_deref(), Some("lock wait ended: deadlock"));
}

#[test]
fn a_deadlock_names_the_others_client_query_of_its_detection_though_it_returned_since() {
    let mut r = R::new();
    r.login(CID);
    r.run(10, End::query("BEGIN").status(TX));
    let mut gen = IdGen::seeded(99);
    let others = gen.root();
    r.other = Some(others);
    let mut u = End::query("UPDATE t SET v = 3 WHERE id = 2")
        .error(1213)
        .status(AC);
    u.start_us = r.start();
    r.after(50);
    r.wait(T1, ROW, 400);
    r.hit(
        T1 + 1,
        mysite::DEADLOCK,
        [OTHER, CID, 0, 0, 0, 0, 0, 0, 0, 0],
        None,
    );
    // The victim's rollback let the other's UPDATE finish: its client
    // returned before the victim's statement ended.
    r.other = None;
    r.end(T1, 30, u);
    let out = r.take();
    let update = out.iter().find(|s| s.name == "UPDATE t").expect("UPDATE");
    let attr = |k: &str| deadlock_attr(update, k);
    assert_eq!(
        (
            attr("db.mysql.deadlock.other.connection_id"),
            attr("db.mysql.deadlock.other.span_id")
        ),
        (
            Some(OTHER.to_string()),
            Some(format!("{:016x}", others.span_id))
        )
    );
}

#[test]
fn a_statement_with_its_client_traced_is_the_client_querys_child() {
    let mut r = R::new();
    let mut gen = IdGen::seeded(99);
    let txn = gen.root();
    let query = txn.child(&mut gen);
    r.client = Some(query);
    r.login(CID);
    r.run(10, End::query("BEGIN").status(TX));
    let out = r.take();
    let (b, t) = (
        &out[0],
        r.t.conns.get((SRV, CID)).unwrap().txn.as_ref().unwrap().ids,
    );
    assert_eq!(
        (b.ids.trace_id, b.ids.parent_span_id),
        (query.trace_id, query.span_id),
        "under the client's query"
    );
    assert_eq!(
        (t.trace_id, t.parent_span_id),
        (txn.trace_id, txn.span_id),
        "the server's transaction under the client's"
    );
    // Another connection's statements are not.
    let mut other = End::query("SELECT 1").rows(1);
    other.cid = 43;
    r.run(10, other);
    assert_eq!(r.take()[0].ids.parent_span_id, 0);
    // With no client query in flight: under the server's transaction.
    r.client = None;
    r.run(10, End::query("SELECT 1").rows(1).status(TX));
    assert_eq!(r.take()[0].ids.parent_span_id, t.span_id);
}

#[test]
fn a_connection_end_forgets_it() {
    let mut r = R::new();
    r.login(CID);
    let (bs, _) = r.run(10, End::query("BEGIN").status(TX));
    let (ss, se) = r.run(10, End::query("select 1").rows(1).status(TX | MORE));
    assert_eq!(names(&r.out), ["BEGIN"]);
    r.after(100);
    r.hit(T1, mysite::CONN_END, [CID, 0, 0, 0, 0, 0, 0, 0, 0, 0], None);
    let gone = r.now;
    let out = r.take();
    assert_eq!(names(&out), ["BEGIN", "SELECT", "transaction"]);
    assert_eq!(
        (out[1].start_ns, out[1].end_ns),
        (ss, se),
        "the statement held ends as it was"
    );
    let t = &out[2];
    assert_eq!((t.start_ns, t.end_ns, t.error.as_deref()), (bs, gone, None));
    assert_eq!(
        get(t, "db.transaction.outcome").as_deref(),
        Some("incomplete")
    );
    assert_eq!(
        t.events.last().map(|e| e.name),
        Some("transaction.incomplete")
    );
    assert_eq!(r.t.connections_held(SRV), 0);
    // The id reused by a new connection starts afresh.
    r.login(CID);
    r.run(10, End::query("SELECT 1").rows(1));
    assert_eq!(r.take()[0].ids.parent_span_id, 0);
}

#[test]
fn the_server_exiting_or_the_agent_stopping_cuts_what_is_open() {
    let mut r = R::new();
    r.login(CID);
    let (bs, _) = r.run(10, End::query("BEGIN").status(TX));
    let (wb, _) = {
        let b = r.now;
        r.hit(
            T1,
            mysite::WAIT_BEGIN,
            [0, ROW, 0, 0, 0, 0, 0, 0, 0, 0],
            None,
        );
        (b, ())
    };
    r.take();
    assert_eq!(r.t.in_flight(), 1);
    let gone = r.after(500);
    let mut out = vec![];
    r.t.process_exited(SRV, gone, &mut out);
    assert_eq!(names(&out), ["transaction", "lock wait row"]);
    assert_eq!(
        (
            out[0].start_ns,
            out[0].end_ns,
            get(&out[0], "db.transaction.outcome").as_deref()
        ),
        (bs, gone, Some("incomplete"))
    );
    let w = &out[1];
    assert_eq!((w.start_ns, w.end_ns, w.ids.parent_span_id), (wb, gone, 0));
    assert_eq!(
        (
            get(w, "db.mysql.lock.outcome").as_deref(),
            w.error.as_deref()
        ),
        (
            Some("process_exited"),
            Some("lock wait ended: process exited")
        )
    );
    assert_eq!(
        get(w, "db.mysql.connection_id"),
        None,
        "its statement never ended: its connection is not known"
    );
    assert_eq!(
        (
            r.t.in_flight(),
            r.t.connections_held(SRV),
            r.t.threads_held(SRV)
        ),
        (0, 0, 0)
    );
    // The agent stopping: not an error.
    r.hit(
        T1,
        mysite::WAIT_BEGIN,
        [0, MDL, 0, 0, 0, 0, 0, 0, 0, 0],
        None,
    );
    let mut out = vec![];
    r.t.cut(SRV, r.now + 1000, Cut::AgentStopped, &mut out);
    assert_eq!(
        (
            get(&out[0], "db.mysql.lock.outcome").as_deref(),
            out[0].error.as_deref()
        ),
        (Some("agent_stopped"), None)
    );
}

#[test]
fn state_stays_bounded() {
    let mut r = R::new();
    // Connections that never end (their CONN_END lost).
    for cid in 0..(CONNECTIONS_PER_SERVER as u64 + 500) {
        r.login(cid + 1000);
    }
    assert_eq!(r.t.connections_held(SRV), CONNECTIONS_PER_SERVER);
    // A thread whose statement never ends, waiting on and on.
    for _ in 0..1000 {
        r.wait(T2, ROW, 1);
    }
    assert_eq!(r.t.waits_held(SRV, T2, CID), (WAITS_PER_THREAD, 0));
    assert_eq!(r.t.waits_dropped(), 1000 - WAITS_PER_THREAD as u64);
    // The same, by connection.
    for _ in 0..1000 {
        row_wait_of(&mut r, T2, CID, 1);
    }
    assert_eq!(
        r.t.waits_held(SRV, T2, CID),
        (WAITS_PER_THREAD, WAITS_PER_THREAD)
    );
    assert_eq!(r.t.waits_dropped(), 2 * (1000 - WAITS_PER_THREAD as u64));
    // Threads left waiting (their ends lost).
    for tid in 0..(THREADS_PER_SERVER as u32 + 100) {
        r.hit(
            5000 + tid,
            mysite::WAIT_BEGIN,
            [0, ROW, 0, 0, 0, 0, 0, 0, 0, 0],
            None,
        );
    }
    assert_eq!(r.t.threads_held(SRV), THREADS_PER_SERVER);
    // Non-lock waits are not kept at all.
    r.hit(
        T1,
        mysite::WAIT_BEGIN,
        [0, 11, CID + 1, 0, 0, 0, 0, 0, 0, 0],
        None,
    );
    assert_eq!(r.t.waits_held(SRV, T1, CID + 1), (0, 0));
    assert!(r.out.is_empty());
}

#[test]
fn begin_inside_a_transaction_commits_it_and_ddl_commits_implicitly() {
    let mut r = R::new();
    r.login(CID);
    let (b1, _) = r.run(10, End::query("BEGIN").status(TX));
    r.run(
        10,
        End::query("INSERT INTO t VALUES (1)")
            .affected(1)
            .status(TX),
    );
    let (b2, _) = r.run(10, End::query("START TRANSACTION").status(TX));
    let out = r.take();
    assert_eq!(names(&out), ["BEGIN", "INSERT t", "transaction", "START"]);
    assert_eq!(
        (
            out[2].start_ns,
            out[2].end_ns,
            get(&out[2], "db.transaction.outcome").as_deref()
        ),
        (b1, b2, Some("committed"))
    );
    assert_eq!(
        out[3].ids.parent_span_id,
        r.t.conns
            .get((SRV, CID))
            .unwrap()
            .txn
            .as_ref()
            .unwrap()
            .ids
            .span_id,
        "the next one's"
    );
    // A failed DDL statement still committed before it ran.
    let (_, de) = r.run(
        10,
        End::query("CREATE TABLE t (a int)").error(1050).status(AC),
    );
    let out = r.take();
    assert_eq!(names(&out), ["CREATE t", "transaction"]);
    assert_eq!(
        (out[1].start_ns, out[1].end_ns, out[1].error.as_deref()),
        (b2, de, None)
    );
    assert_eq!(
        get(&out[1], "db.transaction.outcome").as_deref(),
        Some("committed")
    );
    // COMMIT AND CHAIN: the next one opens at its end.
    r.run(10, End::query("BEGIN").status(TX));
    let (_, ce) = r.run(10, End::query("COMMIT AND CHAIN").status(TX));
    let (_, re) = r.run(10, End::query("ROLLBACK").status(AC));
    let out = r.take();
    assert_eq!(
        names(&out),
        ["BEGIN", "COMMIT", "transaction", "ROLLBACK", "transaction"]
    );
    assert_eq!(
        (
            out[4].start_ns,
            out[4].end_ns,
            get(&out[4], "db.transaction.outcome").as_deref()
        ),
        (ce, re, Some("rolled_back"))
    );
    assert_eq!(
        get(&out[4], "db.transaction.statement_count").as_deref(),
        Some("1")
    );
}

#[path = "reconstruct_wait_tests.rs"]
mod waits;

fn session() -> Option<Session> {
    Some(Session {
        user: "app".into(),
        host: "localhost".into(),
        db: Some("shop".into()),
        ip: None,
    })
}

/// A connection too short for the catalog: PROCESSLIST no longer has it
/// (the answer is None) while its end is still on its way; its spans wait
/// for what it says as it ends (end_connection's sites), and get that.
#[test]
fn a_short_connection_says_who_it_was_as_it_ends() {
    for (address, transport, client) in [
        (None, "unix", None),
        (Some("10.0.0.7"), "tcp", Some("10.0.0.7")),
    ] {
        let mut r = R::new();
        r.t.asking = true;
        r.login(CID);
        r.run(10, End::query("select 1").rows(1));
        r.run(10, End::query("select 2").rows(1));
        let mut out = r.take();
        r.t.session((SRV, CID), None, &mut out);
        assert!(out.is_empty(), "gone from PROCESSLIST: still held");
        let args = [CID, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        r.hit(T1, mysite::SESSION_USER, args, Some("app"));
        r.hit(T1, mysite::SESSION_DB, args, Some("shop"));
        r.hit(T1, mysite::SESSION_ADDRESS, args, address);
        assert!(r.out.is_empty());
        r.hit(T1, mysite::CONN_END, args, None);
        let out = r.take();
        assert_eq!(names(&out), ["SELECT", "SELECT"]);
        for s in &out {
            assert_eq!(
                (
                    get(s, "user.name").as_deref(),
                    get(s, "db.namespace").as_deref(),
                    get(s, "network.transport").as_deref(),
                    get(s, "client.address").as_deref()
                ),
                (Some("app"), Some("shop"), Some(transport), client)
            );
        }
        // The catalog's late answer finds nothing left to hold.
        let mut late = vec![];
        r.t.session((SRV, CID), session(), &mut late);
        assert!(late.is_empty());
    }

    // Known from the catalog: what it says at its end changes nothing.
    let mut r = R::new();
    r.t.asking = true;
    r.login(CID);
    let mut out = vec![];
    r.t.session((SRV, CID), session(), &mut out);
    r.run(10, End::query("select 1").rows(1));
    let args = [CID, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    r.hit(T1, mysite::SESSION_USER, args, Some("other"));
    r.hit(T1, mysite::CONN_END, args, None);
    let out = r.take();
    assert_eq!(get(&out[0], "user.name").as_deref(), Some("app"));

    // No database and no end said (an older build): the wait's end releases them.
    let mut r = R::new();
    r.t.asking = true;
    r.login(CID);
    r.run(10, End::query("select 1").rows(1));
    let mut out = vec![];
    r.t.session((SRV, CID), None, &mut out);
    assert!(out.is_empty());
    r.t.release_held(r.now + sessions::HOLD_NS, &mut out);
    assert_eq!(names(&out), ["SELECT"]);
    assert!(get(&out[0], "user.name").is_none());
}

/// With a catalog, a new connection's spans wait for its session; the
/// answer releases them with their attributes, and later spans get them as
/// they are made. The wait is bounded: past HELD_MAX the oldest go without.
#[test]
fn spans_wait_for_their_session_within_bounds() {
    let mut r = R::new();
    r.t.asking = true;
    r.login(CID);
    assert_eq!(r.t.session_asks, [(SRV, CID)]);
    for _ in 0..3 {
        r.run(10, End::query("select 1").rows(1));
    }
    assert!(r.out.is_empty(), "held until the session is known");
    let mut out = r.take();
    r.t.session((SRV, CID), session(), &mut out);
    assert_eq!(out.len(), 3);
    assert!(out
        .iter()
        .all(|s| get(s, "user.name").as_deref() == Some("app")
            && get(s, "db.namespace").as_deref() == Some("shop")));
    r.run(10, End::query("select 2").rows(1));
    let later = r.take();
    assert_eq!(later.len(), 1);
    assert_eq!(
        get(&later[0], "network.transport").as_deref(),
        Some("unix"),
        "added as it is made"
    );

    // Another connection whose answer never comes: at most HELD_MAX held.
    let mut r = R::new();
    r.t.asking = true;
    r.login(CID);
    for _ in 0..sessions::HELD_MAX + 5 {
        r.run(10, End::query("select 1").rows(1));
    }
    let out = r.take();
    assert_eq!(out.len(), 5, "the oldest five went without");
    assert!(out.iter().all(|s| get(s, "user.name").is_none()));
    let mut released = vec![];
    r.t.release_held(r.now + sessions::HOLD_NS, &mut released);
    assert_eq!(
        released.len(),
        sessions::HELD_MAX,
        "the rest, once the wait is over"
    );
}
