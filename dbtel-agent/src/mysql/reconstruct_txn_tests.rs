//! Transactions on MySQL connections: BEGIN/COMMIT, autocommit off, the
//! server's IN_TRANS bit as ground truth, failed statements, deadlocks.

use super::*;

/// The transaction spans of `out`, and the query spans.
fn split(out: &[DbSpan]) -> (Vec<&DbSpan>, Vec<&DbSpan>) {
    out.iter().partition(|s| s.name == "transaction")
}

#[test]
fn begin_commit_parents_its_statements() {
    let mut h = H::new();
    h.status = TX;
    h.exec("BEGIN", 0);
    h.exec("INSERT INTO t VALUES (1)", 1);
    h.select("SELECT * FROM t", 1);
    h.status = AC;
    let (_, end) = h.exec("COMMIT", 0);
    let out = h.take();
    let (txns, queries) = split(&out);
    assert_eq!((txns.len(), queries.len()), (1, 4));
    let t = txns[0];
    assert!(queries
        .iter()
        .all(|q| q.ids.trace_id == t.ids.trace_id && q.ids.parent_span_id == t.ids.span_id));
    assert_eq!(
        (
            t.ids.parent_span_id,
            t.start_ns,
            t.end_ns,
            t.error.as_deref()
        ),
        (0, queries[0].start_ns, end, None)
    );
    for kv in [
        KeyValue::new("db.system.name", "mariadb"),
        KeyValue::new("db.transaction.outcome", "committed"),
        KeyValue::new("db.transaction.statement_count", 4i64),
        KeyValue::new("db.namespace", "shop"),
        KeyValue::new("db.mysql.connection_id", 42i64),
    ] {
        assert!(t.attributes.contains(&kv), "{kv:?}");
    }
    // Autocommit again: a root.
    h.exec("INSERT INTO t VALUES (2)", 1);
    assert_eq!(h.take()[0].ids.parent_span_id, 0);
}

#[test]
fn autocommit_off_begins_transactions() {
    let mut h = H::new();
    h.status = 0; // SET autocommit=0: no AUTOCOMMIT, no transaction yet
    h.exec("SET autocommit=0", 0);
    h.status = IN_TRANS;
    h.exec("INSERT INTO t VALUES (1)", 1);
    h.exec("UPDATE t SET a = 2", 3);
    h.status = 0;
    let (_, end) = h.exec("COMMIT", 0);
    h.status = IN_TRANS;
    h.exec("INSERT INTO t VALUES (3)", 1);
    let out = h.take();
    let (txns, queries) = split(&out);
    assert_eq!(
        names(&out),
        [
            "SET",
            "INSERT t",
            "UPDATE t",
            "COMMIT",
            "transaction",
            "INSERT t"
        ]
    );
    let t = txns[0];
    assert_eq!(
        queries[0].ids.parent_span_id, 0,
        "sent with autocommit still on"
    );
    assert!(queries[1..4]
        .iter()
        .all(|q| q.ids.parent_span_id == t.ids.span_id && q.ids.trace_id == t.ids.trace_id));
    assert_eq!((t.start_ns, t.end_ns), (queries[1].start_ns, end));
    assert!(t
        .attributes
        .contains(&KeyValue::new("db.transaction.statement_count", 3i64)));
    assert!(t
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "committed")));
    // The statement that began it keeps its own facts.
    assert_eq!(
        (queries[1].operation(), queries[1].affected_rows()),
        (Some("INSERT"), Some(1))
    );
    // The next one begins another.
    let next = queries[4];
    assert!(next.ids.parent_span_id != 0 && next.ids.trace_id != t.ids.trace_id);
    h.status = 0;
    h.exec("ROLLBACK", 0);
    let out = h.take();
    assert_eq!(names(&out), ["ROLLBACK", "transaction"]);
    assert_eq!(out[1].ids.span_id, next.ids.parent_span_id);
}

