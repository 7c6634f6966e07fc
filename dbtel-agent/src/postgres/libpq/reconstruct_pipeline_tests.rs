//! libpq's pipeline mode, as libpq 14–18 reports it: the calls psycopg 3
//! and pgbench make, with results from the probe inside PQgetResult (no
//! NULLs) unless a test says otherwise.

use super::*;
use crate::pipeline::span::Ids;

const PIPE_SYNC: i32 = PGRES_PIPELINE_SYNC;
const ABORTED: i32 = PGRES_PIPELINE_ABORTED;

impl Script {
    fn enter(&mut self, conn: u64) -> &mut Self {
        self.pipe(conn, func::PQENTER_PIPELINE_MODE, Some(1))
    }
    fn exit(&mut self, conn: u64) -> &mut Self {
        self.pipe(conn, func::PQEXIT_PIPELINE_MODE, Some(1))
    }
    fn sync(&mut self, conn: u64) -> &mut Self {
        self.pipe(conn, func::PQPIPELINE_SYNC, None)
    }
    fn send(&mut self, conn: u64, text: &str) -> &mut Self {
        self.call(1, conn, func::PQSEND_QUERY_PARAMS, Some(text), None)
    }
    /// An error result seen inside PQgetResult, with its SQLSTATE.
    fn rp_err(&mut self, conn: u64, sqlstate: &str) -> &mut Self {
        let at = self.at(1, conn);
        self.bytes
            .push(encode::result_point(at, PGRES_FATAL_ERROR, 0, "", sqlstate));
        self
    }
    /// The time of the last event.
    fn now(&self) -> u64 {
        self.ts
    }
}

/// (text, rows, command tag, failed, skipped, end)
fn facts(spans: &[QuerySpan]) -> Vec<(String, u64, String, bool, bool, End)> {
    spans
        .iter()
        .map(|q| {
            (
                q.text.as_deref().unwrap_or_default().to_string(),
                q.rows,
                q.cmd_status.as_deref().unwrap_or_default().to_string(),
                q.failed,
                q.skipped,
                q.end,
            )
        })
        .collect()
}

fn ok(text: &str, rows: u64, tag: &str) -> (String, u64, String, bool, bool, End) {
    (text.into(), rows, tag.into(), false, false, End::Completed)
}

#[test]
fn every_statement_of_a_pipeline_is_a_span_of_its_own() {
    let mut s = Script::new();
    s.conn(C1).enter(C1);
    for i in 1..=5 {
        s.send(C1, &format!("select * from t where id <= {i}"));
    }
    s.sync(C1);
    let mut result_at = vec![];
    for i in 1..=5 {
        s.rp(C1, PGRES_TUPLES_OK, i, &format!("SELECT {i}"));
        result_at.push(s.now());
    }
    s.rp(C1, PIPE_SYNC, 0, "").exit(C1);
    let (spans, r) = s.run();
    let want: Vec<_> = (1..=5)
        .map(|i| {
            ok(
                &format!("select * from t where id <= {i}"),
                i,
                &format!("SELECT {i}"),
            )
        })
        .collect();
    assert_eq!(facts(&spans), want);
    for (q, at) in spans.iter().zip(&result_at) {
        assert_eq!(q.end_ns, *at, "each ends at its own result");
        assert_eq!(q.call, func::PQSEND_QUERY_PARAMS);
    }
    assert!(spans
        .windows(2)
        .all(|w| w[0].start_ns < w[1].start_ns && w[0].ids.trace_id != w[1].ids.trace_id));
    assert_eq!((r.in_flight(), r.counters), (0, Counters::default()));
}

#[test]
fn with_entry_and_return_probes_the_nulls_end_each_query() {
    let mut s = Script::new();
    s.enter(C1)
        .send(C1, "select 1")
        .send(C1, "select 2")
        .sync(C1);
    s.res(1, C1, PGRES_TUPLES_OK, 1, "SELECT 1").null(1, C1);
    s.res(1, C1, PGRES_TUPLES_OK, 2, "SELECT 2").null(1, C1);
    s.res(1, C1, PIPE_SYNC, 0, "").null(1, C1).exit(C1);
    let (spans, r) = s.run();
    assert_eq!(
        facts(&spans),
        [ok("select 1", 1, "SELECT 1"), ok("select 2", 2, "SELECT 2")]
    );
    assert_eq!((r.in_flight(), r.counters), (0, Counters::default()));
}

