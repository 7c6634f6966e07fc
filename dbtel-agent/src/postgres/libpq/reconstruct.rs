//! From decoded events to finished query spans: a pure state machine (no
//! clock, no I/O), so recorded event streams replay identically in tests.
//!
//! Per connection (process, PGconn*) it keeps a FIFO of queries in flight.
//! A query opens at the outermost libpq call (PQexec's inner PQsendQuery is
//! recognised as nested and folded in) and closes when its last result
//! reaches the client. Usually the probe sees results but not the NULL that
//! follows them (it costs a trap per call), so a query that has had a final
//! result (not COPY, not single-row) is "answered" and ends, at its last
//! result's time, when the next call on its connection begins (libpq allows
//! none before the results are read), at PQfinish, at exit, or once its
//! connection has been quiet for a while. Late results still land on it: a
//! commit that fails at Sync after CommandComplete, the rest of a
//! multi-statement text. Where the NULL is seen (entry + return probes), it
//! ends the query, as it always did.
//!
//! Identifiers are given when a query opens, by the transaction tracker
//! ([`crate::pipeline::txn`]): a query inside BEGIN…COMMIT is a child of its
//! transaction's span, one outside is the root of a trace of its own.
//!
//! libpq's pipeline mode, where queries are sent without waiting for each
//! other's results, is modelled in [`pipeline`].

use std::{collections::VecDeque, sync::Arc};

use dbtel_common::func;

use self::pipeline::take_reserved;
pub use self::types::*;
use crate::{
    events::{Event, Origin},
    pipeline::shape,
    pipeline::span::{self, IdGen, Ids},
    pipeline::txn::{self, Tracker, TxnSpan, Verb},
};

/// How long an answered query's connection stays quiet before its last
/// result so far is taken as its last (when PQgetResult's NULL is not seen):
/// a query that returns one result, and a multi-statement text (whose next
/// statement may take long).
pub const QUIET_NS: u64 = 1_000_000_000;
pub const QUIET_MULTI_NS: u64 = 10_000_000_000;

// PGRES_* values of libpq's ExecStatusType (stable across versions).
const PGRES_TUPLES_OK: i32 = 2;
const PGRES_COPY_OUT: i32 = 3;
const PGRES_COPY_IN: i32 = 4;
const PGRES_BAD_RESPONSE: i32 = 5;
const PGRES_FATAL_ERROR: i32 = 7;
const PGRES_COPY_BOTH: i32 = 8;
const PGRES_SINGLE_TUPLE: i32 = 9;
const PGRES_PIPELINE_SYNC: i32 = 10;
const PGRES_PIPELINE_ABORTED: i32 = 11;
const PGRES_TUPLES_CHUNK: i32 = 12;

/// A result after which the statement has nothing more to return (COPY
/// results and single-row / chunked rows are followed by more).
fn ends_statement(status: i32) -> bool {
    !matches!(
        status,
        PGRES_COPY_OUT
            | PGRES_COPY_IN
            | PGRES_COPY_BOTH
            | PGRES_SINGLE_TUPLE
            | PGRES_PIPELINE_SYNC
            | PGRES_TUPLES_CHUNK
    )
}

struct InFlight {
    span: QuerySpan,
    verb: Verb,
    /// Synchronous call (PQexec & co.) whose nested send may still come.
    sync: bool,
    /// The query has gone to the server: results now belong to it.
    sent: bool,
    /// Results of an earlier, superseded query are still being drained
    /// (PQexec discards them before sending).
    discarding: bool,
    /// It returns one statement's results (extended protocol, or a text of
    /// one statement): nothing but a late error follows its final result.
    one_result: bool,
    /// When its last final result so far arrived.
    answered_at: Option<u64>,
    /// Its place among the queries sent on its connection (see `ConnState::syncs`).
    seq: u64,
}