#[test]
fn deadlock_rolls_back_and_the_retry_counts() {
    let mut h = H::new();
    h.status = TX;
    h.exec("BEGIN", 0);
    h.exec("UPDATE t SET a = 1 WHERE id = 1", 1);
    // The server rolled the transaction back, but an error packet carries
    // no status: the client still says IN_TRANS.
    let (_, dead) = h.fail("UPDATE t SET a = 1 WHERE id = 2", 1213, "40001");
    h.status = AC;
    h.exec("ROLLBACK", 0);
    h.status = TX;
    h.exec("BEGIN", 0);
    h.exec("UPDATE t SET a = 1 WHERE id = 1", 1);
    h.status = AC;
    h.exec("COMMIT", 0);
    let out = h.take();
    let (txns, queries) = split(&out);
    assert_eq!(txns.len(), 2);
    let (a, b) = (txns[0], txns[1]);
    assert_eq!(
        (a.end_ns, a.error.as_deref(), a.error_type()),
        (dead, Some("1213"), Some("1213"))
    );
    assert!(a
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "rolled_back")));
    assert!(a
        .attributes
        .contains(&KeyValue::new("db.transaction.aborted", true)));
    let evs: Vec<_> = a.events.iter().map(|e| (e.name, e.ts_ns)).collect();
    assert_eq!(
        evs,
        [
            ("transaction.started", a.start_ns),
            ("transaction.statement_failed", dead),
            ("transaction.aborted", dead),
            ("transaction.rolled_back", dead)
        ]
    );
    assert_eq!(
        queries[2].ids.parent_span_id, a.ids.span_id,
        "the failed statement is in it"
    );
    assert_eq!(
        queries[3].ids.parent_span_id, 0,
        "ROLLBACK after it: nothing open"
    );
    assert!(b
        .attributes
        .contains(&KeyValue::new("db.transaction.retry_count", 1i64)));
    assert!(b
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "committed")));
    assert_eq!(b.error, None);
}

/// sysbench's retry: no ROLLBACK after the deadlock, the next BEGIN
/// follows at once; the client's status still says IN_TRANS throughout.
#[test]
fn deadlock_then_begin_without_rollback() {
    let mut h = H::new();
    h.status = TX;
    h.exec("BEGIN", 0);
    h.exec("UPDATE t SET a = 1 WHERE id = 1", 1);
    let (_, dead) = h.fail("UPDATE t SET a = 1 WHERE id = 2", 1213, "40001");
    h.exec("BEGIN", 0);
    h.exec("UPDATE t SET a = 1 WHERE id = 1", 1);
    h.status = AC;
    h.exec("COMMIT", 0);
    let out = h.take();
    let (txns, queries) = split(&out);
    assert_eq!(txns.len(), 2);
    let (a, b) = (txns[0], txns[1]);
    assert_eq!((a.end_ns, a.error.as_deref()), (dead, Some("1213")));
    assert!(a
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "rolled_back")));
    assert_eq!(
        queries[3].ids.parent_span_id, b.ids.span_id,
        "the next BEGIN opens the retry"
    );
    assert!(b
        .attributes
        .contains(&KeyValue::new("db.transaction.retry_count", 1i64)));
    assert!(b
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "committed")));
}

