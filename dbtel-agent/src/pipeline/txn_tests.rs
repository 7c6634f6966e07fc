use super::*;

/// (name, attributes, error) of a transaction on a connection of no known details.
fn describe(t: &TxnSpan) -> (String, Vec<KeyValue>, Option<String>) {
    let d = super::describe(t, "postgresql", &[]);
    (d.name.into(), d.attributes, d.error)
}

#[test]
fn verbs() {
    let cases: &[(&str, Verb)] = &[
        ("BEGIN", Verb::Begin),
        ("  begin work", Verb::Begin),
        (
            "BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Verb::Begin,
        ),
        ("begin;", Verb::Begin),
        (
            "-- psycopg\n/* a /* nested */ comment */ Start Transaction read only",
            Verb::Begin,
        ),
        ("START", Verb::Other),
        ("COMMIT", Verb::Commit),
        ("commit transaction", Verb::Commit),
        ("END", Verb::Commit),
        ("end work;", Verb::Commit),
        ("COMMIT PREPARED 'x'", Verb::Other),
        ("ROLLBACK", Verb::Rollback),
        ("abort", Verb::Rollback),
        ("rollback work", Verb::Rollback),
        ("ROLLBACK PREPARED 'x'", Verb::Other),
        ("PREPARE TRANSACTION 'g1'", Verb::PrepareTransaction),
        ("prepare transaction 'g1';", Verb::PrepareTransaction),
        ("PREPARE q AS SELECT 1", Verb::Other),
        ("ROLLBACK TO SAVEPOINT sp1", Verb::RollbackTo("sp1".into())),
        (
            "rollback transaction to Sp1",
            Verb::RollbackTo("sp1".into()),
        ),
        ("ROLLBACK TO \"My SP\"", Verb::RollbackTo("My SP".into())),
        ("SAVEPOINT s_2", Verb::Savepoint("s_2".into())),
        ("savepoint", Verb::Other),
        ("RELEASE SAVEPOINT s", Verb::Release("s".into())),
        ("release s", Verb::Release("s".into())),
        ("select 1", Verb::Other),
        ("\"begin\"", Verb::Other),
        ("DO $$ BEGIN END $$", Verb::Other),
        ("", Verb::Other),
        ("/* unterminated", Verb::Other),
        ("(select 1)", Verb::Other),
    ];
    for (text, want) in cases {
        assert_eq!(&verb(text), want, "{text:?}");
    }
}

const K: Key = (7, 0x10);

/// Drives a tracker statement by statement: each takes 1 ms, with `gap` ns between.
struct Drive {
    t: Tracker,
    gen: IdGen,
    now: u64,
    out: Vec<TxnSpan>,
    ids: Vec<Ids>,
}

impl Drive {
    fn new() -> Self {
        Drive {
            t: Tracker::new(),
            gen: IdGen::seeded(1),
            now: 1_000_000,
            out: vec![],
            ids: vec![],
        }
    }
    /// MySQL's rule: a failed statement does not abort the transaction.
    fn mysql() -> Self {
        Drive {
            t: Tracker::with_errors_abort(false),
            ..Self::new()
        }
    }
    fn stmt(&mut self, text: &str, gap: u64, err: Option<&str>, tag: Option<&str>) -> &mut Self {
        self.now += gap;
        let v = verb(text);
        let ids = self.t.query_started(K, &v, self.now, &mut self.gen);
        self.ids.push(ids);
        self.now += 1_000_000;
        self.t.query_ended(
            K,
            &ids,
            &v,
            self.now,
            err.is_some(),
            err,
            tag,
            &mut self.out,
        );
        self
    }
    fn ok(&mut self, text: &str) -> &mut Self {
        let tag = text.split_whitespace().next().unwrap().to_ascii_uppercase();
        self.stmt(text, 1_000, None, Some(&tag))
    }
    fn fail(&mut self, text: &str, code: &str) -> &mut Self {
        self.stmt(text, 1_000, Some(code), None)
    }
}

