use super::*;
use crate::events::{decode, encode};

const PGRES_COMMAND_OK: i32 = 1;

#[path = "reconstruct_pipeline_tests.rs"]
mod pipeline;

/// A scripted event stream for one process, replayed through decode().
struct Script {
    pid: u32,
    ts: u64,
    bytes: Vec<Vec<u8>>,
}

fn queries(all: Vec<ClientSpan>) -> Vec<QuerySpan> {
    all.into_iter()
        .filter_map(|s| match s {
            ClientSpan::Query(q) => Some(q),
            ClientSpan::Txn(..) => None,
        })
        .collect()
}

const C1: u64 = 0x1000;
const C2: u64 = 0x2000;

impl Script {
    fn new() -> Self {
        Script {
            pid: 7,
            ts: 1_000_000,
            bytes: vec![],
        }
    }
    fn at(&mut self, tid: u32, conn: u64) -> Origin {
        self.ts += 1_000;
        Origin {
            pid: self.pid,
            tid,
            ts_ns: self.ts,
            conn,
        }
    }
    fn call(
        &mut self,
        tid: u32,
        conn: u64,
        f: u32,
        text: Option<&str>,
        name: Option<&str>,
    ) -> &mut Self {
        let at = self.at(tid, conn);
        self.bytes.push(encode::call(at, f, text, name));
        self
    }
    fn res(&mut self, tid: u32, conn: u64, status: i32, ntuples: i32, cmd: &str) -> &mut Self {
        let at = self.at(tid, conn);
        self.bytes
            .push(encode::result(at, 0xbeef, status, ntuples, cmd, ""));
        self
    }
    fn err(&mut self, tid: u32, conn: u64, sqlstate: &str) -> &mut Self {
        let at = self.at(tid, conn);
        self.bytes.push(encode::result(
            at,
            0xbeef,
            PGRES_FATAL_ERROR,
            0,
            "",
            sqlstate,
        ));
        self
    }
    /// A result from the probe inside PQgetResult (no NULLs follow).
    fn rp(&mut self, conn: u64, status: i32, ntuples: i32, cmd: &str) -> &mut Self {
        let at = self.at(1, conn);
        self.bytes.push(encode::result_point(
            at,
            status,
            ntuples,
            cmd,
            if status == PGRES_FATAL_ERROR {
                "42P01"
            } else {
                ""
            },
        ));
        self
    }
    fn null(&mut self, tid: u32, conn: u64) -> &mut Self {
        let at = self.at(tid, conn);
        self.bytes.push(encode::result(at, 0, -1, 0, "", ""));
        self
    }
    fn conn(&mut self, conn: u64) -> &mut Self {
        let at = self.at(1, conn);
        self.bytes.push(encode::conn(
            at,
            4242,
            "bench",
            "/var/run/postgresql",
            "5432",
        ));
        self
    }
    /// A pipeline-mode call; `ret`: its result, for those probed at return.
    fn pipe(&mut self, conn: u64, f: u32, ret: Option<i32>) -> &mut Self {
        let at = self.at(1, conn);
        self.bytes.push(encode::pipeline(at, f, ret));
        self
    }
    fn finish(&mut self, conn: u64) -> &mut Self {
        let at = self.at(1, conn);
        self.bytes.push(encode::finish(at));
        self
    }
    fn run_all(&self) -> (Vec<ClientSpan>, Reconstructor) {
        let mut r = Reconstructor::with_seed(1);
        let mut out = vec![];
        for b in &self.bytes {
            r.on_event(decode(b).unwrap(), &mut out);
        }
        (out, r)
    }
    /// Query spans only.
    fn run(&self) -> (Vec<QuerySpan>, Reconstructor) {
        let (all, r) = self.run_all();
        (queries(all), r)
    }
}