#[test]
fn implicit_commits_end_the_transaction() {
    let mut h = H::new();
    h.status = TX;
    h.exec("BEGIN", 0);
    h.exec("INSERT INTO t VALUES (1)", 1);
    h.status = AC;
    let (_, ddl) = h.exec("CREATE TABLE u (a int)", 0);
    h.exec("INSERT INTO t VALUES (2)", 1);
    let out = h.take();
    let (txns, queries) = split(&out);
    assert_eq!(
        names(&out),
        ["BEGIN", "INSERT t", "CREATE u", "transaction", "INSERT t"]
    );
    assert_eq!((txns[0].end_ns, txns[0].error.as_deref()), (ddl, None));
    assert!(txns[0]
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "committed")));
    assert!(txns[0]
        .attributes
        .contains(&KeyValue::new("db.transaction.statement_count", 3i64)));
    assert_eq!(queries[2].ids.parent_span_id, txns[0].ids.span_id);
    assert_eq!(queries[3].ids.parent_span_id, 0);
    // A DDL statement that fails has committed all the same.
    h.status = TX;
    h.exec("BEGIN", 0);
    h.status = AC;
    h.fail("CREATE TABLE u (a int)", 1050, "42S01");
    let out = h.take();
    assert_eq!(
        (out[2].name.as_str(), out[2].error.as_deref()),
        ("transaction", None)
    );
    // BEGIN inside a transaction commits it and begins another.
    h.status = TX;
    h.exec("BEGIN", 0);
    h.exec("INSERT INTO t VALUES (3)", 1);
    let (again, _) = h.exec("START TRANSACTION", 0);
    let out = h.take();
    assert_eq!(names(&out), ["BEGIN", "INSERT t", "transaction", "START"]);
    assert_eq!(out[2].end_ns, again);
    assert!(out[2]
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "committed")));
    assert!(out[3].ids.parent_span_id != 0 && out[3].ids.trace_id != out[2].ids.trace_id);
    h.status = AC;
    h.exec("COMMIT", 0);
    // A whole transaction in one text: classified by its BEGIN, ended by the server's word.
    let s = h.call(
        MyCall::RealQuery,
        DB,
        DB,
        Some("BEGIN; INSERT INTO t VALUES (4); COMMIT"),
    );
    h.status = TX | MORE_RESULTS;
    h.ret(ret(MyCall::RealQuery, DB, DB, 0), |_| {});
    h.ret(ret(MyCall::NextResult, DB, DB, 0), |r| {
        r.affected_rows = Some(1)
    });
    h.status = AC;
    let e = h.ret(ret(MyCall::NextResult, DB, DB, 0), |_| {});
    let out = h.take();
    assert_eq!(
        names(&out),
        ["COMMIT", "transaction", "BEGIN INSERT t", "transaction"]
    );
    assert_eq!(
        (out[3].start_ns, out[3].end_ns, out[3].error.as_deref()),
        (s, e, None)
    );
    assert!(out[3]
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "committed")));
    assert_eq!(out[2].ids.parent_span_id, out[3].ids.span_id);
}

fn events(s: &DbSpan) -> Vec<&str> {
    s.events.iter().map(|e| e.name).collect()
}

/// MySQLdb turns autocommit off on connecting: only statements after
/// which the server has a transaction begin one.
#[test]
fn autocommit_off_statements_that_begin_nothing_are_roots() {
    let mut h = H::new();
    h.status = 0;
    h.exec("SET autocommit=0", 0); // sent with autocommit on
    h.select("SELECT 1", 1);
    h.exec("SET NAMES utf8mb4", 0);
    h.status = IN_TRANS;
    let (begun, _) = h.exec("INSERT INTO t VALUES (1)", 1);
    h.exec("UPDATE t SET a = 2", 3);
    h.status = 0;
    let (_, end) = h.exec("COMMIT", 0);
    h.select("SELECT @@version", 1);
    h.exec("CREATE TABLE u (a int)", 0); // commits, and begins nothing
    let out = h.take();
    assert_eq!(
        names(&out),
        [
            "SET",
            "SELECT",
            "SET",
            "INSERT t",
            "UPDATE t",
            "COMMIT",
            "transaction",
            "SELECT",
            "CREATE u"
        ]
    );
    let (txns, queries) = split(&out);
    let t = txns[0];
    assert_eq!(
        (txns.len(), t.start_ns, t.end_ns, t.error.as_deref()),
        (1, begun, end, None)
    );
    assert!(t
        .attributes
        .contains(&KeyValue::new("db.transaction.statement_count", 3i64)));
    assert!(t
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "committed")));
    assert!(queries[3..6]
        .iter()
        .all(|q| q.ids.parent_span_id == t.ids.span_id && q.ids.trace_id == t.ids.trace_id));
    let roots: Vec<_> = [0, 1, 2, 6, 7].iter().map(|&i| queries[i]).collect();
    assert!(
        roots.iter().all(|q| q.ids.parent_span_id == 0),
        "{:?}",
        roots.iter().map(|q| q.ids).collect::<Vec<_>>()
    );
    let traces: std::collections::HashSet<_> = roots
        .iter()
        .map(|q| q.ids.trace_id)
        .chain([t.ids.trace_id])
        .collect();
    let spans: std::collections::HashSet<_> = out.iter().map(|s| s.ids.span_id).collect();
    assert_eq!(
        (traces.len(), spans.len()),
        (6, out.len()),
        "each root its own trace, no id twice"
    );
    assert_eq!((h.r.txns.current((PID, DB)), h.r.in_flight()), (None, 0));
}