fn event_names(t: &TxnSpan) -> Vec<&str> {
    t.events.iter().map(|e| e.name).collect()
}

#[test]
fn committed_transaction_parents_its_statements() {
    let mut d = Drive::new();
    d.ok("select 0")
        .ok("BEGIN")
        .ok("insert 1")
        .ok("SAVEPOINT a")
        .ok("RELEASE a");
    assert!(d.t.current(K).is_some());
    d.stmt("update 2", 300_000_000, None, Some("UPDATE 1"))
        .ok("COMMIT")
        .ok("select 3");
    assert_eq!(d.out.len(), 1);
    let t = &d.out[0];
    assert_eq!(
        (t.outcome, t.aborted, t.statements, t.retry_count),
        (Outcome::Committed, false, 6, 0)
    );
    assert_eq!(
        t.idle_ns,
        4 * 1_000 + 300_000_000,
        "gaps between statements, not before BEGIN"
    );
    assert_eq!(t.start_ns, 1_000_000 + 1_000 + 1_000_000 + 1_000);
    assert_eq!(
        event_names(t),
        [
            "transaction.started",
            "transaction.savepoint",
            "transaction.savepoint_released",
            "transaction.committed"
        ]
    );
    assert_eq!(
        t.events[1].attributes,
        vec![KeyValue::new(SAVEPOINT_NAME, "a")]
    );
    let (root_before, inside, root_after) = (d.ids[0], &d.ids[1..7], d.ids[7]);
    assert_eq!(t.ids.parent_span_id, 0);
    assert!(inside
        .iter()
        .all(|i| i.trace_id == t.ids.trace_id && i.parent_span_id == t.ids.span_id));
    for r in [root_before, root_after] {
        assert_eq!(r.parent_span_id, 0);
        assert_ne!(r.trace_id, t.ids.trace_id);
    }
    assert!(d.t.current(K).is_none());
}

#[test]
fn failed_statement_aborts_and_commit_rolls_back() {
    let mut d = Drive::new();
    d.ok("BEGIN")
        .fail("select 1/0", "22012")
        .fail("select 1", "25P02")
        .stmt("COMMIT", 0, None, Some("ROLLBACK"));
    let t = &d.out[0];
    assert_eq!(
        (t.outcome, t.aborted, t.sqlstate.as_deref()),
        (Outcome::RolledBack, true, Some("22012"))
    );
    assert_eq!(
        event_names(t),
        [
            "transaction.started",
            "transaction.aborted",
            "transaction.rolled_back"
        ]
    );
    let (_, attrs, err) = describe(t);
    assert_eq!(err.as_deref(), Some("22012"));
    assert!(attrs.contains(&KeyValue::new("error.type", "22012")));

    // Without the command tag, the aborted state decides.
    let mut d = Drive::new();
    d.ok("BEGIN")
        .fail("x", "22012")
        .stmt("COMMIT", 0, None, None);
    assert_eq!(d.out[0].outcome, Outcome::RolledBack);
}

#[test]
fn rollback_to_savepoint_recovers() {
    let mut d = Drive::new();
    d.ok("BEGIN")
        .ok("SAVEPOINT s")
        .fail("insert dup", "23505")
        .ok("ROLLBACK TO SAVEPOINT s")
        .stmt("COMMIT", 0, None, None);
    let t = &d.out[0];
    assert_eq!((t.outcome, t.aborted), (Outcome::Committed, true));
    assert_eq!(
        event_names(t),
        [
            "transaction.started",
            "transaction.savepoint",
            "transaction.aborted",
            "transaction.rolled_back_to_savepoint",
            "transaction.committed"
        ]
    );
    assert_eq!(describe(t).2, None);
}