#[test]
fn pqexec_with_nested_send_and_drain_is_one_span() {
    let mut s = Script::new();
    s.conn(C1)
        .call(1, C1, func::PQEXEC, Some("select 1"), None)
        .null(1, C1) // PQexecStart drains an idle connection
        .call(1, C1, func::PQSEND_QUERY, Some("select 1"), None) // nested
        .res(1, C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .null(1, C1);
    let (spans, r) = s.run();
    assert_eq!(spans.len(), 1);
    let q = &spans[0];
    assert_eq!(
        (q.call, q.text.as_deref(), q.rows, q.end),
        (func::PQEXEC, Some("select 1"), 1, End::Completed)
    );
    assert_eq!(q.cmd_status.as_deref(), Some("SELECT 1"));
    assert_eq!(
        q.end_ns - q.start_ns,
        4_000,
        "from the PQexec call to the final NULL result"
    );
    assert_eq!(q.conn_info.as_ref().unwrap().backend_pid, 4242);
    assert_eq!(r.in_flight(), 0);
    assert_eq!(r.counters, Counters::default());
}

#[test]
fn pqexec_whose_nested_send_is_invisible_still_collects_results() {
    let mut s = Script::new();
    s.call(1, C1, func::PQEXEC, Some("select 1"), None)
        .null(1, C1)
        .res(1, C1, PGRES_TUPLES_OK, 3, "SELECT 3")
        .null(1, C1);
    let (spans, _) = s.run();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].rows, 3);
}