#[test]
fn a_failed_first_statement_with_autocommit_off_is_a_root() {
    let mut h = H::new();
    h.status = 0;
    h.exec("SET autocommit=0", 0);
    h.fail("INSERT INTO nope VALUES (1)", 1146, "42S02");
    h.status = IN_TRANS;
    let (begun, _) = h.exec("INSERT INTO t VALUES (1)", 1);
    h.status = 0;
    h.exec("ROLLBACK", 0);
    let out = h.take();
    assert_eq!(
        names(&out),
        ["SET", "INSERT nope", "INSERT t", "ROLLBACK", "transaction"]
    );
    assert_eq!(
        (out[1].ids.parent_span_id, out[1].error.as_deref()),
        (0, Some("1146"))
    );
    let t = &out[4];
    assert_eq!(
        (t.start_ns, t.error.as_deref()),
        (begun, None),
        "an explicit ROLLBACK of statements that all succeeded"
    );
    assert!(t
        .attributes
        .contains(&KeyValue::new("db.transaction.statement_count", 2i64)));
    assert!(out[2..4]
        .iter()
        .all(|q| q.ids.parent_span_id == t.ids.span_id));
    // A failed statement after which the server has a transaction (InnoDB
    // began it before the duplicate key) is in it.
    h.status = IN_TRANS;
    h.fail("INSERT INTO t VALUES (1)", 1062, "23000");
    h.status = 0;
    h.exec("COMMIT", 0);
    let out = h.take();
    assert_eq!(names(&out), ["INSERT t", "COMMIT", "transaction"]);
    assert_eq!(
        (out[0].ids.parent_span_id, out[2].error.as_deref()),
        (out[2].ids.span_id, None)
    );
    assert!(out[2]
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "committed")));
}

/// A deadlock on the first statement: the server had a transaction (it
/// held locks), and rolled it back.
#[test]
fn autocommit_off_deadlock_on_the_first_statement() {
    let mut h = H::new();
    h.status = 0;
    h.exec("SET autocommit=0", 0);
    let (s, e) = h.fail("SELECT a FROM t WHERE id = 1 FOR UPDATE", 1213, "40001");
    h.status = IN_TRANS;
    h.exec("SELECT a FROM t WHERE id = 1 FOR UPDATE", 0);
    h.status = 0;
    h.exec("COMMIT", 0);
    let out = h.take();
    assert_eq!(
        names(&out),
        [
            "SET",
            "SELECT t",
            "transaction",
            "SELECT t",
            "COMMIT",
            "transaction"
        ]
    );
    let (a, b) = (&out[2], &out[5]);
    assert_eq!(
        (a.start_ns, a.end_ns, a.error.as_deref(), a.error_type()),
        (s, e, Some("1213"), Some("1213"))
    );
    assert_eq!(out[1].ids.parent_span_id, a.ids.span_id);
    assert!(a
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "rolled_back")));
    assert!(b
        .attributes
        .contains(&KeyValue::new("db.transaction.retry_count", 1i64)));
    assert!(b
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "committed")));
}