#[test]
fn a_failed_statement_skips_the_rest_of_its_pipeline_up_to_the_sync() {
    let mut s = Script::new();
    s.enter(C1)
        .send(C1, "insert into u values ($1)")
        .send(C1, "insert into u values (0)")
        .send(C1, "select 3")
        .send(C1, "update t set n = 4")
        .sync(C1)
        .send(C1, "select 5")
        .sync(C1);
    s.rp(C1, PGRES_COMMAND_OK, 0, "INSERT 0 1")
        .rp_err(C1, "23505")
        .rp(C1, ABORTED, 0, "")
        .rp(C1, ABORTED, 0, "");
    s.rp(C1, PIPE_SYNC, 0, "")
        .rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .rp(C1, PIPE_SYNC, 0, "")
        .exit(C1);
    let (spans, r) = s.run();
    let skipped = |t: &str| (t.to_string(), 0, String::new(), false, true, End::Completed);
    assert_eq!(
        facts(&spans),
        [
            ok("insert into u values ($1)", 0, "INSERT 0 1"),
            (
                "insert into u values (0)".into(),
                0,
                String::new(),
                true,
                false,
                End::Completed
            ),
            skipped("select 3"),
            skipped("update t set n = 4"),
            ok("select 5", 1, "SELECT 1"),
        ]
    );
    assert_eq!(spans[1].sqlstate.as_deref(), Some("23505"));
    assert!(spans[2].sqlstate.is_none());
    assert_eq!((r.in_flight(), r.counters), (0, Counters::default()));
}

#[test]
fn sync_results_end_the_statements_before_them_and_late_errors_land_on_the_last() {
    let mut s = Script::new();
    s.enter(C1)
        .send(C1, "select 1")
        .send(C1, "insert into d values (1)")
        .sync(C1)
        .send(C1, "select 3")
        .sync(C1);
    s.rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .rp(C1, PGRES_COMMAND_OK, 0, "INSERT 0 1");
    let (early, _) = s.run();
    assert_eq!(
        early.len(),
        1,
        "the last statement before a sync waits for the sync's result: {early:?}"
    );
    let insert_at = s.now();
    // The implicit transaction fails to commit at the sync (a deferred constraint).
    s.rp_err(C1, "23503").rp(C1, PIPE_SYNC, 0, "");
    let (spans, _) = s.run();
    assert_eq!(spans.len(), 2);
    let q = &spans[1];
    assert_eq!(
        (q.failed, q.sqlstate.as_deref(), q.end_ns),
        (true, Some("23503"), insert_at)
    );
    s.rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .rp(C1, PIPE_SYNC, 0, "");
    let (spans, r) = s.run();
    assert_eq!(facts(&spans)[2], ok("select 3", 1, "SELECT 1"));
    assert_eq!((r.in_flight(), r.counters), (0, Counters::default()));
}

#[test]
fn a_sync_that_was_never_sent_does_not_hold_results_back() {
    // PQpipelineSync failed (a broken connection): no PGRES_PIPELINE_SYNC for it.
    let mut s = Script::new();
    s.enter(C1)
        .send(C1, "select 1")
        .sync(C1)
        .send(C1, "select 2")
        .pipe(C1, func::PQSEND_PIPELINE_SYNC, None);
    s.rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .rp(C1, PGRES_TUPLES_OK, 2, "SELECT 2")
        .rp(C1, PIPE_SYNC, 0, "");
    let (spans, r) = s.run();
    assert_eq!(
        facts(&spans),
        [ok("select 1", 1, "SELECT 1"), ok("select 2", 2, "SELECT 2")]
    );
    assert_eq!((r.in_flight(), r.counters), (0, Counters::default()));
}

#[test]
fn after_a_flush_request_results_come_without_a_sync() {
    // psycopg: PQsendFlushRequest, then the results, the sync later.
    let mut s = Script::new();
    s.enter(C1).send(C1, "select 1").send(C1, "select 2");
    s.rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1");
    let first_at = s.now();
    s.rp(C1, PGRES_TUPLES_OK, 2, "SELECT 2");
    let second_at = s.now();
    let (spans, mut r) = s.run();
    assert_eq!(
        facts(&spans),
        [ok("select 1", 1, "SELECT 1")],
        "followed by another query: over at its result"
    );
    assert_eq!(spans[0].end_ns, first_at);
    let mut out = vec![];
    r.complete_quiet(second_at + QUIET_NS + 1, &mut out);
    let rest = queries(out);
    assert_eq!(
        facts(&rest),
        [ok("select 2", 2, "SELECT 2")],
        "the last one sent: once its connection is quiet"
    );
    assert_eq!(rest[0].end_ns, second_at);
    // The sync that follows has nothing left to end.
    s.sync(C1).rp(C1, PIPE_SYNC, 0, "").exit(C1);
    let (spans, r) = s.run();
    assert_eq!(spans.len(), 2);
    assert_eq!((r.in_flight(), r.counters), (0, Counters::default()));
}