#[derive(Default)]
struct ConnState {
    info: Option<Arc<ConnInfo>>,
    /// Its last call or result (which connections are least recently used).
    last_ns: u64,
    /// Statement name → (text, truncated), learnt from prepare calls.
    prepared: crate::FastMap<String, (std::sync::Arc<str>, bool)>,
    queue: VecDeque<InFlight>,
    /// Results come without PQgetResult's NULLs (the probe inside PQgetResult).
    fast: bool,
    /// In libpq's pipeline mode.
    pipeline: bool,
    /// Pipeline sync points whose PGRES_PIPELINE_SYNC has not come yet: each
    /// the number of queries sent before it (the `seq` of the next query).
    syncs: VecDeque<u64>,
    /// Queries sent so far.
    sent: u64,
    /// In a pipeline, the query the server said it began last (see
    /// [`Reconstructor::server_began`]).
    server_at: Option<u64>,
    /// In a pipeline, the server began a statement the client has not been
    /// seen sending yet (psycopg flushes a prepare's Parse, which the server
    /// begins at once, before it sends the execution): the first query sent
    /// from that `seq` on is it, and carries these ids, already given to
    /// the server's span.
    server_waiting: Option<(u64, Ids)>,
}

impl ConnState {
    /// Where the query the server is busy with is in the queue: the front
    /// one, once sent; in a pipeline, the one the server said it began, else
    /// (as far as the client can tell) the first without its final result.
    fn running(&self) -> Option<usize> {
        if let Some(i) = self
            .server_at
            .filter(|_| self.pipeline)
            .and_then(|s| self.queue.iter().position(|q| q.seq == s))
        {
            return Some(i);
        }
        if self.pipeline {
            self.queue.iter().position(|q| q.answered_at.is_none())
        } else {
            self.queue.front().filter(|q| q.sent).map(|_| 0)
        }
    }
}

type Key = (u32, u64);

pub struct Reconstructor {
    conns: crate::FastMap<Key, ConnState>,
    txns: Tracker,
    ids: IdGen,
    /// Server backend PID → connection, from the connection details.
    by_backend: crate::FastMap<i32, Key>,
    /// Connections tracked per process (see reconstruct_bounds).
    per_process: crate::FastMap<u32, usize>,
    pub counters: Counters,
}

impl Default for Reconstructor {
    fn default() -> Self {
        Self::new()
    }
}