#[test]
fn describe_names_the_connection_and_the_outcome() {
    let mut d = Drive::new();
    d.ok("BEGIN")
        .stmt("select", 2_500_000, None, None)
        .ok("COMMIT");
    let t = d.out.pop().unwrap();
    // The connection's attributes come from its engine (postgres::libpq::attributes).
    let conn = [
        KeyValue::new("db.namespace", "shop"),
        KeyValue::new("server.address", "10.0.0.1"),
    ];
    let super::Described {
        name,
        attributes: attrs,
        error: err,
        ..
    } = super::describe(&t, "postgresql", &conn);
    assert_eq!((name.as_str(), err), ("transaction", None));
    for kv in [
        KeyValue::new("db.system.name", "postgresql"),
        KeyValue::new("db.transaction.outcome", "committed"),
        KeyValue::new("db.transaction.aborted", false),
        KeyValue::new("db.transaction.statement_count", 3i64),
        KeyValue::new("db.transaction.idle_time_ms", 2.501),
        KeyValue::new("db.transaction.retry_count", 0i64),
        KeyValue::new("process.pid", 7i64),
        KeyValue::new("db.namespace", "shop"),
        KeyValue::new("server.address", "10.0.0.1"),
    ] {
        assert!(attrs.contains(&kv), "{kv:?} in {attrs:?}");
    }
    assert!(!attrs.iter().any(|kv| kv.key.as_str() == "error.type"));
}

#[test]
fn explicit_rollback_is_not_an_error() {
    let mut d = Drive::new();
    d.ok("BEGIN").ok("delete x").ok("ROLLBACK");
    let t = &d.out[0];
    assert_eq!(
        (t.outcome, t.aborted, t.statements),
        (Outcome::RolledBack, false, 3)
    );
    let (name, attrs, err) = describe(t);
    assert_eq!((name.as_str(), err), ("transaction", None));
    assert!(attrs.contains(&KeyValue::new("db.transaction.outcome", "rolled_back")));
}

#[test]
fn prepare_transaction_ends_the_block_as_prepared() {
    let mut d = Drive::new();
    d.ok("BEGIN")
        .ok("insert 1")
        .ok("PREPARE TRANSACTION 'g1'")
        .ok("COMMIT PREPARED 'g1'");
    assert_eq!(d.out.len(), 1, "COMMIT PREPARED runs outside any block");
    let t = &d.out[0];
    assert_eq!(
        (t.outcome, t.aborted, t.statements),
        (Outcome::Prepared, false, 3)
    );
    assert_eq!(event_names(t).last(), Some(&"transaction.prepared"));
    let (_, attrs, err) = describe(t);
    assert_eq!(err, None);
    assert!(attrs.contains(&KeyValue::new("db.transaction.outcome", "prepared")));
    // Preparing an aborted block: the server rolls it back (tag ROLLBACK).
    let mut d = Drive::new();
    d.ok("BEGIN").fail("insert 1", "23505").stmt(
        "PREPARE TRANSACTION 'g2'",
        1_000,
        None,
        Some("ROLLBACK"),
    );
    assert_eq!(
        (d.out[0].outcome, d.out[0].sqlstate.as_deref()),
        (Outcome::RolledBack, Some("23505"))
    );
}

#[test]
fn serialization_failures_chain_retries() {
    let mut d = Drive::new();
    d.ok("BEGIN").fail("update", "40001").ok("ROLLBACK"); // fails at a statement
    d.ok("BEGIN").ok("update").fail("COMMIT", "40001"); // fails at commit
    d.ok("select 1"); // autocommit in between does not break the chain
    d.ok("BEGIN").fail("update", "40P01").ok("ROLLBACK");
    d.ok("BEGIN").ok("update").ok("COMMIT");
    d.ok("BEGIN").ok("COMMIT");
    d.ok("BEGIN").fail("update", "40001").ok("ROLLBACK");
    d.ok("BEGIN").fail("x", "22012").ok("ROLLBACK"); // unrelated failure: still a retry, ends the chain
    d.ok("BEGIN").ok("COMMIT");
    let got: Vec<_> = d
        .out
        .iter()
        .map(|t| (t.retry_count, t.outcome, t.sqlstate.as_deref()))
        .collect();
    use Outcome::*;
    assert_eq!(
        got,
        [
            (0, RolledBack, Some("40001")),
            (1, RolledBack, Some("40001")),
            (2, RolledBack, Some("40P01")),
            (3, Committed, None),
            (0, Committed, None),
            (0, RolledBack, Some("40001")),
            (1, RolledBack, Some("22012")),
            (0, Committed, None),
        ]
    );
    let (_, attrs, _) = describe(&d.out[3]);
    assert!(attrs.contains(&KeyValue::new("db.transaction.retry_count", 3i64)));
}

