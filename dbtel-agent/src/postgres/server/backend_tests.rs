use super::*;

const PID: u32 = 500;
const PM: u32 = 100;

fn pack(s: &str) -> u64 {
    s.bytes().enumerate().fold(0, |acc, (i, c)| {
        acc | (((c - b'0') as u64 & 0x3f) << (6 * i))
    })
}

/// Replays probe hits of one backend; `client` plays a traced client.
struct Replay {
    t: Tracker,
    ts: u64,
    client: Option<ClientIds>,
    out: Vec<ServerSpan>,
    notices: Vec<Notice>,
}

impl Replay {
    fn new() -> Self {
        Replay {
            t: Tracker::new(IdGen::seeded(1)),
            ts: 0,
            client: None,
            out: vec![],
            notices: vec![],
        }
    }
    fn hit(&mut self, site: u32, args: [u64; 6], text: Option<&str>) -> &mut Self {
        let mut all = [0u64; dbtel_common::USDT_MAX_ARGS];
        all[..6].copy_from_slice(&args);
        let args = all;
        self.ts += 1_000_000;
        let hit = ServerHit {
            at: Origin {
                pid: PID,
                tid: PID,
                ts_ns: self.ts,
                conn: PM as u64,
            },
            site,
            args,
            text: text.map(Arc::from),
            truncated: false,
            held: None,
        };
        let c = self.client;
        self.t
            .on_hit(hit, &move |_| c, &mut self.out, &mut self.notices);
        self
    }
    fn stmt(&mut self, text: &str) -> &mut Self {
        self.hit(site::STATEMENT_STATUS, [1, 0, 0, 0, 0, 0], Some(text))
    }
    fn idle(&mut self) -> &mut Self {
        self.hit(site::STATEMENT_STATUS, [0; 6], None)
    }
    fn at(&mut self, s: u32) -> &mut Self {
        self.hit(s, [0; 6], None)
    }
    fn wait(&mut self, s: u32) -> &mut Self {
        self.hit(s, [7, 1234, 0, 0, 5, 5], None)
    }
    /// An ERROR report as PostgreSQL makes it: errstart_cold, errcode, errmsg.
    fn fail(&mut self, code: &str, msg: &str) -> &mut Self {
        self.hit(site::ERRSTART, [21, 0, 0, 0, 0, 0], None)
            .error(code, msg)
    }
    fn error(&mut self, code: &str, msg: &str) -> &mut Self {
        self.hit(site::ERRCODE, [pack(code), 0, 0, 0, 0, 0], None)
            .hit(site::ERRMSG, [1, 0, 0, 0, 0, 0], Some(msg))
    }
    fn queries(&self) -> Vec<&ServerQuery> {
        self.out
            .iter()
            .filter_map(|s| {
                if let ServerSpan::Query(q) = s {
                    Some(q)
                } else {
                    None
                }
            })
            .collect()
    }
    fn waits(&self) -> Vec<&LockWait> {
        self.out
            .iter()
            .filter_map(|s| {
                if let ServerSpan::Wait(w) = s {
                    Some(w)
                } else {
                    None
                }
            })
            .collect()
    }
    fn txns(&self) -> Vec<&ServerTxn> {
        self.out
            .iter()
            .filter_map(|s| {
                if let ServerSpan::Txn(t) = s {
                    Some(t)
                } else {
                    None
                }
            })
            .collect()
    }
}

#[test]
fn extended_protocol_reports_one_statement_three_times() {
    let mut r = Replay::new();
    r.stmt("select 1").stmt("select 1").stmt("select 1").idle();
    let q = r.queries();
    assert_eq!(q.len(), 1);
    assert_eq!(
        (&*q[0].text, q[0].end_ns - q[0].start_ns),
        ("select 1", 3_000_000)
    );
    assert_eq!(
        q[0].ids.parent_span_id, 0,
        "an implicit transaction makes no span"
    );
    assert!(r.txns().is_empty());
}

