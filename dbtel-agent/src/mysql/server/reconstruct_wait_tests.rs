//! Lock waits: under the statement that waited, with how they ended;
//! kept by connection when the statement ends on another thread.

use super::*;

#[test]
fn a_granted_row_lock_wait_is_a_child_of_the_statement_that_waited() {
    let mut r = R::new();
    let mut u = End::query("UPDATE t SET v = v + 1 WHERE id = 1").affected(1);
    u.start_us = r.start();
    r.after(100);
    let (wb, we) = r.wait(T1, ROW, 1000);
    // Another thread's waits are not this statement's.
    r.hit(
        T2,
        mysite::WAIT_BEGIN,
        [0, ROW, 0, 0, 0, 0, 0, 0, 0, 0],
        None,
    );
    let ue = r.end(T1, 20, u);
    let out = r.take();
    assert_eq!(names(&out), ["lock wait t", "UPDATE t"]);
    let (w, q) = (&out[0], &out[1]);
    assert_eq!(
        (w.kind, w.pid, w.start_ns, w.end_ns, w.duration_ns()),
        (SpanKind::Internal, SRV, wb, we, 1_000_000)
    );
    assert_eq!(
        (w.ids.trace_id, w.ids.parent_span_id),
        (q.ids.trace_id, q.ids.span_id)
    );
    assert_eq!(
        (q.end_ns, q.error.as_deref(), w.error.as_deref()),
        (ue, None, None)
    );
    assert_eq!(
        w.attributes,
        vec![
            KeyValue::new("db.system.name", "mariadb"),
            KeyValue::new("db.mysql.connection_id", 42i64),
            KeyValue::new("db.mysql.lock.type", "row"),
            KeyValue::new("db.mysql.lock.outcome", "granted"),
            KeyValue::new("process.pid", 900i64),
            KeyValue::new("thread.id", 901i64),
            KeyValue::new("db.query.text", "UPDATE t SET v = v + ? WHERE id = ?"),
            KeyValue::new("db.collection.name", "t"),
        ]
    );
    let events: Vec<(&str, u64)> = q.events.iter().map(|e| (e.name, e.ts_ns)).collect();
    assert_eq!(
        events,
        [
            ("contention_detected", wb),
            ("lock_contention_detected", wb)
        ]
    );
    assert_eq!(
        (r.t.in_flight(), r.t.counters.lock_waits),
        (1, 1),
        "T2 still waits"
    );
}

#[test]
fn a_wait_stays_with_its_connection_when_the_statement_ends_on_another_thread() {
    // Pool-of-threads: the UPDATE waits on T1, its commit's redo write is
    // pending (WOULDBLOCK), T1 runs another connection's statement, and the
    // UPDATE's end_statement comes from T2 when it is resumed.
    let mut r = R::new();
    let other = CID + 1;
    let mut u = End::query("UPDATE t SET v = v + 1 WHERE id = 1").affected(1);
    u.start_us = r.start();
    r.after(100);
    let (wb, we) = row_wait_of(&mut r, T1, CID, 1000);
    let mut s = End::query("SELECT v FROM t WHERE id = 2").rows(1);
    s.cid = other;
    s.start_us = r.start();
    r.end(T1, 30, s);
    r.end(T2, 50, u);
    let out = r.take();
    assert_eq!(names(&out), ["SELECT t", "lock wait t", "UPDATE t"]);
    let (w, q) = (&out[1], &out[2]);
    assert_eq!(
        (w.start_ns, w.end_ns, w.ids.parent_span_id),
        (wb, we, q.ids.span_id)
    );
    assert_eq!(
        (
            get(w, "thread.id").as_deref(),
            get(q, "thread.id").as_deref()
        ),
        (Some("901"), Some("902")),
        "each where it ran"
    );
    assert_eq!(get(w, "db.mysql.connection_id").as_deref(), Some("42"));
    // Only the end's THD named (a begin that read none): still the connection's.
    r.hit(
        T1,
        mysite::WAIT_BEGIN,
        [0, ROW, 0, 0, 0, 0, 0, 0, 0, 0],
        None,
    );
    r.after(10);
    r.hit(
        T1,
        mysite::WAIT_END,
        [0x7000_0000, CID, 0, 0, 0, 0, 0, 0, 0, 0],
        None,
    );
    assert_eq!(r.t.waits_held(SRV, T1, CID), (0, 1));
    // A connection that ends with a wait whose statement never ended: a root, connection known.
    r.hit(T2, mysite::CONN_END, [CID, 0, 0, 0, 0, 0, 0, 0, 0, 0], None);
    let out = r.take();
    assert_eq!(
        (
            names(&out),
            out[0].ids.parent_span_id,
            get(&out[0], "db.mysql.connection_id").as_deref()
        ),
        (vec!["lock wait row"], 0, Some("42"))
    );
    assert_eq!((r.t.waits_held(SRV, T1, CID), r.t.in_flight()), ((0, 0), 0));
}

#[test]
fn a_lock_wait_timeout_ends_the_wait_and_leaves_the_transaction_open() {
    let mut r = R::new();
    r.login(CID);
    r.run(10, End::query("BEGIN").status(TX));
    let mut u = End::query("UPDATE t SET v = 4 WHERE id = 3")
        .error(1205)
        .status(TX);
    u.start_us = r.start();
    r.wait(T1, ROW, 50);
    r.wait(T1, ROW, 1_000_000);
    r.end(T1, 40, u);
    let out = r.take();
    assert_eq!(
        names(&out),
        ["BEGIN", "lock wait t", "lock wait t", "UPDATE t"]
    );
    let outcome: Vec<Option<String>> = out[1..3]
        .iter()
        .map(|w| get(w, "db.mysql.lock.outcome"))
        .collect();
    assert_eq!(
        outcome,
        [Some("granted".into()), Some("lock_wait_timeout".into())],
        "only the last wait ended with the statement"
    );
    assert_eq!(out[2].error_type(), Some("lock_wait_timeout"));
    assert_eq!(out[3].error.as_deref(), Some("1205"));
    let (_, ce) = r.run(10, End::query("ROLLBACK").status(AC));
    let out = r.take();
    assert_eq!(names(&out), ["ROLLBACK", "transaction"]);
    assert_eq!(
        (
            out[1].end_ns,
            out[1].error.as_deref(),
            get(&out[1], "db.transaction.outcome").as_deref()
        ),
        (ce, None, Some("rolled_back"))
    );
    assert_eq!(
        get(&out[1], "db.transaction.statement_count").as_deref(),
        Some("3")
    );
}

#[test]
fn metadata_lock_chunks_are_one_wait() {
    let mut r = R::new();
    let mut a = End::query("ALTER TABLE t ADD COLUMN c int");
    a.start_us = r.start();
    r.after(20);
    // MDL_wait::timed_wait waits a second at a time (THD* 0: current_thd).
    let (b, _) = r.wait(T1, MDL, 1_000_000);
    r.after(3);
    r.wait(T1, MDL, 1_000_000);
    r.after(3);
    let (_, e) = r.wait(T1, MDL, 300_000);
    r.end(T1, 5000, a);
    let out = r.take();
    assert_eq!(names(&out), ["lock wait t", "ALTER t"]);
    let w = &out[0];
    assert_eq!((w.start_ns, w.end_ns), (b, e));
    assert_eq!(get(w, "db.mysql.lock.type").as_deref(), Some("metadata"));
    assert_eq!(r.t.counters.lock_waits, 1);
}