#[test]
fn close_and_exit_leave_transactions_incomplete() {
    let mut d = Drive::new();
    d.ok("BEGIN").ok("update");
    let mut out = vec![];
    d.t.conn_closed(K, 99_000_000, &mut out);
    assert_eq!(
        (out[0].outcome, out[0].end_ns),
        (Outcome::Incomplete, 99_000_000)
    );
    assert_eq!(describe(&out[0]).2.as_deref(), Some("dbtel.incomplete"));
    d.ok("BEGIN");
    d.t.process_exited(8, 1, &mut out); // another process
    assert_eq!(out.len(), 1);
    d.t.process_exited(7, 100_000_000, &mut out);
    assert_eq!(
        (out.len(), out[1].outcome, out[1].statements),
        (2, Outcome::Incomplete, 1)
    );
    assert!(d.t.current(K).is_none());
}

#[test]
fn pipelined_statements_are_not_idle_and_nested_begin_stays_inside() {
    let mut t = Tracker::new();
    let mut g = IdGen::seeded(3);
    let mut out = vec![];
    let b = t.query_started(K, &Verb::Begin, 10, &mut g);
    let q1 = t.query_started(K, &Verb::Other, 20, &mut g); // sent before BEGIN's result
    t.query_ended(
        K,
        &b,
        &Verb::Begin,
        30,
        false,
        None,
        Some("BEGIN"),
        &mut out,
    );
    let again = t.query_started(K, &Verb::Begin, 35, &mut g); // WARNING: already in a transaction
    t.query_ended(K, &q1, &Verb::Other, 40, false, None, None, &mut out);
    t.query_ended(
        K,
        &again,
        &Verb::Begin,
        45,
        false,
        None,
        Some("BEGIN"),
        &mut out,
    );
    let c = t.query_started(K, &Verb::Commit, 50, &mut g);
    t.query_ended(
        K,
        &c,
        &Verb::Commit,
        60,
        false,
        None,
        Some("COMMIT"),
        &mut out,
    );
    assert_eq!(
        out[0].idle_ns, 5,
        "only the gap 45→50 had nothing in flight"
    );
    assert!([b, q1, again]
        .iter()
        .all(|i| i.parent_span_id == out[0].ids.span_id));
    assert_eq!(out[0].statements, 4);
}

/// libpq's pipeline mode: whole blocks are sent before any result is read.
#[test]
fn blocks_sent_ahead_of_their_results_keep_their_own_statements() {
    let mut t = Tracker::new();
    let mut g = IdGen::seeded(4);
    let mut out = vec![];
    let texts = [
        "BEGIN", "update 1", "COMMIT", "select 0", "BEGIN", "update 2", "END",
    ];
    let ids: Vec<(Ids, Verb)> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = verb(text);
            (t.query_started(K, &v, 10 + i as u64, &mut g), v)
        })
        .collect();
    let latest = t.current(K).expect("open until its END is answered");
    let after = t.query_started(K, &Verb::Other, 20, &mut g);
    assert_eq!(
        after.parent_span_id, 0,
        "its END is sent: nothing sent later joins it"
    );
    for (i, (id, v)) in ids.iter().enumerate() {
        let tag = if *v == Verb::Commit {
            Some("COMMIT")
        } else {
            None
        };
        t.query_ended(K, id, v, 100 + i as u64, false, None, tag, &mut out);
    }
    assert_eq!(out.len(), 2);
    let parents: Vec<u64> = ids.iter().map(|(i, _)| i.parent_span_id).collect();
    let (a, b) = (out[0].ids.span_id, out[1].ids.span_id);
    assert_eq!(parents, [a, a, a, 0, b, b, b]);
    assert_eq!(latest, out[1].ids);
    assert_eq!((out[0].statements, out[1].statements), (3, 3));
    assert_eq!(
        (out[0].outcome, out[1].outcome),
        (Outcome::Committed, Outcome::Committed)
    );
    assert_eq!((out[0].end_ns, out[1].end_ns), (102, 106));
    assert_eq!(t.of(K, &ids[1].0), None, "ended");
}