#[test]
fn a_block_parents_its_statements_and_its_lock_wait_sits_under_the_query() {
    let mut r = Replay::new();
    r.stmt("BEGIN").idle();
    r.stmt("UPDATE t SET v = 1")
        .wait(site::LOCK_WAIT_START)
        .wait(site::LOCK_WAIT_DONE)
        .idle();
    r.stmt("COMMIT").idle();
    let (q, w, t) = (r.queries(), r.waits(), r.txns());
    assert_eq!(
        q.iter().map(|q| &*q.text).collect::<Vec<_>>(),
        ["BEGIN", "UPDATE t SET v = 1", "COMMIT"]
    );
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].outcome, TxnOutcome::Committed);
    assert_eq!(t[0].statements, 3);
    assert!(q
        .iter()
        .all(|q| q.ids.parent_span_id == t[0].ids.span_id && q.ids.trace_id == t[0].ids.trace_id));
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].outcome.clone(), w[0].ids.parent_span_id),
        (WaitOutcome::Granted, q[1].ids.span_id)
    );
    assert_eq!(
        (
            w[0].tag.type_name(),
            w[0].tag.mode_name(),
            w[0].end_ns - w[0].start_ns
        ),
        ("transactionid", "ShareLock", 1_000_000)
    );
    let names: Vec<_> = q[1].events.iter().map(|e| e.name).collect();
    assert_eq!(names, ["contention_detected", "lock_contention_detected"]);
    assert!(matches!(
        r.notices[..],
        [Notice::WaitStarted {
            pid: PID,
            postmaster: PM,
            under_client: false,
            ..
        }]
    ));
}

#[test]
fn the_deadlock_victim_s_wait_closes_at_the_error_and_the_block_rolls_back() {
    let mut r = Replay::new();
    r.stmt("BEGIN").idle();
    r.stmt("UPDATE t SET v = 2")
        .wait(site::LOCK_WAIT_START)
        .at(site::DEADLOCK_FOUND)
        .error("40P01", "deadlock detected");
    let err_ts = r.ts - 1_000_000;
    r.at(site::TRANSACTION_ABORT).idle().stmt("ROLLBACK").idle();
    let (q, w, t) = (r.queries(), r.waits(), r.txns());
    assert_eq!(
        (w[0].outcome.clone(), w[0].end_ns),
        (WaitOutcome::Deadlock, err_ts)
    );
    assert_eq!(
        q[1].error.as_ref().map(|e| e.sqlstate.as_str()),
        Some("40P01")
    );
    assert_eq!(q[2].error, None, "ROLLBACK itself succeeds");
    assert_eq!(t[0].outcome, TxnOutcome::RolledBack);
    assert_eq!(
        t[0].error.as_ref().map(|e| e.sqlstate.as_str()),
        Some("40P01")
    );
    assert!(t[0].events.iter().any(|e| e.name == "transaction.aborted"));
    assert!(matches!(
        r.notices[1],
        Notice::Deadlock {
            pid: PID,
            wait: Some(_),
            ..
        }
    ));
}

#[test]
fn timeouts_and_cancellation_are_told_apart() {
    for (code, msg, want) in [
        (
            "55P03",
            "canceling statement due to lock timeout",
            WaitOutcome::LockTimeout,
        ),
        (
            "57014",
            "canceling statement due to statement timeout",
            WaitOutcome::StatementTimeout,
        ),
        (
            "57014",
            "canceling statement due to user request",
            WaitOutcome::Canceled,
        ),
    ] {
        let mut r = Replay::new();
        r.stmt("UPDATE t SET v = 3")
            .wait(site::LOCK_WAIT_START)
            .error(code, msg)
            .at(site::TRANSACTION_ABORT)
            .idle();
        assert_eq!(r.waits()[0].outcome, want);
        assert_eq!(r.queries()[0].error.as_ref().unwrap().sqlstate, code);
    }
}

#[test]
fn a_notice_does_not_fail_the_statement_and_a_plain_rollback_is_no_error() {
    let mut r = Replay::new();
    r.stmt("DROP TABLE IF EXISTS x")
        .error("00000", "table \"%s\" does not exist, skipping");
    r.idle();
    r.stmt("BEGIN")
        .idle()
        .stmt("ROLLBACK")
        .at(site::TRANSACTION_ABORT)
        .idle();
    assert!(r.queries().iter().all(|q| q.error.is_none()));
    assert_eq!(r.txns()[0].outcome, TxnOutcome::RolledBack);
    assert_eq!(r.txns()[0].error, None);
}

#[test]
fn an_error_inside_a_savepoint_fails_its_statement_and_ends_its_wait_not_the_block() {
    let mut r = Replay::new();
    r.t.errors_by_level = true;
    r.stmt("BEGIN").idle().stmt("SAVEPOINT a").idle();
    r.stmt("UPDATE t SET v = 5")
        .wait(site::LOCK_WAIT_START)
        .fail("55P03", "canceling statement due to lock timeout")
        .idle();
    r.stmt("ROLLBACK TO a").idle().stmt("COMMIT").idle();
    let (q, w, t) = (r.queries(), r.waits(), r.txns());
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].outcome, WaitOutcome::LockTimeout);
    assert_eq!(
        q[2].error.as_ref().map(|e| e.sqlstate.as_str()),
        Some("55P03")
    );
    assert!(
        q.iter()
            .enumerate()
            .all(|(i, q)| i == 2 || q.error.is_none()),
        "{q:#?}"
    );
    assert_eq!(
        (t[0].outcome, t[0].error.clone()),
        (TxnOutcome::Committed, None)
    );
}