fn is_sync(f: u32) -> bool {
    matches!(
        f,
        func::PQEXEC | func::PQEXEC_PARAMS | func::PQPREPARE | func::PQEXEC_PREPARED
    )
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
        Self::with_ids(IdGen::random())
    }

    /// Deterministic identifiers, for tests.
    pub fn with_seed(seed: u64) -> Self {
        Self::with_ids(IdGen::seeded(seed))
    }

    fn with_ids(ids: IdGen) -> Self {
        Reconstructor {
            conns: Default::default(),
            txns: Tracker::new(),
            ids,
            by_backend: Default::default(),
            per_process: Default::default(),
            counters: Counters::default(),
        }
    }

    /// Which traced connection talks to a server backend, and what it is doing.
    pub fn client_context(&self, backend_pid: i32) -> Option<ClientContext> {
        let key = *self.by_backend.get(&backend_pid)?;
        let conn = self.conns.get(&key)?;
        let query = match conn.server_waiting.filter(|_| conn.pipeline) {
            Some((_, reserved)) => Some(reserved),
            None => conn.running().map(|i| conn.queue[i].span.ids),
        };
        let txn = match &query {
            Some(q) => self.txns.of(key, q),
            None => self.txns.current(key),
        };
        Some(ClientContext {
            pid: key.0,
            query,
            txn,
        })
    }

    /// Adds an event to the query in flight on that backend's connection.
    pub fn annotate(&mut self, backend_pid: i32, ev: span::Event) -> bool {
        let Some(key) = self.by_backend.get(&backend_pid) else {
            return false;
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        match conn.running() {
            Some(i) => {
                conn.queue[i].span.events.push(ev);
                true
            }
            None => false,
        }
    }

    fn forget_backend(&mut self, key: Key, conn: &ConnState) {
        if let Some(b) = conn.info.as_ref().map(|i| i.backend_pid) {
            if self.by_backend.get(&b) == Some(&key) {
                self.by_backend.remove(&b);
            }
        }
    }

    /// Number of queries in flight (for leak checks and metrics).
    /// Transactions that joined an application's trace since the last call.
    pub fn take_retraces(&mut self) -> Vec<crate::pipeline::txn::Retrace> {
        self.txns.take_retraces()
    }

    /// Whether any libpq connection has been seen (and not forgotten).
    pub fn tracks_connections(&self) -> bool {
        !self.conns.is_empty()
    }

    /// Client transactions open now.
    pub fn open_transactions(&self) -> u64 {
        self.txns.open_transactions()
    }

    pub fn in_flight(&self) -> usize {
        self.conns.values().map(|c| c.queue.len()).sum()
    }

    pub fn on_event(&mut self, ev: Event, out: &mut Vec<ClientSpan>) {
        match ev {
            Event::Call {
                at,
                func,
                text,
                name,
                truncated,
            } => self.on_call(at, func, text, name, truncated, out),
            Event::Result {
                at,
                result,
                status,
                ntuples,
                cmd_status,
                sqlstate,
                nulls,
            } => self.on_result(
                at, result, status, ntuples, cmd_status, sqlstate, nulls, out,
            ),
            Event::Conn {
                at,
                backend_pid,
                db,
                host,
                port,
            } => {
                let key = (at.pid, at.conn);
                let new = !self.conns.contains_key(&key);
                let conn = self.conns.entry(key).or_default();
                conn.last_ns = at.ts_ns;
                if let Some(old) = conn.info.as_ref().map(|i| i.backend_pid) {
                    if self.by_backend.get(&old) == Some(&key) {
                        self.by_backend.remove(&old);
                    }
                }
                conn.info = Some(Arc::new(ConnInfo {
                    backend_pid,
                    db,
                    host,
                    port,
                    ..Default::default()
                }));
                if backend_pid > 0 {
                    self.by_backend.insert(backend_pid, key);
                }
                if new {
                    self.conn_created(key, out, at.ts_ns);
                }
            }
            Event::Finish { at } => {
                let key = (at.pid, at.conn);
                if let Some(c) = self.conns.remove(&key) {
                    self.conn_dropped(key);
                    self.conn_gone(key, c, at.ts_ns, End::ConnectionClosed, out);
                }
            }
            Event::Pipeline { at, func, ret } => self.on_pipeline(at, func, ret, out),
        }
    }

    fn on_call(
        &mut self,
        at: Origin,
        f: u32,
        text: Option<std::sync::Arc<str>>,
        name: std::sync::Arc<str>,
        truncated: bool,
        out: &mut Vec<ClientSpan>,
    ) {
        let key = (at.pid, at.conn);
        let (mut conn, new) = match self.conns.remove(&key) {
            Some(c) => (c, false),
            None => (ConnState::default(), true),
        };
        conn.last_ns = at.ts_ns;
        let sync = is_sync(f);
        if conn.pipeline {
            // Queued behind the queries in flight, which it does not
            // supersede; libpq refuses a synchronous call.
            self.open_query(at, f, text, name, truncated, false, &mut conn);
            if sync {
                let q = conn.queue.pop_back().expect("just queued");
                conn.sent -= 1;
                self.cut((at.pid, at.conn), q, at.ts_ns, End::Refused, out);
            }
            self.bound_queue(key, &mut conn, at.ts_ns, out);
            return self.put_back(key, conn, new, at.ts_ns, out);
        }
        // The send a PQexec-style call makes inside libpq: same thread, not yet sent.
        if let Some(outer) = conn.queue.iter_mut().find(|q| {
            q.sync && !q.sent && q.span.tid == at.tid && nested_send(q.span.call) == Some(f)
        }) {
            outer.sent = true;
            outer.discarding = false;
            return self.put_back(key, conn, new, at.ts_ns, out);
        }
        // Results PQexec will drain before sending: an unread query's, or the
        // rest of a multi-statement text's.
        let pending = conn
            .queue
            .iter()
            .any(|q| q.sent && !(q.one_result && q.answered_at.is_some()));
        // Answered queries have had their results: libpq runs no new query before.
        self.complete_answered((at.pid, at.conn), &mut conn, out);
        let discarding = sync && pending;
        // A synchronous call starts by draining whatever is pending: earlier
        // queries still in flight will never complete as themselves. Without
        // NULLs, a query sent and never answered when the next call begins
        // lost its results (a reset connection): it ends here too.
        if (sync || conn.fast) && !conn.queue.is_empty() {
            self.close_all((at.pid, at.conn), &mut conn, at.ts_ns, End::Superseded, out);
        }
        self.open_query(at, f, text, name, truncated, discarding, &mut conn);
        self.bound_queue(key, &mut conn, at.ts_ns, out);
        self.put_back(key, conn, new, at.ts_ns, out);
    }

    /// A connection taken out for a call goes back (counted if new).
    fn put_back(
        &mut self,
        key: Key,
        conn: ConnState,
        new: bool,
        ts: u64,
        out: &mut Vec<ClientSpan>,
    ) {
        self.conns.insert(key, conn);
        if new {
            self.conn_created(key, out, ts);
        }
    }

    /// Queues the query a call sends (or, for PQexec & co., is about to).
    #[allow(clippy::too_many_arguments)]
    fn open_query(
        &mut self,
        at: Origin,
        f: u32,
        text: Option<std::sync::Arc<str>>,
        name: std::sync::Arc<str>,
        truncated: bool,
        discarding: bool,
        conn: &mut ConnState,
    ) {
        let sync = is_sync(f);
        let (mut text, mut text_truncated, mut statement_name, mut before_attach) =
            (text, truncated, None, false);
        match f {
            func::PQPREPARE | func::PQSEND_PREPARE => {
                if let Some(t) = &text {
                    Self::remember_prepared(
                        &mut self.counters,
                        conn,
                        name.to_string(),
                        (t.clone(), truncated),
                    );
                }
                statement_name = Some(name);
            }
            func::PQEXEC_PREPARED | func::PQSEND_QUERY_PREPARED => {
                match conn.prepared.get(&*name) {
                    Some((t, tr)) => (text, text_truncated) = (Some(t.clone()), *tr),
                    None => (text, before_attach) = (None, true),
                }
                statement_name = Some(name);
            }
            // SQL-level PREPARE / EXECUTE / DEALLOCATE: the same per-session names.
            _ => {
                use crate::pipeline::sql::prepared::{action, Action};
                match text.as_deref().and_then(action) {
                    Some(Action::Prepare(n, body)) => {
                        Self::remember_prepared(
                            &mut self.counters,
                            conn,
                            n,
                            (std::sync::Arc::from(body), truncated),
                        );
                    }
                    Some(Action::Execute(n)) => {
                        if let Some((body, tr)) = conn.prepared.get(&n) {
                            (text, text_truncated) = (Some(body.clone()), *tr);
                        }
                        statement_name = Some(n.into());
                    }
                    Some(Action::Deallocate(Some(n))) => {
                        conn.prepared.remove(&n);
                    }
                    Some(Action::Deallocate(None)) => conn.prepared.clear(),
                    None => {}
                }
            }
        }
        // Preparing a statement does not run it.
        let verb = match (&text, f) {
            (_, func::PQPREPARE | func::PQSEND_PREPARE) | (None, _) => Verb::Other,
            (Some(t), _) => txn::verb(t),
        };
        // The extended protocol carries one statement; a simple-protocol text
        // may hold several (not in a pipeline: libpq sends it as extended).
        let one_result = match f {
            func::PQEXEC | func::PQSEND_QUERY if !conn.pipeline => {
                !text_truncated && text.as_deref().is_some_and(shape::single_statement)
            }
            _ => true,
        };
        // The application's span, from a text sent with this call (a
        // prepared statement's comment is its preparer's, stale by now).
        let tp = match f {
            func::PQEXEC | func::PQEXEC_PARAMS | func::PQSEND_QUERY | func::PQSEND_QUERY_PARAMS => {
                text.as_deref()
                    .and_then(crate::pipeline::sqlcomment::traceparent_in)
            }
            _ => None,
        };
        let mut ids =
            self.txns
                .query_started_from((at.pid, at.conn), &verb, at.ts_ns, &mut self.ids, tp);
        if conn.pipeline && !matches!(f, func::PQSEND_PREPARE) {
            take_reserved(conn, &mut ids);
        }
        conn.queue.push_back(InFlight {
            verb,
            span: QuerySpan {
                ids,
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
                skipped: false,
                conn_info: conn.info.clone(),
                end: End::Completed,
                events: Vec::new(),
            },
            sync,
            sent: !sync,
            discarding,
            one_result,
            answered_at: None,
            seq: conn.sent,
        });
        conn.sent += 1;
    }

    #[allow(clippy::too_many_arguments)]
    fn on_result(
        &mut self,
        at: Origin,
        result: u64,
        status: i32,
        ntuples: i32,
        cmd_status: std::sync::Arc<str>,
        sqlstate: Option<String>,
        nulls: bool,
        out: &mut Vec<ClientSpan>,
    ) {
        let key = (at.pid, at.conn);
        let mut conn = self.conns.get_mut(&key);
        if let Some(c) = conn.as_deref_mut() {
            c.last_ns = at.ts_ns;
            c.fast |= !nulls;
            // Only a pipeline has these: the agent attached inside one.
            c.pipeline |= matches!(status, PGRES_PIPELINE_SYNC | PGRES_PIPELINE_ABORTED);
            if c.pipeline {
                return self
                    .pipeline_result(at, result, status, ntuples, cmd_status, sqlstate, out);
            }
        }
        let Some(q) = conn.and_then(|c| c.queue.front_mut()) else {
            // PQgetResult returning NULL on an idle connection is normal.
            if result != 0 && status != PGRES_PIPELINE_SYNC {
                self.counters.unmatched_results += 1;
            }
            return;
        };
        if !q.sent {
            // Drained results end at a NULL, or without NULLs at the nested
            // send (PQexec's PQsendQuery, seen through the PLT).
            if q.discarding {
                q.discarding = !nulls || result != 0;
                return;
            }
            if result == 0 {
                return; // PQexec's drain of an idle connection
            }
            q.sent = true; // the nested send was not observed (direct call inside libpq)
        }
        if result == 0 {
            self.complete_front(key, at.ts_ns, out);
            return;
        }
        apply(&mut q.span, status, ntuples, cmd_status, sqlstate);
        if ends_statement(status) {
            q.answered_at = Some(at.ts_ns);
        }
    }
}