/// A pipeline aborted by an error: the statements after it, COMMIT
/// included, did not run; the block stays open for the ROLLBACK that follows.
#[test]
fn a_skipped_commit_leaves_the_block_to_the_rollback() {
    let mut t = Tracker::new();
    let mut g = IdGen::seeded(5);
    let mut out = vec![];
    let begin = t.query_started(K, &Verb::Begin, 10, &mut g);
    let bad = t.query_started(K, &Verb::Other, 11, &mut g);
    let commit = t.query_started(K, &Verb::Commit, 12, &mut g);
    let txn = t.of(K, &begin).unwrap();
    assert_eq!(t.of(K, &commit), Some(txn));
    t.query_ended(
        K,
        &begin,
        &Verb::Begin,
        20,
        false,
        None,
        Some("BEGIN"),
        &mut out,
    );
    t.query_ended(
        K,
        &bad,
        &Verb::Other,
        21,
        true,
        Some("23505"),
        None,
        &mut out,
    );
    t.query_skipped(K, &commit, &Verb::Commit, 22);
    assert!(out.is_empty());
    assert_eq!(t.current(K), Some(txn));
    let rollback = t.query_started(K, &Verb::Rollback, 30, &mut g);
    assert_eq!(rollback.parent_span_id, txn.span_id);
    t.query_ended(
        K,
        &rollback,
        &Verb::Rollback,
        31,
        false,
        None,
        Some("ROLLBACK"),
        &mut out,
    );
    assert_eq!(
        (
            out[0].outcome,
            out[0].aborted,
            out[0].sqlstate.as_deref(),
            out[0].statements
        ),
        (Outcome::RolledBack, true, Some("23505"), 4)
    );
}

#[test]
fn mysql_verbs() {
    let cases: &[(&str, Verb)] = &[
        ("BEGIN WORK", Verb::Begin),
        (
            "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
            Verb::Begin,
        ),
        ("COMMIT WORK", Verb::Commit),
        ("commit work and no chain release", Verb::Commit),
        ("ROLLBACK WORK", Verb::Rollback),
        (
            "ROLLBACK WORK TO SAVEPOINT `Sp 1`",
            Verb::RollbackTo("Sp 1".into()),
        ),
        ("SAVEPOINT `a``b`", Verb::Savepoint("a`b".into())),
        ("RELEASE SAVEPOINT `x`", Verb::Release("x".into())),
        ("BEGIN NOT ATOMIC SELECT 1; END", Verb::Other),
        ("XA START 'x'", Verb::Begin),
        ("xa begin 'x'", Verb::Begin),
        ("XA END 'x'", Verb::Other),
        ("XA PREPARE 'x'", Verb::PrepareTransaction),
        ("XA COMMIT 'x' ONE PHASE", Verb::Commit),
        ("XA COMMIT 'x'", Verb::Commit),
        ("XA ROLLBACK 'x'", Verb::Rollback),
        ("XA RECOVER", Verb::Other),
        ("/*!40101 SET NAMES utf8 */", Verb::Other),
    ];
    for (text, want) in cases {
        assert_eq!(&verb(text), want, "{text:?}");
    }
}