#[test]
fn transaction_blocks_sent_ahead_keep_their_statements() {
    // pgbench's \startpipeline … \endpipeline around BEGIN … END, twice, then a statement outside.
    let mut s = Script::new();
    s.conn(C1).enter(C1);
    let texts = [
        "BEGIN",
        "update a set x = 1",
        "END",
        "BEGIN",
        "insert into h values (1)",
        "END",
        "select 1",
    ];
    for t in texts {
        s.send(C1, t);
    }
    s.sync(C1);
    for tag in [
        "BEGIN",
        "UPDATE 1",
        "COMMIT",
        "BEGIN",
        "INSERT 0 1",
        "COMMIT",
    ] {
        s.rp(C1, PGRES_COMMAND_OK, 0, tag);
    }
    s.rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .rp(C1, PIPE_SYNC, 0, "")
        .exit(C1);
    let (all, r) = s.run_all();
    let txns: Vec<&TxnSpan> = all
        .iter()
        .filter_map(|s| {
            if let ClientSpan::Txn(t, _) = s {
                Some(t)
            } else {
                None
            }
        })
        .collect();
    let spans = queries(all.clone());
    assert_eq!(spans.len(), texts.len());
    assert_eq!(txns.len(), 2);
    for t in &txns {
        assert_eq!(
            (t.outcome, t.statements, t.aborted),
            (txn::Outcome::Committed, 3, false)
        );
    }
    let parents: Vec<u64> = spans.iter().map(|q| q.ids.parent_span_id).collect();
    let (a, b) = (txns[0].ids.span_id, txns[1].ids.span_id);
    assert_eq!(parents, [a, a, a, b, b, b, 0]);
    assert_eq!(
        txns[0].end_ns, spans[2].end_ns,
        "the first block ends with its END"
    );
    assert_eq!((r.in_flight(), r.counters), (0, Counters::default()));
}