/// A first statement that never completes: nothing says a transaction began.
#[test]
fn autocommit_off_first_statement_cut_begins_nothing() {
    let mut h = H::new();
    h.status = 0;
    h.exec("SET autocommit=0", 0);
    h.call(MyCall::RealQuery, DB, DB, Some("SELECT SLEEP(1)"));
    h.call(MyCall::RealQuery, DB, DB, Some("SELECT SLEEP(2)")); // supersedes it
    let closed = h.call(MyCall::Close, DB, DB, None);
    let out = h.take();
    assert_eq!(names(&out), ["SET", "SELECT", "SELECT"]);
    assert!(out.iter().all(|s| s.ids.parent_span_id == 0));
    assert_eq!(out[1].error_type(), Some("dbtel.superseded"));
    assert_eq!(
        (out[2].end_ns, out[2].error_type()),
        (closed, Some("dbtel.connection_closed"))
    );
    assert_eq!(h.r.txns.connections(), 0);
}

#[test]
fn a_failed_statement_does_not_abort_the_transaction() {
    let mut h = H::new();
    h.status = TX;
    h.exec("BEGIN", 0);
    let (_, dup) = h.fail("INSERT INTO t VALUES (1)", 1062, "23000");
    h.exec("INSERT INTO t VALUES (2)", 1);
    h.status = AC;
    h.exec("COMMIT", 0);
    let out = h.take();
    let t = &out[4];
    assert_eq!(
        (t.name.as_str(), t.error.as_deref(), t.error_type()),
        ("transaction", None, None)
    );
    for kv in [
        KeyValue::new("db.transaction.outcome", "committed"),
        KeyValue::new("db.transaction.aborted", false),
        KeyValue::new("db.transaction.statement_count", 4i64),
    ] {
        assert!(t.attributes.contains(&kv), "{kv:?}");
    }
    assert_eq!(
        events(t),
        [
            "transaction.started",
            "transaction.statement_failed",
            "transaction.committed"
        ]
    );
    assert_eq!(
        (t.events[1].ts_ns, &t.events[1].attributes),
        (dup, &vec![KeyValue::new("db.response.status_code", "1062")])
    );
    // Rolled back after it: the error is the rollback's cause.
    h.status = TX;
    h.exec("BEGIN", 0);
    h.fail("INSERT INTO t VALUES (1)", 1062, "23000");
    h.status = AC;
    h.exec("ROLLBACK", 0);
    let out = h.take();
    assert_eq!(
        (out[3].name.as_str(), out[3].error.as_deref()),
        ("transaction", Some("1062"))
    );
    assert!(out[3]
        .attributes
        .contains(&KeyValue::new("db.transaction.aborted", false)));
}

#[test]
fn xa_prepare_after_a_failed_statement_is_prepared() {
    let mut h = H::new();
    h.status = TX;
    let (s, _) = h.exec("XA START 'x1'", 0);
    h.fail("INSERT INTO t VALUES (1)", 1062, "23000");
    h.exec("INSERT INTO t VALUES (2)", 1);
    h.exec("XA END 'x1'", 0);
    h.status = AC;
    let (_, e) = h.exec("XA PREPARE 'x1'", 0);
    h.exec("XA COMMIT 'x1'", 0);
    let out = h.take();
    assert_eq!(
        names(&out),
        [
            "XA",
            "INSERT t",
            "INSERT t",
            "XA",
            "XA",
            "transaction",
            "XA"
        ]
    );
    let t = &out[5];
    assert_eq!((t.start_ns, t.end_ns, t.error.as_deref()), (s, e, None));
    assert!(t
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "prepared")));
    assert!(t
        .attributes
        .contains(&KeyValue::new("db.transaction.aborted", false)));
    assert_eq!(
        events(t),
        [
            "transaction.started",
            "transaction.statement_failed",
            "transaction.prepared"
        ]
    );
    assert!(out[..5]
        .iter()
        .all(|q| q.ids.parent_span_id == t.ids.span_id));
    assert_eq!(
        out[6].ids.parent_span_id, 0,
        "XA COMMIT after XA PREPARE: outside it"
    );
}