#[test]
fn the_server_ends_a_transaction_by_itself() {
    // MySQL: DDL commits implicitly; the server has no transaction afterwards.
    let mut d = Drive::new();
    d.ok("BEGIN").ok("insert 1");
    let ddl = d.now;
    d.ok("create table t (a int)");
    assert!(d.out.is_empty());
    d.t.ended_by_server(K, d.now, Outcome::Committed, None, &mut d.out);
    assert!(d.t.current(K).is_none());
    let t = &d.out[0];
    assert_eq!(
        (t.outcome, t.statements, t.end_ns, t.aborted),
        (Outcome::Committed, 3, ddl + 1_000 + 1_000_000, false)
    );
    assert_eq!(event_names(t).last(), Some(&"transaction.committed"));
    // A deadlock (1213) rolls it back: a retry, as is a lock wait timeout (1205).
    d.ok("BEGIN").fail("update", "1213");
    d.t.ended_by_server(K, d.now, Outcome::RolledBack, Some("1213"), &mut d.out);
    d.ok("ROLLBACK"); // nothing open: ends nothing
    d.ok("BEGIN").fail("update", "1205").ok("ROLLBACK");
    d.ok("BEGIN").ok("COMMIT");
    d.ok("BEGIN").ok("COMMIT");
    let got: Vec<_> = d
        .out
        .iter()
        .map(|t| (t.retry_count, t.outcome, t.sqlstate.as_deref()))
        .collect();
    use Outcome::*;
    assert_eq!(
        got,
        [
            (0, Committed, None),
            (0, RolledBack, Some("1213")),
            (1, RolledBack, Some("1205")),
            (2, Committed, None),
            (0, Committed, None)
        ]
    );
    assert_eq!(describe(&d.out[1]).2.as_deref(), Some("1213"));
    // The error that ended it replaces an earlier one; nothing open: nothing happens.
    d.ok("BEGIN").fail("insert", "1062");
    d.t.ended_by_server(K, d.now, Outcome::RolledBack, Some("1213"), &mut d.out);
    assert_eq!(d.out.last().unwrap().sqlstate.as_deref(), Some("1213"));
    let n = d.out.len();
    d.t.ended_by_server(K, d.now, Outcome::Committed, None, &mut d.out);
    d.t.ended_by_server((9, 9), d.now, Outcome::Committed, None, &mut d.out);
    assert_eq!(d.out.len(), n);
}

#[test]
fn tentative_blocks_are_confirmed_or_discarded() {
    let mut t = Tracker::new();
    let mut g = IdGen::seeded(6);
    let mut out = vec![];
    // Its statement ends and the server has no transaction: it never was.
    let a = t.query_started_tentatively(K, &Verb::Begin, 10, &mut g, None);
    assert!(a.parent_span_id != 0 && t.current(K).is_some());
    assert!(t.discard(K, &a));
    assert!(!t.discard(K, &a), "once");
    t.query_ended(K, &a, &Verb::Other, 20, false, None, None, &mut out);
    assert!(t.current(K).is_none() && out.is_empty());
    // Confirmed: an ordinary block, which discard leaves alone.
    let b = t.query_started_tentatively(K, &Verb::Begin, 30, &mut g, None);
    t.confirm(K, &b);
    assert!(!t.discard(K, &b));
    t.query_ended(K, &b, &Verb::Other, 40, false, None, None, &mut out);
    let c = t.query_started(K, &Verb::Commit, 50, &mut g);
    t.query_ended(
        K,
        &c,
        &Verb::Commit,
        60,
        false,
        None,
        Some("COMMIT"),
        &mut out,
    );
    assert_eq!(
        (
            out.len(),
            out[0].outcome,
            out[0].statements,
            out[0].start_ns
        ),
        (1, Outcome::Committed, 2, 30)
    );
    assert_eq!(b.parent_span_id, out[0].ids.span_id);
    // BEGIN's block is never tentative; nor is one with a second statement.
    let d = t.query_started(K, &Verb::Begin, 70, &mut g);
    assert!(!t.discard(K, &d));
    t.conn_closed(K, 80, &mut out);
    let e = t.query_started_tentatively(K, &Verb::Begin, 90, &mut g, None);
    t.query_ended(K, &e, &Verb::Other, 95, false, None, None, &mut out);
    let f = t.query_started(K, &Verb::Other, 100, &mut g);
    assert!(!t.discard(K, &f) && !t.discard(K, &e));
    assert!(!t.discard((9, 9), &e), "another connection");
    assert_eq!(t.connections(), 1);
}