#[test]
fn an_error_inside_a_block_skips_its_commit_and_the_rollback_ends_it() {
    // psycopg: `with conn.transaction()` inside a pipeline; the COMMIT is skipped, ROLLBACK follows.
    let mut s = Script::new();
    s.enter(C1)
        .send(C1, "BEGIN")
        .send(C1, "insert into u values (0)")
        .send(C1, "COMMIT")
        .sync(C1);
    s.rp(C1, PGRES_COMMAND_OK, 0, "BEGIN")
        .rp_err(C1, "23505")
        .rp(C1, ABORTED, 0, "")
        .rp(C1, PIPE_SYNC, 0, "");
    s.send(C1, "ROLLBACK")
        .sync(C1)
        .rp(C1, PGRES_COMMAND_OK, 0, "ROLLBACK")
        .rp(C1, PIPE_SYNC, 0, "")
        .exit(C1);
    let (all, r) = s.run_all();
    let spans = queries(all.clone());
    let txns: Vec<&TxnSpan> = all
        .iter()
        .filter_map(|s| {
            if let ClientSpan::Txn(t, _) = s {
                Some(t)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(txns.len(), 1);
    let t = txns[0];
    assert_eq!(
        (t.outcome, t.aborted, t.sqlstate.as_deref(), t.statements),
        (txn::Outcome::RolledBack, true, Some("23505"), 4)
    );
    assert!(
        spans.iter().all(|q| q.ids.parent_span_id == t.ids.span_id),
        "the skipped COMMIT and the ROLLBACK too"
    );
    assert_eq!(
        spans.iter().map(|q| q.skipped).collect::<Vec<_>>(),
        [false, false, true, false]
    );
    assert_eq!((r.in_flight(), r.counters), (0, Counters::default()));
}

#[test]
fn after_leaving_pipeline_mode_queries_run_one_at_a_time_again() {
    let mut s = Script::new();
    s.enter(C1)
        .send(C1, "select 1")
        .send(C1, "select 2")
        .sync(C1);
    // Leaving fails while results are unread: still in pipeline mode.
    s.pipe(C1, func::PQEXIT_PIPELINE_MODE, Some(0));
    s.rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .rp(C1, PGRES_TUPLES_OK, 2, "SELECT 2")
        .rp(C1, PIPE_SYNC, 0, "")
        .exit(C1);
    // psycopg2-style PQexec, then psql-style sends: each supersedes what went unanswered.
    s.call(1, C1, func::PQEXEC, Some("select 3"), None).call(
        1,
        C1,
        func::PQSEND_QUERY,
        Some("select 3"),
        None,
    );
    s.rp(C1, PGRES_TUPLES_OK, 3, "SELECT 3");
    s.call(1, C1, func::PQSEND_QUERY, Some("select pg_sleep(9)"), None);
    s.call(1, C1, func::PQSEND_QUERY, Some("select 4"), None)
        .rp(C1, PGRES_TUPLES_OK, 4, "SELECT 4")
        .finish(C1);
    let (spans, r) = s.run();
    assert_eq!(
        facts(&spans),
        [
            ok("select 1", 1, "SELECT 1"),
            ok("select 2", 2, "SELECT 2"),
            ok("select 3", 3, "SELECT 3"),
            (
                "select pg_sleep(9)".into(),
                0,
                String::new(),
                false,
                false,
                End::Superseded
            ),
            ok("select 4", 4, "SELECT 4"),
        ]
    );
    assert_eq!(spans[2].call, func::PQEXEC);
    assert_eq!(
        (
            r.in_flight(),
            r.counters.incomplete,
            r.counters.unmatched_results
        ),
        (0, 1, 0)
    );
}

#[test]
fn libpq_refuses_synchronous_calls_in_pipeline_mode() {
    let mut s = Script::new();
    s.enter(C1)
        .send(C1, "select 1")
        .call(1, C1, func::PQEXEC, Some("select 2"), None)
        .sync(C1);
    s.rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .rp(C1, PIPE_SYNC, 0, "")
        .exit(C1);
    let (spans, r) = s.run();
    assert_eq!(
        facts(&spans),
        [
            (
                "select 2".into(),
                0,
                String::new(),
                false,
                false,
                End::Refused
            ),
            ok("select 1", 1, "SELECT 1")
        ]
    );
    assert_eq!(spans[0].end_ns, spans[0].start_ns);
    assert_eq!((r.in_flight(), r.counters), (0, Counters::default()));
}

#[test]
fn entering_pipeline_mode_ends_what_came_before() {
    let mut s = Script::new();
    s.call(1, C1, func::PQSEND_QUERY, Some("select 1"), None)
        .rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1");
    let answered_at = s.now();
    // A failed enter (the connection was busy) changes nothing.
    s.pipe(C1, func::PQENTER_PIPELINE_MODE, Some(0));
    let (spans, _) = s.run();
    assert!(spans.is_empty());
    s.enter(C1);
    let (spans, r) = s.run();
    assert_eq!(
        (facts(&spans), spans[0].end_ns),
        (vec![ok("select 1", 1, "SELECT 1")], answered_at)
    );
    assert_eq!(r.counters, Counters::default());
}

#[test]
fn the_server_side_sees_the_first_query_still_waiting_for_its_result() {
    let mut s = Script::new();
    s.conn(C1)
        .enter(C1)
        .send(C1, "BEGIN")
        .send(C1, "update t set x = 1")
        .send(C1, "END")
        .sync(C1);
    s.rp(C1, PGRES_COMMAND_OK, 0, "BEGIN");
    let (all, mut r) = s.run_all();
    assert_eq!(
        queries(all).len(),
        1,
        "BEGIN is over: another query follows it"
    );
    let ctx = r.client_context(4242).expect("known backend");
    let mut out = vec![];
    r.process_exited(7, s.now() + 1, &mut out);
    let cut = queries(out);
    assert_eq!(cut[0].text.as_deref(), Some("update t set x = 1"));
    assert_eq!(ctx.query, Some(cut[0].ids));
    assert_eq!(
        ctx.txn.map(|t| (t.trace_id, t.span_id)),
        Some((cut[0].ids.trace_id, cut[0].ids.parent_span_id))
    );
}

#[test]
fn the_server_side_names_the_statement_it_runs_by_order() {
    let mut s = Script::new();
    s.conn(C1)
        .enter(C1)
        .send(C1, "select 0")
        .send(C1, "select 1/0")
        .send(C1, "select 2")
        .sync(C1)
        .send(C1, "select 3")
        .sync(C1);
    let (_, mut r) = s.run_all();
    let running = |r: &Reconstructor| r.client_context(4242).and_then(|c| c.query);
    // Before the server says anything: the first query without its result.
    let mut claims = vec![running(&r)];
    r.server_began(4242, false);
    claims.push(running(&r));
    r.server_began(4242, false);
    claims.push(running(&r));
    assert!(r.annotate(
        4242,
        span::Event {
            name: "lock.wait",
            ts_ns: 1,
            attributes: vec![]
        }
    ));
    // `select 1/0` failed: the server skipped `select 2`, up to the sync.
    r.server_began(4242, true);
    claims.push(running(&r));
    r.server_began(4242, false); // nothing sent after it: it stays
    claims.push(running(&r));
    r.server_began(1, false); // an unknown backend: nothing
    let mut out = vec![];
    r.process_exited(7, 99_000_000, &mut out);
    let spans = queries(out);
    let ids: Vec<Ids> = spans.iter().map(|q| q.ids).collect();
    assert_eq!(
        claims,
        [
            Some(ids[0]),
            Some(ids[0]),
            Some(ids[1]),
            Some(ids[3]),
            Some(ids[3])
        ]
    );
    assert_eq!(
        spans.iter().map(|q| q.events.len()).collect::<Vec<_>>(),
        [0, 1, 0, 0],
        "the wait lands on `select 1/0`"
    );
}

#[test]
fn a_prepare_is_no_statement_the_server_runs() {
    // psycopg's executemany in a pipeline: PQsendPrepare, then executions.
    let mut s = Script::new();
    s.conn(C1).enter(C1).call(
        1,
        C1,
        func::PQSEND_PREPARE,
        Some("insert into t values ($1)"),
        Some("_pg3_0"),
    );
    s.call(1, C1, func::PQSEND_QUERY_PREPARED, None, Some("_pg3_0"))
        .call(1, C1, func::PQSEND_QUERY_PREPARED, None, Some("_pg3_0"))
        .sync(C1);
    let (_, mut r) = s.run_all();
    let running = |r: &Reconstructor| r.client_context(4242).and_then(|c| c.query);
    // The server's first statement is the Parse and the first execution: that execution's.
    r.server_began(4242, false);
    let first = running(&r);
    r.server_began(4242, false);
    let second = running(&r);
    let mut out = vec![];
    r.process_exited(7, 99_000_000, &mut out);
    let ids: Vec<Ids> = queries(out).iter().map(|q| q.ids).collect();
    assert_eq!([first, second], [Some(ids[1]), Some(ids[2])]);
}

/// psycopg flushes the Parse: the server begins its statement before the
/// client is seen sending the execution that statement is.
#[test]
fn the_server_begins_a_prepare_before_its_execution_is_sent() {
    let mut s = Script::new();
    s.conn(C1).enter(C1).call(
        1,
        C1,
        func::PQSEND_PREPARE,
        Some("insert into t values ($1)"),
        Some("_pg3_0"),
    );
    let mut r = Reconstructor::with_seed(1);
    let mut out = vec![];
    for b in &s.bytes {
        r.on_event(decode(b).unwrap(), &mut out);
    }
    let running = |r: &Reconstructor| r.client_context(4242).and_then(|c| c.query);
    r.server_began(4242, false);
    let early = running(&r);
    let mut more = Script::new();
    more.ts = s.ts;
    more.call(1, C1, func::PQSEND_QUERY_PREPARED, None, Some("_pg3_0"))
        .call(1, C1, func::PQSEND_QUERY_PREPARED, None, Some("_pg3_0"))
        .sync(C1);
    for b in &more.bytes {
        r.on_event(decode(b).unwrap(), &mut out);
    }
    let first = running(&r);
    r.server_began(4242, false);
    let second = running(&r);
    r.process_exited(7, 99_000_000, &mut out);
    let ids: Vec<Ids> = queries(out).iter().map(|q| q.ids).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        [early, first, second],
        [Some(ids[1]), Some(ids[1]), Some(ids[2])]
    );
}