/// A result's facts, added to its query's.
fn apply(
    s: &mut QuerySpan,
    status: i32,
    ntuples: i32,
    cmd_status: std::sync::Arc<str>,
    sqlstate: Option<String>,
) {
    if matches!(
        status,
        PGRES_TUPLES_OK | PGRES_SINGLE_TUPLE | PGRES_TUPLES_CHUNK
    ) {
        s.rows += ntuples.max(0) as u64;
    }
    if !cmd_status.is_empty() {
        s.cmd_status = Some(cmd_status);
    }
    if status == PGRES_PIPELINE_ABORTED {
        s.skipped = true;
    }
    if matches!(status, PGRES_FATAL_ERROR | PGRES_BAD_RESPONSE) {
        s.failed = true;
        if s.sqlstate.is_none() {
            s.sqlstate = sqlstate;
        }
    }
}

fn push_txns(txns: Vec<TxnSpan>, info: &Option<Arc<ConnInfo>>, out: &mut Vec<ClientSpan>) {
    for t in txns {
        out.push(ClientSpan::Txn(t, info.clone()));
    }
}

#[path = "reconstruct_bounds.rs"]
mod bounds;

#[path = "reconstruct_ends.rs"]
mod ends;

#[path = "reconstruct_pipeline.rs"]
mod pipeline;

#[path = "reconstruct_types.rs"]
mod types;

#[cfg(test)]
#[path = "reconstruct_tests.rs"]
mod tests;
