//! From decoded events to finished query spans: a pure state machine (no
//! clock, no I/O), so recorded event streams replay identically in tests.
//!
//! Per connection (process, PGconn*) it keeps a FIFO of queries in flight.
//! A query opens at the outermost libpq call (PQexec's inner PQsendQuery is
//! recognised as nested and folded in) and closes when PQgetResult returns
//! NULL: the moment the last result reached the client.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use dbtel_common::func;

use crate::events::{Event, Origin};

/// Connection details read once from libpq's PGconn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub backend_pid: i32,
    pub db: String,
    /// Host name, address, or unix socket directory.
    pub host: String,
    pub port: String,
}

/// Why a span ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The last result was delivered (PQgetResult returned NULL).
    Completed,
    /// PQfinish closed the connection with the query in flight.
    ConnectionClosed,
    /// The traced process exited with the query in flight.
    ProcessExited,
    /// The next synchronous call on the connection began first (the call failed
    /// before producing results, e.g. a lost connection).
    Superseded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuerySpan {
    pub pid: u32,
    pub tid: u32,
    pub conn: u64,
    /// CLOCK_MONOTONIC nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    /// The libpq function the application called (dbtel_common::func).
    pub call: u32,
    /// SQL text as the application sent it (None: unknown).
    pub text: Option<String>,
    pub text_truncated: bool,
    /// Prepared statement name, for prepare and execute-prepared calls.
    pub statement_name: Option<String>,
    /// An execution of a statement prepared before dbtel attached: its text is unknown.
    pub prepared_before_attach: bool,
    pub rows: u64,
    /// Command tag of the last result, e.g. "UPDATE 1".
    pub cmd_status: Option<String>,
    pub sqlstate: Option<String>,
    pub failed: bool,
    pub conn_info: Option<Arc<ConnInfo>>,
    pub end: End,
}

impl QuerySpan {
    pub fn is_prepare(&self) -> bool {
        matches!(self.call, func::PQPREPARE | func::PQSEND_PREPARE)
    }
}

/// Things that did not fit the model, counted rather than dropped silently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// A non-empty result on a connection with no query in flight.
    pub unmatched_results: u64,
    /// Queries closed without their final result (see [`End`]).
    pub incomplete: u64,
}

// PGRES_* values of libpq's ExecStatusType (stable across versions).
const PGRES_TUPLES_OK: i32 = 2;
const PGRES_BAD_RESPONSE: i32 = 5;
const PGRES_FATAL_ERROR: i32 = 7;
const PGRES_SINGLE_TUPLE: i32 = 9;

struct InFlight {
    span: QuerySpan,
    /// Synchronous call (PQexec & co.) whose nested send may still come.
    sync: bool,
    /// The query has gone to the server: results now belong to it.
    sent: bool,
    /// Results of an earlier, superseded query are still being drained
    /// (PQexec discards them before sending).
    discarding: bool,
}

#[derive(Default)]
struct ConnState {
    info: Option<Arc<ConnInfo>>,
    /// Statement name → (text, truncated), learnt from prepare calls.
    prepared: HashMap<String, (String, bool)>,
    queue: VecDeque<InFlight>,
}

#[derive(Default)]
pub struct Reconstructor {
    conns: HashMap<(u32, u64), ConnState>,
    pub counters: Counters,
}

fn is_sync(f: u32) -> bool {
    matches!(f, func::PQEXEC | func::PQEXEC_PARAMS | func::PQPREPARE | func::PQEXEC_PREPARED)
}

/// The asynchronous call a synchronous one makes inside libpq.
fn nested_send(f: u32) -> Option<u32> {
    Some(match f {
        func::PQEXEC => func::PQSEND_QUERY,
        func::PQEXEC_PARAMS => func::PQSEND_QUERY_PARAMS,
        func::PQPREPARE => func::PQSEND_PREPARE,
        func::PQEXEC_PREPARED => func::PQSEND_QUERY_PREPARED,
        _ => return None,
    })
}