#[test]
fn warnings_are_not_errors_when_the_level_is_known() {
    let mut r = Replay::new();
    r.t.errors_by_level = true;
    // ROLLBACK outside a block: WARNING 25P01, then the (empty) abort.
    r.stmt("ROLLBACK")
        .error("25P01", "there is no transaction in progress");
    r.at(site::TRANSACTION_ABORT).idle();
    // An ERROR right after a NOTICE keeps the ERROR's code; elog(ERROR) without errcode is XX000.
    r.stmt("select f()")
        .error("00000", "note")
        .fail("22012", "division by zero");
    r.error("01000", "a warning while aborting")
        .at(site::TRANSACTION_ABORT)
        .idle();
    r.stmt("select g()")
        .hit(site::ERRSTART, [21, 0, 0, 0, 0, 0], None)
        .at(site::TRANSACTION_ABORT)
        .idle();
    let q = r.queries();
    assert_eq!(q[0].error, None);
    assert_eq!(
        q[1].error
            .as_ref()
            .map(|e| (e.sqlstate.as_str(), e.message.as_deref())),
        Some(("22012", Some("division by zero")))
    );
    assert_eq!(
        q[2].error.as_ref().map(|e| e.sqlstate.as_str()),
        Some("XX000")
    );
}

#[test]
fn chained_and_prepared_blocks_begin_and_end_where_they_do() {
    let mut r = Replay::new();
    r.stmt("BEGIN").idle();
    r.stmt("COMMIT AND CHAIN").idle();
    r.stmt("insert into t values (1)")
        .idle()
        .stmt("PREPARE TRANSACTION 'g1'")
        .idle();
    r.stmt("select 1").idle();
    let t = r.txns();
    assert_eq!(
        t.iter().map(|t| t.outcome).collect::<Vec<_>>(),
        [TxnOutcome::Committed, TxnOutcome::Prepared]
    );
    assert_eq!(
        t[1].statements, 2,
        "the insert and PREPARE TRANSACTION (COMMIT AND CHAIN ends the first block)"
    );
    assert_eq!(
        r.queries()[4].ids.parent_span_id,
        0,
        "after the prepared block, statements are roots again"
    );
}

#[test]
fn with_a_traced_client_spans_join_its_trace() {
    let mut r = Replay::new();
    let mut g = IdGen::seeded(9);
    let (ctx, cq) = (g.root(), g.root());
    r.client = Some(ClientIds {
        query: Some(cq),
        txn: Some(ctx),
    });
    r.stmt("BEGIN")
        .idle()
        .stmt("UPDATE t SET v = 4")
        .wait(site::LOCK_WAIT_START)
        .wait(site::LOCK_WAIT_DONE)
        .idle();
    let (q, w) = (r.queries(), r.waits());
    assert!(q
        .iter()
        .all(|q| q.joined && q.ids.parent_span_id == cq.span_id && q.ids.trace_id == cq.trace_id));
    assert!(w[0].under_client);
    assert_eq!(
        w[0].ids.parent_span_id, q[1].ids.span_id,
        "inside the server's statement, itself under the client's query"
    );
    assert_eq!(
        r.t.current(PID).map(|t| t.parent_span_id),
        Some(ctx.span_id),
        "server transaction under the client's"
    );
}

#[test]
fn an_error_caught_by_an_exception_block_fails_nothing() {
    let mut r = Replay::new();
    r.t.errors_by_level = true;
    // Caught: reported, then flushed without reaching the client.
    r.stmt("do $$ begin perform 1/0; exception when others then null; end $$")
        .fail("22012", "division by zero")
        .at(site::ERROR_FLUSHED)
        .idle();
    // Uncaught (PL/pgSQL RAISE: errstart, not errstart_cold): emitted, then flushed.
    r.stmt("do $$ begin raise exception 'boom'; end $$")
        .fail("P0001", "boom")
        .at(site::ERROR_EMITTED)
        .at(site::ERROR_FLUSHED)
        .at(site::TRANSACTION_ABORT)
        .idle();
    // errstart_cold calls errstart: two hits, one report, its code kept.
    r.stmt("select 'nope'::regclass")
        .hit(site::ERRSTART, [21, 0, 0, 0, 0, 0], None)
        .fail("42P01", "relation does not exist");
    r.at(site::ERROR_EMITTED)
        .at(site::ERROR_FLUSHED)
        .at(site::TRANSACTION_ABORT)
        .idle();
    let q = r.queries();
    let errors: Vec<Option<&str>> = q
        .iter()
        .map(|q| q.error.as_ref().map(|e| e.sqlstate.as_str()))
        .collect();
    assert_eq!(errors, [None, Some("P0001"), Some("42P01")]);
}