#[test]
fn a_discarded_block_leaves_the_retry_chain_alone() {
    let mut d = Drive::mysql();
    d.ok("BEGIN").fail("update", "1213");
    d.t.ended_by_server(K, d.now, Outcome::RolledBack, Some("1213"), &mut d.out);
    let ids =
        d.t.query_started_tentatively(K, &Verb::Begin, d.now + 1, &mut d.gen, None);
    assert!(d.t.discard(K, &ids));
    d.ok("BEGIN").ok("COMMIT");
    let got: Vec<_> = d.out.iter().map(|t| (t.retry_count, t.outcome)).collect();
    assert_eq!(got, [(0, Outcome::RolledBack), (1, Outcome::Committed)]);
}

#[test]
fn where_errors_do_not_abort_a_failure_is_an_event() {
    let mut d = Drive::mysql();
    d.ok("BEGIN")
        .fail("insert dup", "1062")
        .ok("insert 2")
        .stmt("COMMIT", 0, None, None);
    let t = &d.out[0];
    assert_eq!(
        (t.outcome, t.aborted, t.statements),
        (Outcome::Committed, false, 4)
    );
    assert_eq!(
        event_names(t),
        [
            "transaction.started",
            "transaction.statement_failed",
            "transaction.committed"
        ]
    );
    assert_eq!(
        t.events[1].attributes,
        vec![KeyValue::new("db.response.status_code", "1062")]
    );
    assert_eq!(describe(t).2, None);
    // XA PREPARE after a failure: prepared.
    d.ok("XA START 'x'")
        .fail("insert dup", "1062")
        .ok("XA END 'x'")
        .ok("XA PREPARE 'x'");
    assert_eq!(
        (d.out[1].outcome, d.out[1].aborted, describe(&d.out[1]).2),
        (Outcome::Prepared, false, None)
    );
    // Rolled back after failures: the latest is the cause, and a lock
    // wait timeout is retried.
    d.ok("BEGIN")
        .fail("insert dup", "1062")
        .fail("update", "1205")
        .ok("ROLLBACK");
    d.ok("BEGIN").ok("COMMIT");
    let t = &d.out[2];
    assert_eq!(
        (t.outcome, t.aborted, t.sqlstate.as_deref()),
        (Outcome::RolledBack, false, Some("1205"))
    );
    assert_eq!(describe(t).2.as_deref(), Some("1205"));
    assert_eq!(
        (d.out[3].retry_count, d.out[3].outcome),
        (1, Outcome::Committed)
    );
    // The server rolling it back for an error aborts it (a deadlock).
    d.ok("BEGIN").fail("update", "1213");
    d.t.ended_by_server(K, d.now, Outcome::RolledBack, Some("1213"), &mut d.out);
    let t = d.out.last().unwrap();
    assert_eq!(
        (t.outcome, t.aborted, t.sqlstate.as_deref()),
        (Outcome::RolledBack, true, Some("1213"))
    );
    assert_eq!(
        event_names(t),
        [
            "transaction.started",
            "transaction.statement_failed",
            "transaction.aborted",
            "transaction.rolled_back"
        ]
    );
    // A failed COMMIT still rolls back.
    d.ok("BEGIN").fail("COMMIT", "1180");
    assert_eq!(
        (
            d.out.last().unwrap().outcome,
            d.out.last().unwrap().sqlstate.as_deref()
        ),
        (Outcome::RolledBack, Some("1180"))
    );
}