impl Reconstructor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of queries in flight (for leak checks and metrics).
    pub fn in_flight(&self) -> usize {
        self.conns.values().map(|c| c.queue.len()).sum()
    }

    pub fn on_event(&mut self, ev: Event, out: &mut Vec<QuerySpan>) {
        match ev {
            Event::Call { at, func, text, name, truncated } => self.on_call(at, func, text, name, truncated, out),
            Event::Result { at, result, status, ntuples, cmd_status, sqlstate } => {
                self.on_result(at, result, status, ntuples, cmd_status, sqlstate, out)
            }
            Event::Conn { at, backend_pid, db, host, port } => {
                self.conns.entry((at.pid, at.conn)).or_default().info =
                    Some(Arc::new(ConnInfo { backend_pid, db, host, port }));
            }
            Event::Finish { at } => {
                if let Some(mut c) = self.conns.remove(&(at.pid, at.conn)) {
                    self.close_all(&mut c, at.ts_ns, End::ConnectionClosed, out);
                }
            }
        }
    }

    fn on_call(&mut self, at: Origin, f: u32, text: Option<String>, name: String, truncated: bool, out: &mut Vec<QuerySpan>) {
        let mut conn = self.conns.remove(&(at.pid, at.conn)).unwrap_or_default();
        // The send a PQexec-style call makes inside libpq: same thread, not yet sent.
        if let Some(outer) = conn
            .queue
            .iter_mut()
            .find(|q| q.sync && !q.sent && q.span.tid == at.tid && nested_send(q.span.call) == Some(f))
        {
            outer.sent = true;
            outer.discarding = false;
            self.conns.insert((at.pid, at.conn), conn);
            return;
        }
        let sync = is_sync(f);
        let mut discarding = false;
        if sync && !conn.queue.is_empty() {
            // A synchronous call starts by draining whatever is pending: earlier
            // queries still in flight will never complete as themselves.
            discarding = conn.queue.iter().any(|q| q.sent);
            self.close_all(&mut conn, at.ts_ns, End::Superseded, out);
        }
        let (mut text, mut text_truncated, mut statement_name, mut before_attach) = (text, truncated, None, false);
        match f {
            func::PQPREPARE | func::PQSEND_PREPARE => {
                if let Some(t) = &text {
                    conn.prepared.insert(name.clone(), (t.clone(), truncated));
                }
                statement_name = Some(name);
            }
            func::PQEXEC_PREPARED | func::PQSEND_QUERY_PREPARED => {
                match conn.prepared.get(&name) {
                    Some((t, tr)) => (text, text_truncated) = (Some(t.clone()), *tr),
                    None => (text, before_attach) = (None, true),
                }
                statement_name = Some(name);
            }
            _ => {}
        }
        conn.queue.push_back(InFlight {
            span: QuerySpan {
                pid: at.pid,
                tid: at.tid,
                conn: at.conn,
                start_ns: at.ts_ns,
                end_ns: at.ts_ns,
                call: f,
                text,
                text_truncated,
                statement_name,
                prepared_before_attach: before_attach,
                rows: 0,
                cmd_status: None,
                sqlstate: None,
                failed: false,
                conn_info: conn.info.clone(),
                end: End::Completed,
            },
            sync,
            sent: !sync,
            discarding,
        });
        self.conns.insert((at.pid, at.conn), conn);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_result(
        &mut self,
        at: Origin,
        result: u64,
        status: i32,
        ntuples: i32,
        cmd_status: String,
        sqlstate: Option<String>,
        out: &mut Vec<QuerySpan>,
    ) {
        let Some(q) = self.conns.get_mut(&(at.pid, at.conn)).and_then(|c| c.queue.front_mut()) else {
            // PQgetResult returning NULL on an idle connection is normal.
            if result != 0 {
                self.counters.unmatched_results += 1;
            }
            return;
        };
        if !q.sent {
            if q.discarding {
                q.discarding = result != 0;
                return;
            }
            if result == 0 {
                return; // PQexec's drain of an idle connection
            }
            q.sent = true; // the nested send was not observed (direct call inside libpq)
        }
        if result == 0 {
            let conn = self.conns.get_mut(&(at.pid, at.conn)).expect("looked up above");
            let mut q = conn.queue.pop_front().expect("front exists");
            q.span.end_ns = at.ts_ns;
            out.push(q.span);
            return;
        }
        let s = &mut q.span;
        if matches!(status, PGRES_TUPLES_OK | PGRES_SINGLE_TUPLE) {
            s.rows += ntuples.max(0) as u64;
        }
        if !cmd_status.is_empty() {
            s.cmd_status = Some(cmd_status);
        }
        if matches!(status, PGRES_FATAL_ERROR | PGRES_BAD_RESPONSE) {
            s.failed = true;
            if s.sqlstate.is_none() {
                s.sqlstate = sqlstate;
            }
        }
    }

    fn close_all(&mut self, conn: &mut ConnState, ts: u64, end: End, out: &mut Vec<QuerySpan>) {
        for mut q in conn.queue.drain(..) {
            q.span.end_ns = ts.max(q.span.start_ns);
            q.span.end = end;
            self.counters.incomplete += 1;
            out.push(q.span);
        }
    }

    /// The process is gone: close what it had in flight and forget it.
    pub fn process_exited(&mut self, pid: u32, ts_ns: u64, out: &mut Vec<QuerySpan>) {
        let keys: Vec<_> = self.conns.keys().filter(|(p, _)| *p == pid).copied().collect();
        for k in keys {
            let mut c = self.conns.remove(&k).expect("key listed");
            self.close_all(&mut c, ts_ns, End::ProcessExited, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{decode, encode};

    /// A scripted event stream for one process, replayed through decode().
    struct Script {
        pid: u32,
        ts: u64,
        bytes: Vec<Vec<u8>>,
    }

    const C1: u64 = 0x1000;
    const C2: u64 = 0x2000;

    impl Script {
        fn new() -> Self {
            Script { pid: 7, ts: 1_000_000, bytes: vec![] }
        }
        fn at(&mut self, tid: u32, conn: u64) -> Origin {
            self.ts += 1_000;
            Origin { pid: self.pid, tid, ts_ns: self.ts, conn }
        }
        fn call(&mut self, tid: u32, conn: u64, f: u32, text: Option<&str>, name: Option<&str>) -> &mut Self {
            let at = self.at(tid, conn);
            self.bytes.push(encode::call(at, f, text, name));
            self
        }
        fn res(&mut self, tid: u32, conn: u64, status: i32, ntuples: i32, cmd: &str) -> &mut Self {
            let at = self.at(tid, conn);
            self.bytes.push(encode::result(at, 0xbeef, status, ntuples, cmd, ""));
            self
        }
        fn err(&mut self, tid: u32, conn: u64, sqlstate: &str) -> &mut Self {
            let at = self.at(tid, conn);
            self.bytes.push(encode::result(at, 0xbeef, PGRES_FATAL_ERROR, 0, "", sqlstate));
            self
        }
        fn null(&mut self, tid: u32, conn: u64) -> &mut Self {
            let at = self.at(tid, conn);
            self.bytes.push(encode::result(at, 0, -1, 0, "", ""));
            self
        }
        fn conn(&mut self, conn: u64) -> &mut Self {
            let at = self.at(1, conn);
            self.bytes.push(encode::conn(at, 4242, "bench", "/var/run/postgresql", "5432"));
            self
        }
        fn finish(&mut self, conn: u64) -> &mut Self {
            let at = self.at(1, conn);
            self.bytes.push(encode::finish(at));
            self
        }
        fn run(&self) -> (Vec<QuerySpan>, Reconstructor) {
            let mut r = Reconstructor::new();
            let mut out = vec![];
            for b in &self.bytes {
                r.on_event(decode(b).unwrap(), &mut out);
            }
            (out, r)
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
        assert_eq!((q.call, q.text.as_deref(), q.rows, q.end), (func::PQEXEC, Some("select 1"), 1, End::Completed));
        assert_eq!(q.cmd_status.as_deref(), Some("SELECT 1"));
        assert_eq!(q.end_ns - q.start_ns, 4_000, "from the PQexec call to the final NULL result");
        assert_eq!(q.conn_info.as_ref().unwrap().backend_pid, 4242);
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.counters, Counters::default());
    }

    #[test]
    fn pqexec_whose_nested_send_is_invisible_still_collects_results() {
        let mut s = Script::new();
        s.call(1, C1, func::PQEXEC, Some("select 1"), None).null(1, C1).res(1, C1, PGRES_TUPLES_OK, 3, "SELECT 3").null(1, C1);
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
        assert_eq!((spans[0].rows, spans[0].cmd_status.as_deref()), (0, Some("UPDATE 5")));
        assert_eq!(spans[1].call, func::PQSEND_QUERY_PARAMS);
        assert_eq!(r.counters, Counters::default());
    }

    #[test]
    fn prepared_statements_map_names_to_text_per_connection() {
        let mut s = Script::new();
        s.call(1, C1, func::PQPREPARE, Some("select * from t where id = $1"), Some("P0_1"))
            .call(1, C1, func::PQSEND_PREPARE, Some("select * from t where id = $1"), Some("P0_1"))
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
        assert_eq!(spans[1].text.as_deref(), Some("select * from t where id = $1"));
        assert!(!spans[1].prepared_before_attach);
        assert_eq!((spans[2].text.as_deref(), spans[2].prepared_before_attach), (None, true));
        assert_eq!(spans[2].call, func::PQEXEC_PREPARED);
    }

    #[test]
    fn errors_carry_the_first_sqlstate() {
        let mut s = Script::new();
        s.call(1, C1, func::PQEXEC, Some("select * from missing"), None)
            .call(1, C1, func::PQSEND_QUERY, Some("select * from missing"), None)
            .err(1, C1, "42P01")
            .null(1, C1);
        let (spans, _) = s.run();
        assert_eq!((spans[0].failed, spans[0].sqlstate.as_deref()), (true, Some("42P01")));
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
        let texts: Vec<_> = spans.iter().map(|q| (q.text.clone().unwrap(), q.rows)).collect();
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
        let (mut spans, mut r) = s.run();
        r.process_exited(7, 99_000_000, &mut spans);
        let ends: Vec<_> = spans.iter().map(|q| (q.text.clone().unwrap(), q.end)).collect();
        assert_eq!(
            ends,
            vec![
                ("select pg_sleep(10)".into(), End::ConnectionClosed),
                ("select 1".into(), End::Superseded),
                ("select 2".into(), End::Completed),
                ("select 3".into(), End::ProcessExited),
            ]
        );
        assert_eq!(spans[1].rows, 0, "the superseded query gets none of the next one's rows");
        assert_eq!(spans[2].rows, 1);
        assert_eq!(r.counters, Counters { unmatched_results: 1, incomplete: 3 });
        assert_eq!(r.in_flight(), 0);
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
}