#[test]
fn parallel_workers_echo_their_leader_and_are_not_statements() {
    const LEADER: u32 = 100;
    let (mut t, mut out, mut notices) = (Tracker::new(IdGen::seeded(3)), vec![], vec![]);
    let mut hit = |t: &mut Tracker, pid: u32, ts: u64, text: Option<&str>| {
        let at = Origin {
            pid,
            tid: pid,
            ts_ns: ts,
            conn: PM as u64,
        };
        let h = ServerHit {
            at,
            site: site::STATEMENT_STATUS,
            args: [text.is_some() as u64, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            text: text.map(Arc::from),
            truncated: false,
            held: None,
        };
        t.on_hit(h, &|_| None, &mut out, &mut notices);
    };
    let q = "select count(*) from big";
    hit(&mut t, LEADER, 1, Some(q));
    hit(&mut t, 101, 2, Some(q));
    hit(&mut t, 102, 3, Some(q));
    // One worker exits while its leader runs, the other just after the leader went idle.
    let mut gone = vec![];
    t.exited(101, 4, &mut gone);
    hit(&mut t, LEADER, 5, None);
    t.exited(102, 6, &mut gone);
    assert!(gone.is_empty(), "{gone:?}");
    assert_eq!(t.counters.worker_echoes, 2);
    // A backend that exits inside a statement of its own is cut short, as before.
    hit(&mut t, 103, 7, Some("select pg_sleep(10)"));
    t.exited(103, 8, &mut gone);
    assert!(
        matches!(&gone[..], [ServerSpan::Query(q)] if q.incomplete == Some(Cut::ProcessExited))
    );
    let leader: Vec<_> = out
        .iter()
        .filter(|s| matches!(s, ServerSpan::Query(q) if q.pid == LEADER))
        .collect();
    assert_eq!(leader.len(), 1);
}

#[test]
fn an_exit_closes_everything_open() {
    let mut r = Replay::new();
    r.stmt("BEGIN")
        .idle()
        .stmt("LOCK t")
        .wait(site::LOCK_WAIT_START);
    let mut out = vec![];
    r.t.exited(PID, r.ts + 5, &mut out);
    assert_eq!(out.len(), 3);
    assert!(matches!(&out[0], ServerSpan::Wait(w) if w.outcome == WaitOutcome::ProcessExited));
    assert!(matches!(&out[1], ServerSpan::Query(q) if q.incomplete == Some(Cut::ProcessExited)));
    assert!(matches!(&out[2], ServerSpan::Txn(t) if t.outcome == TxnOutcome::Incomplete));
    assert_eq!(r.t.in_flight(), 0);
}

#[test]
fn a_block_ends_with_its_statement_even_without_an_idle_report() {
    // A batch (pipeline, JDBC) reports no idle until its Sync.
    let mut r = Replay::new();
    r.t.errors_by_level = true;
    r.stmt("BEGIN")
        .stmt("UPDATE t SET v = 1")
        .stmt("COMMIT")
        .stmt("select 1")
        .idle();
    let t = r.txns();
    assert_eq!(
        (t.len(), t[0].outcome, t[0].statements),
        (1, TxnOutcome::Committed, 3)
    );
    assert_eq!(
        r.queries()[3].ids.parent_span_id,
        0,
        "after the block, statements are roots again"
    );
    // Several statements in one text: taken as a whole.
    let mut r = Replay::new();
    r.stmt("BEGIN")
        .idle()
        .stmt("update t set v = 2; COMMIT; BEGIN")
        .idle()
        .stmt("select 2")
        .idle()
        .stmt("END")
        .idle();
    let t = r.txns();
    assert_eq!(
        t.iter()
            .map(|t| (t.outcome, t.statements))
            .collect::<Vec<_>>(),
        [(TxnOutcome::Committed, 2), (TxnOutcome::Committed, 2)]
    );
    let mut r = Replay::new();
    r.stmt("BEGIN; select 1; COMMIT")
        .idle()
        .stmt("select 2")
        .idle();
    assert!(
        r.txns().is_empty(),
        "a block inside one text is not a span of its own"
    );
    assert_eq!(r.queries()[1].ids.parent_span_id, 0);
}

#[test]
fn failed_block_statements_open_commit_and_chain_nothing() {
    let mut r = Replay::new();
    r.t.errors_by_level = true;
    // BEGIN that fails to parse: no block.
    r.stmt("BEGIN ISOLATION LEVEL bogus")
        .fail("42601", "syntax error")
        .at(site::TRANSACTION_ABORT)
        .idle();
    r.stmt("select 1").idle();
    assert!(r.txns().is_empty());
    assert_eq!(r.queries()[1].ids.parent_span_id, 0);
    // PREPARE TRANSACTION that fails rolls the block back.
    r.stmt("BEGIN")
        .idle()
        .stmt("PREPARE TRANSACTION 'g'")
        .fail("55000", "prepared transactions are disabled");
    r.at(site::TRANSACTION_ABORT).idle();
    // COMMIT AND CHAIN outside a block is an error and chains nothing.
    r.stmt("COMMIT AND CHAIN")
        .fail("25P01", "%s can only be used in transaction blocks")
        .at(site::TRANSACTION_ABORT)
        .idle();
    r.stmt("select 2").idle();
    assert_eq!(
        r.txns().iter().map(|t| t.outcome).collect::<Vec<_>>(),
        [TxnOutcome::RolledBack]
    );
    assert_eq!(r.queries().last().unwrap().ids.parent_span_id, 0);
}

#[test]
fn the_code_sent_to_the_client_is_the_one_an_error_ends_with() {
    let mut r = Replay::new();
    r.t.errors_by_level = true;
    // errcode_for_file_access sets the code without errcode(): only the sent code says 58P01.
    r.stmt("select pg_read_file('/nonexistent')")
        .hit(site::ERRSTART, [21, 0, 0, 0, 0, 0], None);
    r.at(site::ERROR_EMITTED)
        .hit(site::ERROR_SENT, [pack("58P01"), 0, 0, 0, 0, 0], None);
    // csvlog and the client each unpack it; a later notice is not this error's.
    r.hit(site::ERROR_SENT, [pack("58P01"), 0, 0, 0, 0, 0], None)
        .at(site::ERROR_FLUSHED)
        .at(site::TRANSACTION_ABORT)
        .idle();
    // A PL/pgSQL handler reading SQLSTATE of a caught error unpacks it too: no effect.
    r.stmt(
        "do $$ begin perform 1/0; exception when others then raise notice '%', sqlstate; end $$",
    )
    .fail("22012", "division by zero");
    r.hit(site::ERROR_SENT, [pack("22012"), 0, 0, 0, 0, 0], None)
        .at(site::ERROR_FLUSHED)
        .idle();
    // An error a parallel worker raised, rethrown by its leader (ThrowErrorData: no errcode()).
    r.stmt("select count(*) from par where g / (g - 10) > 1")
        .hit(site::ERRSTART, [21, 0, 0, 0, 0, 0], None);
    r.at(site::ERROR_EMITTED)
        .hit(site::ERROR_SENT, [pack("22012"), 0, 0, 0, 0, 0], None)
        .at(site::ERROR_FLUSHED)
        .at(site::TRANSACTION_ABORT)
        .idle();
    let errors: Vec<Option<String>> = r
        .queries()
        .iter()
        .map(|q| q.error.as_ref().map(|e| e.sqlstate.clone()))
        .collect();
    assert_eq!(errors, [Some("58P01".into()), None, Some("22012".into())]);
}

/// A replay of a server whose EndCommand is probed.
fn completing() -> Replay {
    let mut r = Replay::new();
    r.t.errors_by_level = true;
    r.t.completes_statements(PM);
    r
}

impl Replay {
    /// EndCommand: the running statement completed, `rows` processed.
    fn done(&mut self, rows: u64) -> &mut Self {
        self.hit(site::COMMAND_DONE, [0, rows, 0, 0, 0, 0], None)
    }
    fn texts(&self) -> Vec<(&str, Option<u64>, Option<&str>)> {
        self.queries()
            .iter()
            .map(|q| {
                (
                    &*q.text,
                    q.rows,
                    q.error.as_ref().map(|e| e.sqlstate.as_str()),
                )
            })
            .collect()
    }
}

#[test]
fn statements_without_a_sync_between_them_are_spans_of_their_own() {
    let mut r = completing();
    // Extended protocol, one Sync for the lot: Parse/Bind/Execute report the
    // text (the kernel sends it once per completion), EndCommand ends each.
    r.stmt("BEGIN").done(0);
    for _ in 0..3 {
        r.stmt("insert into t values ($1)").done(1);
    }
    r.stmt("delete from t where id = 1")
        .done(1)
        .stmt("delete from t where id = 2")
        .done(0);
    r.stmt("COMMIT").done(0).idle();
    let want = [
        ("BEGIN", Some(0), None),
        ("insert into t values ($1)", Some(1), None),
    ];
    assert_eq!(r.texts()[..2], want);
    assert_eq!(r.texts().len(), 7);
    assert_eq!(r.texts()[5], ("delete from t where id = 2", Some(0), None));
    let q = r.queries();
    assert!(
        q.windows(2).all(|w| w[0].end_ns <= w[1].start_ns),
        "one after the other"
    );
    assert_eq!(
        q[1].end_ns - q[1].start_ns,
        1_000_000,
        "from its text to its EndCommand"
    );
    let t = r.txns();
    assert_eq!(
        (t.len(), t[0].statements, t[0].outcome),
        (1, 7, TxnOutcome::Committed)
    );
    assert_eq!(
        t[0].end_ns, q[6].end_ns,
        "the block ends as COMMIT completes"
    );
    assert!(q.iter().all(|q| q.ids.parent_span_id == t[0].ids.span_id));
}

#[test]
fn a_failing_statement_in_a_batch_is_its_error_and_the_rest_never_ran() {
    let mut r = completing();
    r.stmt("insert into t values ($1)")
        .done(1)
        .stmt("insert into t values ($1)");
    r.fail(
        "23505",
        "duplicate key value violates unique constraint \"%s\"",
    )
    .at(site::ERROR_EMITTED)
    .at(site::TRANSACTION_ABORT);
    // The server skips the batch's other messages until Sync: no report.
    r.idle().stmt("select 1").done(1).idle();
    assert_eq!(
        r.texts(),
        [
            ("insert into t values ($1)", Some(1), None),
            ("insert into t values ($1)", None, Some("23505")),
            ("select 1", Some(1), None)
        ]
    );
}

#[test]
fn a_text_of_several_statements_is_run_statement_by_statement() {
    let mut r = completing();
    r.stmt("BEGIN; insert into t values (1); update t set v = 2; COMMIT")
        .done(0)
        .done(1)
        .done(3)
        .done(0)
        .idle();
    assert_eq!(
        r.texts(),
        [
            ("BEGIN", Some(0), None),
            ("insert into t values (1)", Some(1), None),
            ("update t set v = 2", Some(3), None),
            ("COMMIT", Some(0), None)
        ]
    );
    let t = r.txns();
    assert_eq!(
        (t.len(), t[0].statements, t[0].outcome),
        (1, 4, TxnOutcome::Committed)
    );
    // A failure stops the text: the statements after it never ran.
    let mut r = completing();
    r.stmt("select 1; select 1/0; select 3")
        .done(1)
        .fail("22012", "division by zero")
        .at(site::ERROR_EMITTED)
        .at(site::TRANSACTION_ABORT)
        .idle();
    assert_eq!(
        r.texts(),
        [
            ("select 1", Some(1), None),
            ("select 1/0", None, Some("22012"))
        ]
    );
    // One the scanner cannot split stays whole, ending at its last completion.
    let mut r = completing();
    r.stmt("select $x$;$x$; select 2").done(1).done(1).idle();
    let q = r.queries();
    assert_eq!(
        (q.len(), q[0].rows, q[0].end_ns - q[0].start_ns),
        (1, None, 2_000_000)
    );
    // One statement with its semicolon: its text as sent.
    let mut r = completing();
    r.stmt("select 1;").done(1).idle();
    assert_eq!(r.texts(), [("select 1;", Some(1), None)]);
}

#[test]
fn prepared_only_statements_and_suspended_portals_make_no_span() {
    let mut r = completing();
    // asyncpg: Parse + Describe + Sync, then Bind + Execute + Sync.
    r.stmt("select * from t where id = $1").idle();
    r.stmt("select * from t where id = $1").done(1).idle();
    // A portal fetched 2 rows at a time (JDBC fetch size): suspended twice.
    r.stmt("BEGIN").done(0).idle();
    r.stmt("select * from big")
        .idle()
        .stmt("select * from big")
        .idle()
        .stmt("select * from big")
        .done(1)
        .idle();
    r.stmt("COMMIT").done(0).idle();
    // A BEGIN parsed but never run opens nothing.
    r.stmt("BEGIN").idle().stmt("select 2").done(1).idle();
    let texts: Vec<&str> = r.texts().iter().map(|t| t.0).collect();
    assert_eq!(
        texts,
        [
            "select * from t where id = $1",
            "BEGIN",
            "select * from big",
            "COMMIT",
            "select 2"
        ]
    );
    let q = r.queries();
    assert_eq!(
        q[0].end_ns - q[0].start_ns,
        1_000_000,
        "from the Bind that ran it"
    );
    assert_eq!(r.t.counters.unexecuted, 4);
    assert_eq!(r.t.counters.queries, 5);
    let t = r.txns();
    assert_eq!((t.len(), t[0].statements), (1, 3));
    assert_eq!(q[4].ids.parent_span_id, 0);
}

#[test]
fn an_error_at_sync_after_completion_is_the_completed_statement_s() {
    // A deferred constraint checked at the implicit commit of Sync.
    let mut r = completing();
    r.stmt("insert into child values (1)").done(1);
    r.fail(
        "23503",
        "insert or update on table \"%s\" violates foreign key constraint \"%s\"",
    )
    .at(site::ERROR_EMITTED)
    .at(site::TRANSACTION_ABORT)
    .idle();
    let q = r.queries();
    assert_eq!(
        r.texts(),
        [("insert into child values (1)", Some(1), Some("23503"))]
    );
    assert_eq!(q[0].end_ns - q[0].start_ns, 1_000_000);
}

#[test]
fn a_completion_without_a_statement_is_counted_and_an_exit_keeps_a_completed_one() {
    let mut r = completing();
    r.done(5);
    assert_eq!(r.t.counters.unmatched_completions, 1);
    r.stmt("BEGIN").done(0).idle().stmt("COMMIT").done(0);
    let mut out = vec![];
    r.t.exited(PID, r.ts + 5, &mut out);
    assert!(
        matches!(&out[0], ServerSpan::Query(q) if q.incomplete.is_none() && q.rows == Some(0)),
        "{out:?}"
    );
    assert!(matches!(&out[1], ServerSpan::Txn(t) if t.outcome == TxnOutcome::Committed));
}

#[test]
fn a_statement_beginning_is_told_before_it_is_handled() {
    let mut r = completing();
    let hit = |site: u32, text: Option<&str>| ServerHit {
        at: Origin {
            pid: PID,
            tid: PID,
            ts_ns: 0,
            conn: PM as u64,
        },
        site,
        args: [0; dbtel_common::USDT_MAX_ARGS],
        text: text.map(Arc::from),
        truncated: false,
        held: None,
    };
    let status = |t: &str| hit(site::STATEMENT_STATUS, Some(t));
    assert_eq!(
        r.t.begins_statement(&status("select 1")),
        Some(false),
        "a backend not seen yet"
    );
    r.stmt("select 1");
    assert_eq!(
        r.t.begins_statement(&status("select 1")),
        None,
        "its Bind or Execute"
    );
    assert_eq!(r.t.begins_statement(&hit(site::COMMAND_DONE, None)), None);
    r.done(1);
    assert_eq!(
        r.t.begins_statement(&status("select 1")),
        Some(false),
        "executed again"
    );
    r.stmt("insert into t values (1)")
        .fail("23505", "duplicate key")
        .at(site::TRANSACTION_ABORT);
    assert_eq!(
        r.t.begins_statement(&hit(site::STATEMENT_STATUS, None)),
        None,
        "idle begins nothing"
    );
    r.idle();
    assert_eq!(
        r.t.begins_statement(&status("select 2")),
        Some(true),
        "after a failure: the server skipped to the Sync"
    );
    r.stmt("select 2; select 3");
    assert_eq!(
        r.t.begins_statement(&hit(site::COMMAND_DONE, None)),
        Some(false),
        "the text's next statement"
    );
}

#[test]
fn a_completed_statement_without_its_idle_report_closes_once_the_backend_is_quiet() {
    // The kernel side sends no idle report right after EndCommand (repeat::COMPLETES).
    let mut r = completing();
    r.stmt("BEGIN").done(0);
    r.stmt("update t set v = 1").done(1);
    r.stmt("COMMIT").done(0);
    let completed_at = r.ts;
    assert_eq!(r.texts().len(), 2, "each closed by the next statement");
    assert_eq!(r.t.in_flight(), 0, "a completed statement is not running");
    assert_eq!(r.t.running_query(PID), None);
    let none = |_: u32| None;
    r.t.close_quiet(completed_at, &none, &mut |_| None, &mut r.out);
    assert_eq!(r.texts().len(), 2, "not quiet for long enough yet");
    r.t.close_quiet(completed_at + 1, &none, &mut |_| None, &mut r.out);
    assert_eq!(
        r.texts(),
        [
            ("BEGIN", Some(0), None),
            ("update t set v = 1", Some(1), None),
            ("COMMIT", Some(0), None)
        ]
    );
    assert_eq!(
        r.queries()[2].end_ns,
        completed_at,
        "ended at its EndCommand"
    );
    let t = r.txns();
    assert_eq!(
        (t.len(), t[0].statements, t[0].outcome, t[0].end_ns),
        (1, 3, TxnOutcome::Committed, completed_at)
    );
    r.t.close_quiet(u64::MAX, &none, &mut |_| None, &mut r.out);
    assert_eq!(r.out.len(), 4, "closed once");
}

#[test]
fn a_completion_the_kernel_holds_closes_a_quiet_statement_once() {
    // EndCommand is held in the kernel side until the backend's next record;
    // a quiet backend's is read from there, and comes again later.
    let mut r = completing();
    r.stmt("update t set v = 1");
    let started = r.ts;
    let done_at = started + 400;
    let held = dbtel_common::Held {
        ts_ns: done_at,
        args: [0, 3],
    };
    let none = |_: u32| None;
    let mut asked = vec![];
    r.t.close_quiet(
        u64::MAX,
        &none,
        &mut |pid| {
            asked.push(pid);
            None
        },
        &mut r.out,
    );
    assert_eq!(
        (asked.as_slice(), r.out.len()),
        (&[PID][..], 0),
        "running, nothing held: open"
    );
    // A completion from before the statement (its text's record was lost) is not its.
    let old = dbtel_common::Held {
        ts_ns: started - 1,
        ..held
    };
    r.t.close_quiet(u64::MAX, &none, &mut |_| Some(old), &mut r.out);
    assert!(r.out.is_empty());
    r.t.close_quiet(started, &none, &mut |_| Some(held), &mut r.out);
    assert!(r.out.is_empty(), "not quiet for long enough yet");
    r.t.close_quiet(started + 1, &none, &mut |_| Some(held), &mut r.out);
    assert_eq!(r.texts(), [("update t set v = 1", Some(3), None)]);
    assert_eq!(r.queries()[0].end_ns, done_at, "ended at its EndCommand");
    // The same completion, sent with the next statement's text.
    r.ts = done_at - 1_000_000;
    r.done(3);
    r.stmt("select 1").done(1).idle();
    assert_eq!(
        r.texts(),
        [
            ("update t set v = 1", Some(3), None),
            ("select 1", Some(1), None)
        ]
    );
    assert_eq!(r.t.counters.unmatched_completions, 0, "{:?}", r.t.counters);
}

#[test]
fn a_backend_that_reported_after_its_completion_is_not_quiet() {
    // A deferred constraint fails at the Sync's commit, after EndCommand: the
    // kernel side then sends the idle report, and the error is the statement's.
    let mut r = completing();
    r.stmt("insert into t values ($1)").done(1);
    let completed_at = r.ts;
    r.fail(
        "23503",
        "insert or update on table \"%s\" violates foreign key constraint \"%s\"",
    )
    .at(site::ERROR_EMITTED)
    .at(site::TRANSACTION_ABORT);
    let none = |_: u32| None;
    r.t.close_quiet(completed_at + 1, &none, &mut |_| None, &mut r.out);
    assert!(r.texts().is_empty(), "it reported since");
    r.idle();
    assert_eq!(
        r.texts(),
        [("insert into t values ($1)", Some(1), Some("23503"))]
    );
    assert_eq!(r.queries()[0].end_ns, completed_at);
}

#[test]
fn a_completed_statement_in_a_lock_wait_is_not_closed_as_quiet() {
    let mut r = completing();
    r.stmt("COMMIT").done(0).wait(site::LOCK_WAIT_START);
    let none = |_: u32| None;
    r.t.close_quiet(u64::MAX, &none, &mut |_| None, &mut r.out);
    assert!(r.out.is_empty(), "{:?}", r.out.len());
}

#[test]
fn a_statement_begun_after_another_backend_completed_the_same_text_is_no_echo() {
    let (mut t, mut out, mut notices) = (Tracker::new(IdGen::seeded(4)), vec![], vec![]);
    t.completes_statements(PM);
    let mut hit = |t: &mut Tracker, pid: u32, ts: u64, site: u32, text: Option<&str>| {
        let h = ServerHit {
            at: Origin {
                pid,
                tid: pid,
                ts_ns: ts,
                conn: PM as u64,
            },
            site,
            args: [text.is_some() as u64, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            text: text.map(Arc::from),
            truncated: false,
            held: None,
        };
        t.on_hit(h, &|_| None, &mut out, &mut notices);
    };
    let q = "select count(*) from big";
    hit(&mut t, 100, 1, site::STATEMENT_STATUS, Some(q));
    hit(&mut t, 101, 2, site::STATEMENT_STATUS, Some(q));
    // The leader completes; no idle report follows (repeat::COMPLETES).
    hit(&mut t, 100, 3, site::COMMAND_DONE, None);
    let mut gone = vec![];
    t.exited(101, 4, &mut gone);
    assert!(gone.is_empty(), "a worker begun while it ran: {gone:?}");
    hit(&mut t, 102, 5, site::STATEMENT_STATUS, Some(q));
    t.exited(102, 6, &mut gone);
    assert!(
        matches!(&gone[..], [ServerSpan::Query(q)] if q.incomplete == Some(Cut::ProcessExited)),
        "begun after the completion: its own statement"
    );
    assert_eq!(t.counters.worker_echoes, 1);
}