#[test]
fn async_send_then_get_loop_like_psql_and_pgbench() {
    let mut s = Script::new();
    s.call(1, C1, func::PQSEND_QUERY, Some("update t set x = 1"), None)
        .res(1, C1, 1, 0, "UPDATE 5")
        .null(1, C1)
        .call(1, C1, func::PQSEND_QUERY_PARAMS, Some("select $1"), None)
        .res(1, C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .null(1, C1)
        .null(1, C1); // an extra poll on an idle connection is harmless
    let (spans, r) = s.run();
    assert_eq!(spans.len(), 2);
    assert_eq!(
        (spans[0].rows, spans[0].cmd_status.as_deref()),
        (0, Some("UPDATE 5"))
    );
    assert_eq!(spans[1].call, func::PQSEND_QUERY_PARAMS);
    assert_eq!(r.counters, Counters::default());
}

#[test]
fn prepared_statements_map_names_to_text_per_connection() {
    let mut s = Script::new();
    s.call(
        1,
        C1,
        func::PQPREPARE,
        Some("select * from t where id = $1"),
        Some("P0_1"),
    )
    .call(
        1,
        C1,
        func::PQSEND_PREPARE,
        Some("select * from t where id = $1"),
        Some("P0_1"),
    )
    .res(1, C1, 1, 0, "")
    .null(1, C1)
    .call(1, C1, func::PQSEND_QUERY_PREPARED, None, Some("P0_1"))
    .res(1, C1, PGRES_TUPLES_OK, 1, "SELECT 1")
    .null(1, C1)
    // Same name on another connection: prepared before dbtel attached.
    .call(2, C2, func::PQEXEC_PREPARED, None, Some("P0_1"))
    .call(2, C2, func::PQSEND_QUERY_PREPARED, None, Some("P0_1"))
    .res(2, C2, PGRES_TUPLES_OK, 0, "SELECT 0")
    .null(2, C2);
    let (spans, _) = s.run();
    assert_eq!(spans.len(), 3);
    assert!(spans[0].is_prepare());
    assert_eq!(spans[0].statement_name.as_deref(), Some("P0_1"));
    assert_eq!(
        spans[1].text.as_deref(),
        Some("select * from t where id = $1")
    );
    assert!(!spans[1].prepared_before_attach);
    assert_eq!(
        (spans[2].text.as_deref(), spans[2].prepared_before_attach),
        (None, true)
    );
    assert_eq!(spans[2].call, func::PQEXEC_PREPARED);
}

#[test]
fn errors_carry_the_first_sqlstate() {
    let mut s = Script::new();
    s.call(1, C1, func::PQEXEC, Some("select * from missing"), None)
        .call(
            1,
            C1,
            func::PQSEND_QUERY,
            Some("select * from missing"),
            None,
        )
        .err(1, C1, "42P01")
        .null(1, C1);
    let (spans, _) = s.run();
    assert_eq!(
        (spans[0].failed, spans[0].sqlstate.as_deref()),
        (true, Some("42P01"))
    );
}

#[test]
fn interleaved_threads_and_connections_stay_apart() {
    let mut s = Script::new();
    s.call(1, C1, func::PQSEND_QUERY, Some("a"), None)
        .call(2, C2, func::PQSEND_QUERY, Some("b"), None)
        .res(2, C2, PGRES_TUPLES_OK, 2, "SELECT 2")
        .res(1, C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .null(2, C2)
        .null(1, C1);
    let (spans, _) = s.run();
    let texts: Vec<_> = spans
        .iter()
        .map(|q| (q.text.as_deref().unwrap().to_string(), q.rows))
        .collect();
    assert_eq!(texts, vec![("b".to_string(), 2), ("a".to_string(), 1)]);
}

#[test]
fn finish_exit_and_failed_sends_close_spans_and_count_them() {
    let mut s = Script::new();
    s.call(1, C1, func::PQSEND_QUERY, Some("select pg_sleep(10)"), None)
        .finish(C1)
        // PQexec failing before any result, then the next PQexec.
        .call(1, C2, func::PQEXEC, Some("select 1"), None)
        .call(1, C2, func::PQSEND_QUERY, Some("select 1"), None)
        .call(1, C2, func::PQEXEC, Some("select 2"), None)
        .call(1, C2, func::PQSEND_QUERY, Some("select 2"), None)
        .res(1, C2, PGRES_TUPLES_OK, 1, "SELECT 1")
        .null(1, C2)
        .call(1, C2, func::PQSEND_QUERY, Some("select 3"), None)
        .res(1, C1, PGRES_TUPLES_OK, 1, "SELECT 1"); // on the finished connection
    let (spans, mut r) = s.run();
    let mut rest = vec![];
    r.process_exited(7, 99_000_000, &mut rest);
    let spans: Vec<_> = spans.into_iter().chain(queries(rest)).collect();
    let ends: Vec<_> = spans
        .iter()
        .map(|q| (q.text.clone().unwrap(), q.end))
        .collect();
    assert_eq!(
        ends,
        vec![
            ("select pg_sleep(10)".into(), End::ConnectionClosed),
            ("select 1".into(), End::Superseded),
            ("select 2".into(), End::Completed),
            ("select 3".into(), End::ProcessExited),
        ]
    );
    assert_eq!(
        spans[1].rows, 0,
        "the superseded query gets none of the next one's rows"
    );
    assert_eq!(spans[2].rows, 1);
    assert_eq!(
        r.counters,
        Counters {
            unmatched_results: 1,
            incomplete: 3,
            ..Default::default()
        }
    );
    assert_eq!(r.in_flight(), 0);
}

/// psycopg2-style: every statement through PQexec (nested send, drain).
fn exec(s: &mut Script, conn: u64, text: &str, tag: &str) {
    s.call(1, conn, func::PQEXEC, Some(text), None).call(
        1,
        conn,
        func::PQSEND_QUERY,
        Some(text),
        None,
    );
    s.res(1, conn, 1, 0, tag).null(1, conn);
}

#[test]
fn transactions_parent_their_queries_and_end_with_the_connection() {
    let mut s = Script::new();
    s.conn(C1);
    exec(&mut s, C1, "select 1", "SELECT 1");
    exec(&mut s, C1, "BEGIN", "BEGIN");
    exec(&mut s, C1, "update t set x = 1", "UPDATE 1");
    exec(&mut s, C1, "COMMIT", "COMMIT");
    exec(&mut s, C1, "BEGIN", "BEGIN");
    s.call(1, C1, func::PQEXEC, Some("select 1/0"), None).call(
        1,
        C1,
        func::PQSEND_QUERY,
        Some("select 1/0"),
        None,
    );
    s.err(1, C1, "22012").null(1, C1);
    exec(&mut s, C1, "COMMIT", "ROLLBACK");
    exec(&mut s, C1, "BEGIN", "BEGIN");
    s.call(1, C1, func::PQSEND_QUERY, Some("select pg_sleep(9)"), None)
        .finish(C1);
    let (all, r) = s.run_all();
    let kinds: Vec<String> = all
        .iter()
        .map(|s| match s {
            ClientSpan::Query(q) => q.text.as_deref().unwrap().to_string(),
            ClientSpan::Txn(t, _) => format!("txn {}", t.outcome.as_str()),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "select 1",
            "BEGIN",
            "update t set x = 1",
            "COMMIT",
            "txn committed",
            "BEGIN",
            "select 1/0",
            "COMMIT",
            "txn rolled_back",
            "BEGIN",
            "select pg_sleep(9)",
            "txn incomplete"
        ]
    );
    let ClientSpan::Query(first) = &all[0] else {
        panic!()
    };
    assert_eq!(first.ids.parent_span_id, 0);
    let with_conn: Vec<(&TxnSpan, &Option<Arc<ConnInfo>>)> = all
        .iter()
        .filter_map(|s| {
            if let ClientSpan::Txn(t, c) = s {
                Some((t, c))
            } else {
                None
            }
        })
        .collect();
    for ((t, conn), range) in with_conn.iter().zip([1..4, 5..8, 9..11]) {
        for s in &all[range] {
            let ClientSpan::Query(q) = s else { panic!() };
            assert_eq!(
                (q.ids.trace_id, q.ids.parent_span_id),
                (t.ids.trace_id, t.ids.span_id),
                "{:?}",
                q.text
            );
        }
        assert_eq!(conn.as_ref().unwrap().backend_pid, 4242);
    }
    let txns: Vec<&TxnSpan> = with_conn.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        (txns[1].aborted, txns[1].sqlstate.as_deref()),
        (true, Some("22012"))
    );
    assert_eq!(txns[2].end_ns, s.ts, "ends when the connection closes");
    assert!(
        r.client_context(4242).is_none(),
        "forgotten with the connection"
    );
}

#[test]
fn client_context_and_annotations_follow_the_query_in_flight() {
    let mut s = Script::new();
    s.conn(C1);
    exec(&mut s, C1, "BEGIN", "BEGIN");
    s.call(1, C1, func::PQSEND_QUERY, Some("update t set x = 2"), None);
    let (all, mut r) = s.run_all();
    let ClientSpan::Query(begin) = &all[0] else {
        panic!()
    };
    let ctx = r.client_context(4242).expect("known backend");
    assert_eq!(ctx.pid, 7);
    let txn = ctx.txn.expect("in a transaction");
    assert_eq!(begin.ids.parent_span_id, txn.span_id);
    let q = ctx.query.expect("query in flight");
    assert_eq!((q.trace_id, q.parent_span_id), (txn.trace_id, txn.span_id));
    assert!(r.client_context(1).is_none());
    let ev = span::Event {
        name: "lock.wait",
        ts_ns: 5,
        attributes: vec![],
    };
    assert!(r.annotate(4242, ev.clone()));
    assert!(!r.annotate(1, ev.clone()));
    let mut out = vec![];
    let at = Origin {
        pid: 7,
        tid: 1,
        ts_ns: s.ts + 10,
        conn: C1,
    };
    r.on_event(
        Event::Result {
            at,
            result: 0,
            status: -1,
            ntuples: 0,
            cmd_status: "".into(),
            sqlstate: None,
            nulls: true,
        },
        &mut out,
    );
    let ClientSpan::Query(done) = &out[0] else {
        panic!()
    };
    assert_eq!((done.ids, &done.events[..]), (q, &[ev][..]));
    let ctx = r.client_context(4242).unwrap();
    assert_eq!(
        (ctx.query, ctx.txn),
        (None, Some(txn)),
        "idle in transaction"
    );
    r.process_exited(7, s.ts + 20, &mut out);
    assert!(matches!(&out[1], ClientSpan::Txn(t, _) if t.outcome == txn::Outcome::Incomplete));
    assert!(r.client_context(4242).is_none());
}

#[test]
fn pqexec_after_unconsumed_async_results_discards_them() {
    let mut s = Script::new();
    s.call(1, C1, func::PQSEND_QUERY, Some("select 'old'"), None)
        .call(1, C1, func::PQEXEC, Some("select 'new'"), None)
        .res(1, C1, PGRES_TUPLES_OK, 7, "SELECT 7") // drained old results
        .null(1, C1)
        .call(1, C1, func::PQSEND_QUERY, Some("select 'new'"), None)
        .res(1, C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .null(1, C1);
    let (spans, _) = s.run();
    assert_eq!(spans.len(), 2);
    assert_eq!((spans[0].end, spans[1].rows), (End::Superseded, 1));
}

#[test]
fn without_nulls_a_query_ends_at_its_last_result_when_the_next_call_begins() {
    let mut s = Script::new();
    s.conn(C1)
        .call(1, C1, func::PQSEND_QUERY_PREPARED, None, Some("P_0"))
        .rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .call(
            1,
            C1,
            func::PQSEND_QUERY,
            Some("select abalance from a where aid = 1;"),
            None,
        )
        .rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .call(1, C1, func::PQEXEC, Some("update t set x = 1"), None) // nested send invisible
        .rp(C1, PGRES_COMMAND_OK, 0, "UPDATE 3");
    let (spans, mut r) = s.run();
    assert_eq!(spans.len(), 2, "the last one waits for what follows");
    for q in &spans {
        assert_eq!(
            (q.end, q.end_ns - q.start_ns),
            (End::Completed, 1_000),
            "{q:?}"
        );
    }
    let mut out = vec![];
    r.complete_quiet(s.ts + QUIET_NS, &mut out);
    assert!(out.is_empty(), "not quiet for long enough yet");
    r.complete_quiet(s.ts + QUIET_NS + 1, &mut out);
    let q = &queries(out)[0];
    assert_eq!(
        (q.cmd_status.as_deref(), q.end_ns - q.start_ns, q.end),
        (Some("UPDATE 3"), 1_000, End::Completed)
    );
    assert_eq!((r.in_flight(), r.counters), (0, Counters::default()));
}

#[test]
fn late_results_land_on_the_answered_query() {
    let mut s = Script::new();
    // Extended protocol outside a block: CommandComplete, then the commit at Sync fails.
    s.call(
        1,
        C1,
        func::PQSEND_QUERY_PARAMS,
        Some("insert into t values ($1)"),
        None,
    )
    .rp(C1, PGRES_COMMAND_OK, 0, "INSERT 0 1")
    .rp(C1, PGRES_FATAL_ERROR, 0, "")
    // A multi-statement text: its results, then an error skipping the rest.
    .call(
        1,
        C1,
        func::PQEXEC,
        Some("select 1; select * from nope; select 3"),
        None,
    )
    .rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
    .rp(C1, PGRES_FATAL_ERROR, 0, "")
    .finish(C1);
    let (spans, r) = s.run();
    let got: Vec<_> = spans
        .iter()
        .map(|q| (q.end, q.failed, q.sqlstate.clone(), q.end_ns - q.start_ns))
        .collect();
    let err = Some("42P01".to_string());
    assert_eq!(
        got,
        [
            (End::Completed, true, err.clone(), 2_000),
            (End::Completed, true, err, 2_000)
        ]
    );
    assert_eq!((r.in_flight(), r.counters), (0, Counters::default()));
}

#[test]
fn multi_statement_texts_wait_longer_before_quiet_ends_them() {
    let mut s = Script::new();
    s.call(
        1,
        C1,
        func::PQSEND_QUERY,
        Some("select 1; select pg_sleep(2)"),
        None,
    )
    .rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1");
    let (_, mut r) = s.run();
    let mut out = vec![];
    r.complete_quiet(s.ts + QUIET_NS + 1, &mut out);
    assert!(out.is_empty(), "its next statement may still be running");
    r.complete_quiet(s.ts + QUIET_MULTI_NS + 1, &mut out);
    assert_eq!(queries(out).len(), 1);
}

#[test]
fn without_nulls_pqexec_discards_what_it_drains_until_its_own_send() {
    let mut s = Script::new();
    s.call(1, C1, func::PQSEND_QUERY, Some("select 'old'"), None)
        .rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1") // read; its NULL was not
        .call(
            1,
            C1,
            func::PQSEND_QUERY,
            Some("select 1; select 'unread'"),
            None,
        )
        .rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .call(1, C1, func::PQEXEC, Some("select 'new'"), None)
        .rp(C1, PGRES_TUPLES_OK, 7, "SELECT 7") // the unread rest, drained
        .call(1, C1, func::PQSEND_QUERY, Some("select 'new'"), None) // nested
        .rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .finish(C1);
    let (spans, r) = s.run();
    let got: Vec<_> = spans
        .iter()
        .map(|q| (q.text.clone().unwrap(), q.rows, q.end))
        .collect();
    assert_eq!(
        got,
        [
            ("select 'old'".into(), 1, End::Completed),
            ("select 1; select 'unread'".into(), 1, End::Completed),
            ("select 'new'".into(), 1, End::Completed)
        ]
    );
    assert_eq!(r.counters, Counters::default());
}

#[test]
fn without_nulls_a_query_never_answered_ends_when_the_next_begins() {
    // The connection was lost inside PQgetResult (a result the probe does
    // not see), then reset: the next query's results are its own.
    let mut s = Script::new();
    s.call(1, C1, func::PQSEND_QUERY, Some("select 1"), None)
        .rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .call(1, C1, func::PQSEND_QUERY, Some("select pg_sleep(9)"), None)
        .call(1, C1, func::PQSEND_QUERY, Some("select 2"), None)
        .rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .finish(C1);
    let (spans, r) = s.run();
    let got: Vec<_> = spans
        .iter()
        .map(|q| (q.text.clone().unwrap(), q.end))
        .collect();
    assert_eq!(
        got,
        [
            ("select 1".into(), End::Completed),
            ("select pg_sleep(9)".into(), End::Superseded),
            ("select 2".into(), End::Completed)
        ]
    );
    assert_eq!(r.counters.incomplete, 1);
}

#[test]
fn copy_and_single_row_results_do_not_answer_a_query() {
    let mut s = Script::new();
    s.call(1, C1, func::PQEXEC, Some("copy t from stdin"), None)
        .rp(C1, PGRES_COPY_IN, 0, "")
        .rp(C1, PGRES_COMMAND_OK, 0, "COPY 5")
        .call(1, C1, func::PQSEND_QUERY, Some("select * from t"), None)
        .rp(C1, PGRES_SINGLE_TUPLE, 1, "")
        .rp(C1, PGRES_SINGLE_TUPLE, 1, "")
        .rp(C1, PGRES_TUPLES_OK, 0, "SELECT 2")
        .finish(C1);
    let (spans, r) = s.run();
    let got: Vec<_> = spans
        .iter()
        .map(|q| {
            (
                q.cmd_status.as_deref().unwrap_or_default().to_string(),
                q.rows,
                q.end_ns - q.start_ns,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("COPY 5".to_string(), 0, 2_000),
            ("SELECT 2".to_string(), 2, 3_000)
        ]
    );
    assert_eq!((r.in_flight(), r.counters), (0, Counters::default()));
}

#[test]
fn process_exit_completes_an_answered_query_and_cuts_an_unanswered_one() {
    let mut s = Script::new();
    s.call(1, C1, func::PQSEND_QUERY, Some("select 1; select 2"), None)
        .rp(C1, PGRES_TUPLES_OK, 1, "SELECT 1")
        .call(1, C2, func::PQSEND_QUERY, Some("select pg_sleep(9)"), None);
    let (mut out, mut r) = s.run_all();
    r.process_exited(7, s.ts + 5_000, &mut out);
    let spans = queries(out);
    let ends: Vec<_> = spans.iter().map(|q| (q.conn, q.end)).collect();
    assert!(
        ends.contains(&(C1, End::Completed)) && ends.contains(&(C2, End::ProcessExited)),
        "{ends:?}"
    );
    assert_eq!(r.counters.incomplete, 1);
}

/// PQexec(NULL, text) in a loop (a hostile or broken program): libpq
/// returns at once, nothing is sent, no result comes. Each call supersedes
/// the one before: nothing accumulates.
#[test]
fn pqexec_on_a_null_connection_in_a_loop_keeps_nothing() {
    let mut s = Script::new();
    for _ in 0..1000 {
        s.call(1, 0, func::PQEXEC, Some("select 1"), None);
    }
    let (spans, r) = s.run();
    assert_eq!((spans.len(), r.in_flight()), (999, 1));
}

#[test]
fn a_program_leaking_connections_is_held_to_the_bound() {
    use bounds::CONNECTIONS_PER_PROCESS;
    let mut s = Script::new();
    // The first connection keeps a query in flight; the rest answer theirs.
    s.call(1, 1, func::PQSEND_QUERY, Some("select pg_sleep(9)"), None);
    let n = CONNECTIONS_PER_PROCESS as u64 + 2_000;
    for c in 2..=n {
        s.call(1, c, func::PQEXEC, Some("select 1"), None)
            .res(1, c, PGRES_TUPLES_OK, 1, "SELECT 1")
            .null(1, c);
    }
    let (spans, r) = s.run_all();
    let held = r.conns.len();
    assert!(held <= CONNECTIONS_PER_PROCESS, "{held}");
    assert_eq!(
        r.counters.evicted_connections as usize,
        n as usize - held,
        "every connection forgotten is counted"
    );
    // Idle ones went first: the one with a query in flight is still there.
    assert!(r.conns.contains_key(&(7, 1)));
    let qs = queries(spans);
    assert!(
        qs.iter().all(|q| q.end != End::Evicted),
        "idle ones had nothing in flight"
    );
    assert_eq!(r.per_process.get(&7).copied(), Some(held));
}

#[test]
fn prepared_statements_and_queries_in_flight_are_bounded() {
    use bounds::{PREPARED_PER_CONNECTION, QUEUE_PER_CONNECTION};
    let mut s = Script::new();
    for i in 0..PREPARED_PER_CONNECTION + 100 {
        let name = format!("s{i}");
        s.call(1, C1, func::PQPREPARE, Some("select $1"), Some(&name))
            .res(1, C1, PGRES_COMMAND_OK, 0, "")
            .null(1, C1);
    }
    s.pipe(C2, func::PQENTER_PIPELINE_MODE, Some(1));
    for _ in 0..QUEUE_PER_CONNECTION + 10 {
        s.call(1, C2, func::PQSEND_QUERY_PARAMS, Some("select 2"), None);
    }
    let (spans, r) = s.run_all();
    assert_eq!(r.conns[&(7, C1)].prepared.len(), PREPARED_PER_CONNECTION);
    assert_eq!(r.counters.evicted_statements, 100);
    assert_eq!(r.conns[&(7, C2)].queue.len(), QUEUE_PER_CONNECTION);
    assert_eq!(r.counters.evicted_queries, 10);
    let cut = queries(spans)
        .into_iter()
        .filter(|q| q.end == End::Evicted)
        .count();
    assert_eq!(cut, 10);
}
