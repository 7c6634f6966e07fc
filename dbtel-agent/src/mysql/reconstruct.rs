//! From MySQL client records to finished spans: a pure state machine (no
//! clock, no I/O), so recorded streams replay identically in tests.
//!
//! One CLIENT span per statement text sent: mysql_real_query or
//! mysql_send_query (+ mysql_read_query_result), a prepare, an execution.
//! The protocol runs one command at a time per connection, so each
//! connection (process, MYSQL*) has at most one operation in flight. It
//! opens at the call's entry and ends at the return that completes it: its
//! result header when the statement returns no rows, else the fetch of its
//! result set (mysql_store_result / mysql_use_result /
//! mysql_stmt_store_result), else the last of its results
//! (mysql_next_result, while the server says more results exist). A
//! statement whose rows the client never fetches through a probed call (an
//! execution read row by row with mysql_stmt_fetch) ends at its own return's
//! time when the next call on its connection begins, at mysql_close or at
//! exit: the probes cannot tell when its reading ends.
//!
//! Transactions: [`Tracker`] keyed by connection, with MySQL's rules on
//! top: a failed statement does not abort the transaction; with autocommit
//! off, a statement outside a transaction opens one tentatively, which
//! exists only if the server says IN_TRANS at the statement's end (`SELECT
//! 1`, `SET`, a MyISAM table start none); the server's IN_TRANS bit at a
//! statement's last return is ground truth (a transaction it no longer has
//! was committed implicitly, or rolled back by the server after a
//! deadlock); BEGIN inside a transaction commits it first.

use std::{collections::VecDeque, sync::Arc};

use dbtel_common::MyCall;

use super::{
    attributes::{self, ConnView, End, Failure, QuerySpan},
    conns::Conns,
    records::{ConnDetails, Record, Returned, AUTOCOMMIT, IN_TRANS, MORE_RESULTS},
    statements::{Sql, Statements},
};
use crate::{
    events::Origin,
    pipeline::{
        dbspan::DbSpan,
        span::{IdGen, Ids},
        sql::{Dialect, FactsCache, QueryFacts, Text},
        txn::{Outcome, Tracker, TxnSpan, Verb},
    },
};

/// Distinct statement texts whose facts are kept.
const FACTS_CAPACITY: usize = 4096;
/// Prepared statements kept per process (a program that never closes its
/// statements loses the texts of its oldest).
pub const STATEMENTS_PER_PROCESS: usize = 4096;
/// Connections kept per process (a program that leaks MYSQL handles loses
/// the state of its least recently used idle ones).
pub const CONNECTIONS_PER_PROCESS: usize = 4096;
/// Prepares kept per connection for the server's join: the client can be at
/// most one command ahead of the server (see [`Reconstructor::prepare_on`]).
const PREPARES_UNANSWERED: usize = 2;

type Key = (u32, u64);

/// What the operation in flight waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Its own call's return.
    Return,
    /// mysql_read_query_result's (mysql_send_query returned).
    Header,
    /// A result set's fetch: mysql_store_result / mysql_use_result, or
    /// mysql_stmt_store_result for an execution.
    Fetch,
    /// mysql_next_result's return: the server said more results exist.
    Next,
}

struct Op {
    span: QuerySpan,
    sql: Arc<Sql>,
    /// The MYSQL_STMT* of statement calls; 0 for texts.
    stmt: u64,
    wait: Wait,
    /// server_status at its last return (None: it has not returned).
    status: Option<u32>,
}

impl Op {
    /// It has its result header: all that may follow is its rows or more results.
    fn answered(&self) -> bool {
        matches!(self.wait, Wait::Fetch | Wait::Next)
    }
}

struct Conn {
    details: Option<ConnDetails>,
    /// The server's connection id: the details', or a later return's (a reconnect).
    thread_id: u64,
    view: Arc<ConnView>,
    /// SERVER_STATUS_AUTOCOMMIT at the last return (on until one says).
    autocommit: bool,
    op: Option<Op>,
    /// Its latest prepares not yet answered by a traced server's end of
    /// them, oldest first: their span's ids and text.
    prepares: VecDeque<(Ids, Option<Arc<QueryFacts>>)>,
}

impl Conn {
    fn new() -> Self {
        Conn {
            details: None,
            thread_id: 0,
            view: Arc::new(ConnView::default()),
            autocommit: true,
            op: None,
            prepares: VecDeque::new(),
        }
    }

    fn rebuild(&mut self) {
        self.view = Arc::new(ConnView::new(self.details.as_ref(), self.thread_id));
    }
}

pub struct Reconstructor {
    conns: Conns<Conn>,
    /// Connections by their server connection id, for the server side's
    /// join (one entry per connection held: ids of different servers may
    /// collide, the connection that last said it has it wins).
    by_thread: crate::FastMap<u64, Key>,
    stmts: Statements,
    txns: Tracker,
    ids: IdGen,
    facts: FactsCache,
}

impl Reconstructor {
    pub fn new(text: Text) -> Self {
        Self::with_ids(IdGen::random(), text)
    }

    /// Deterministic identifiers, for tests.
    pub fn with_seed(seed: u64, text: Text) -> Self {
        Self::with_ids(IdGen::seeded(seed), text)
    }

    fn with_ids(ids: IdGen, text: Text) -> Self {
        Reconstructor {
            conns: Conns::new(CONNECTIONS_PER_PROCESS),
            by_thread: Default::default(),
            stmts: Statements::new(STATEMENTS_PER_PROCESS),
            txns: Tracker::with_errors_abort(false),
            ids,
            facts: FactsCache::with_dialect(text, FACTS_CAPACITY, Dialect::MySql),
        }
    }

    /// Operations in flight (for the exit report and leak checks).
    /// Transactions that joined an application's trace since the last call.
    pub fn take_retraces(&mut self) -> Vec<crate::pipeline::txn::Retrace> {
        self.txns.take_retraces()
    }

    /// Whether any connection has been seen (and not forgotten).
    pub fn tracks_connections(&self) -> bool {
        self.conns.values().next().is_some()
    }

    /// Client transactions open now.
    pub fn open_transactions(&self) -> u64 {
        self.txns.open_transactions()
    }

    pub fn in_flight(&self) -> usize {
        self.conns.values().filter(|c| c.op.is_some()).count()
    }

    /// Connections held for a process (for bound checks).
    pub fn connections_held(&self, pid: u32) -> usize {
        self.conns.held(pid).0
    }

    /// Prepared statements held for a process (for bound checks).
    pub fn statements_held(&self, pid: u32) -> usize {
        self.stmts.held(pid).0
    }

    pub fn on_record(&mut self, rec: Record, out: &mut Vec<DbSpan>) {
        match rec {
            Record::Conn(d) => self.on_conn(d, out),
            Record::Call {
                at,
                call,
                mysql,
                text,
                truncated,
            } => self.on_call(at, call, mysql, text, truncated, out),
            Record::Return(r) => self.on_return(r, out),
        }
    }

    /// Nothing ends on time alone: a fetch or the next result may take any
    /// time inside a call whose entry is not probed.
    pub fn tick(&mut self, _now_ns: u64, _out: &mut Vec<DbSpan>) {}

    /// `key` is used at `ts`: created if new, and the most recently used
    /// (past the cap, the least recently used idle connection is forgotten:
    /// what it had in flight ends, its transaction is incomplete).
    fn touch(&mut self, key: Key, ts: u64, out: &mut Vec<DbSpan>) -> &mut Conn {
        if let Some((old, mut c)) = self.conns.touch(key, Conn::new, |c| c.op.is_none()) {
            self.unindex(old, c.thread_id);
            if let Some(op) = c.op.take() {
                self.finish(old, op, End::ConnectionEvicted, ts, &c.view, out);
            }
            let mut txns = Vec::new();
            self.txns.conn_closed(old, ts, &mut txns);
            push_txns(txns, &c.view, out);
        }
        self.conns.get_mut(key).expect("touched")
    }

    fn on_conn(&mut self, mut d: ConnDetails, out: &mut Vec<DbSpan>) {
        let key = (d.at.pid, d.at.conn);
        let conn = self.touch(key, d.at.ts_ns, out);
        d.at = Origin {
            ts_ns: 0,
            tid: 0,
            ..d.at
        }; // compared on their contents only
        let old = conn.thread_id;
        if conn.details.as_ref() != Some(&d) {
            if d.thread_id != 0 {
                conn.thread_id = d.thread_id;
            }
            conn.details = Some(d);
            conn.rebuild();
        }
        let id = conn.thread_id;
        if id != old {
            self.index(key, old, id);
        }
    }

    fn on_call(
        &mut self,
        at: Origin,
        call: MyCall,
        mysql: u64,
        text: Option<String>,
        truncated: bool,
        out: &mut Vec<DbSpan>,
    ) {
        let key = (at.pid, mysql);
        match call {
            MyCall::RealQuery | MyCall::SendQuery => {
                self.supersede(key, at.ts_ns, End::Superseded, out);
                let sql = self.classify(text.as_deref(), truncated);
                self.start(at, key, call, 0, sql, false, out);
            }
            MyCall::StmtPrepare => {
                self.supersede(key, at.ts_ns, End::Superseded, out);
                let sql = self.classify(text.as_deref(), truncated);
                self.stmts.insert(at.pid, at.conn, mysql, sql.clone());
                self.start(at, key, call, at.conn, sql, false, out);
            }
            MyCall::StmtExecute => {
                self.supersede(key, at.ts_ns, End::Superseded, out);
                let (sql, before_attach) = match self.stmts.get(at.pid, at.conn) {
                    Some(s) => (s.clone(), false),
                    None => (Arc::new(Sql::new(None, false, None)), true),
                };
                self.start(at, key, call, at.conn, sql, before_attach, out);
            }
            MyCall::StmtClose => {
                self.supersede(key, at.ts_ns, End::Superseded, out);
                self.stmts.remove(at.pid, at.conn);
            }
            MyCall::Close => {
                self.supersede(key, at.ts_ns, End::ConnectionClosed, out);
                if let Some(c) = self.conns.remove(key) {
                    self.unindex(key, c.thread_id);
                    let mut txns = Vec::new();
                    self.txns.conn_closed(key, at.ts_ns, &mut txns);
                    push_txns(txns, &c.view, out);
                }
                self.stmts.forget_conn(at.pid, mysql);
            }
            // Result calls are seen at their return only.
            _ => {}
        }
    }

    fn classify(&mut self, text: Option<&str>, truncated: bool) -> Arc<Sql> {
        let facts = text.map(|t| self.facts.get(t));
        Arc::new(Sql::new(text, truncated, facts))
    }

    /// A statement is sent on `key`: its ids come from the transaction tracker.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        at: Origin,
        key: Key,
        call: MyCall,
        stmt: u64,
        sql: Arc<Sql>,
        before_attach: bool,
        out: &mut Vec<DbSpan>,
    ) {
        self.touch(key, at.ts_ns, out);
        let conn = self.conns.get_mut(key).expect("touched");
        let mut txns = Vec::new();
        let open = self.txns.current(key).is_some();
        let runs = call != MyCall::StmtPrepare;
        // BEGIN inside a transaction commits it first (MySQL, unlike PostgreSQL).
        if runs && open && sql.verb == Verb::Begin && sql.implicit_commit {
            self.txns
                .ended_by_server(key, at.ts_ns, Outcome::Committed, None, &mut txns);
        }
        let open = self.txns.current(key).is_some();
        // Autocommit off: a statement may begin one (the server says at its end).
        let tentative = runs
            && !conn.autocommit
            && !open
            && !matches!(sql.verb, Verb::Begin | Verb::Commit | Verb::Rollback);
        let tp = sql
            .traceparent
            .filter(|_| matches!(call, MyCall::RealQuery | MyCall::SendQuery));
        let ids = if !runs {
            self.txns
                .query_started(key, &Verb::Other, at.ts_ns, &mut self.ids) // preparing runs nothing
        } else if tentative {
            self.txns
                .query_started_tentatively(key, &Verb::Begin, at.ts_ns, &mut self.ids, tp)
        } else {
            self.txns
                .query_started_from(key, &sql.verb, at.ts_ns, &mut self.ids, tp)
        };
        if call == MyCall::StmtPrepare {
            if conn.prepares.len() == PREPARES_UNANSWERED {
                conn.prepares.pop_front();
            }
            conn.prepares.push_back((ids, sql.facts.clone()));
        }
        conn.op = Some(Op {
            span: QuerySpan {
                ids,
                pid: at.pid,
                tid: at.tid,
                start_ns: at.ts_ns,
                end_ns: at.ts_ns,
                call,
                facts: sql.facts.clone(),
                truncated: sql.truncated,
                prepared_before_attach: before_attach,
                returned_rows: None,
                affected_rows: None,
                error: None,
                end: End::Completed,
                conn: conn.view.clone(),
            },
            sql,
            stmt,
            wait: Wait::Return,
            status: None,
        });
        push_txns(txns, &conn.view, out);
    }

    fn on_return(&mut self, r: Returned, out: &mut Vec<DbSpan>) {
        if r.mysql == 0 {
            return; // a statement whose connection was closed
        }
        let key = (r.at.pid, r.mysql);
        let conn = self.touch(key, r.at.ts_ns, out);
        conn.autocommit = r.server_status & AUTOCOMMIT != 0;
        let old = conn.thread_id;
        let conn = if r.thread_id != 0 && r.thread_id != old {
            conn.thread_id = r.thread_id;
            conn.rebuild();
            self.index(key, old, r.thread_id);
            self.conns.get_mut(key).expect("touched")
        } else {
            conn
        };
        let Some(op) = conn.op.as_mut() else { return };
        let text = op.stmt == 0;
        let same_stmt = op.stmt == r.at.conn;
        let mine = match (r.call, op.span.call, op.wait) {
            (MyCall::RealQuery, MyCall::RealQuery, Wait::Return)
            | (MyCall::SendQuery, MyCall::SendQuery, Wait::Return) => true,
            (MyCall::ReadQueryResult, MyCall::SendQuery, Wait::Return | Wait::Header) => true,
            (MyCall::StoreResult | MyCall::UseResult, _, Wait::Fetch)
            | (MyCall::NextResult, _, Wait::Next) => text,
            (MyCall::StmtPrepare, MyCall::StmtPrepare, Wait::Return)
            | (MyCall::StmtExecute, MyCall::StmtExecute, Wait::Return) => same_stmt,
            (MyCall::StmtStoreResult, MyCall::StmtExecute, Wait::Fetch) => same_stmt,
            _ => false,
        };
        if !mine {
            return; // e.g. MySQLdb's mysql_store_result after a statement without rows
        }
        op.span.end_ns = r.at.ts_ns;
        op.status = Some(r.server_status);
        op.span.conn = conn.view.clone();
        let fail = |op: &mut Op| {
            op.span.error = Some(Failure {
                errno: r.errno,
                sqlstate: r.sqlstate.clone(),
            });
            true
        };
        let ret = value(r.call, r.ret);
        let done = match r.call {
            MyCall::SendQuery if ret != 0 => fail(op),
            MyCall::SendQuery => {
                op.wait = Wait::Header;
                false
            }
            MyCall::NextResult if ret == -1 => true,
            MyCall::RealQuery
            | MyCall::ReadQueryResult
            | MyCall::NextResult
            | MyCall::StmtExecute => {
                if ret != 0 {
                    fail(op)
                } else if r.field_count > 0 {
                    op.wait = Wait::Fetch;
                    false
                } else {
                    if op.sql.counts_affected {
                        if let Some(n) = r.affected_rows {
                            op.span.affected_rows = Some(op.span.affected_rows.unwrap_or(0) + n);
                        }
                    }
                    after_result(op, &r)
                }
            }
            // NULL with an error: the rows could not be read.
            MyCall::StoreResult | MyCall::UseResult if ret == 0 && r.errno != 0 => fail(op),
            MyCall::StoreResult | MyCall::UseResult => {
                if r.call == MyCall::StoreResult && ret != 0 {
                    op.span.returned_rows = Some(op.span.returned_rows.unwrap_or(0) + r.rows);
                }
                after_result(op, &r)
            }
            MyCall::StmtStoreResult if ret != 0 => fail(op),
            MyCall::StmtStoreResult => {
                op.span.returned_rows = Some(op.span.returned_rows.unwrap_or(0) + r.rows);
                true
            }
            MyCall::StmtPrepare if ret != 0 => fail(op),
            _ => true,
        };
        if done {
            let op = conn.op.take().expect("matched above");
            let view = conn.view.clone();
            self.finish(key, op, End::Completed, r.at.ts_ns, &view, out);
        }
    }

    /// A call begins on `key`, or it closes: the operation in flight ends
    /// (at its last return if it was answered, else cut at `ts` with `end`).
    fn supersede(&mut self, key: Key, ts: u64, end: End, out: &mut Vec<DbSpan>) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some(op) = conn.op.take() else { return };
        let view = conn.view.clone();
        self.finish(key, op, end, ts, &view, out);
    }

    fn finish(
        &mut self,
        key: Key,
        mut op: Op,
        end: End,
        ts: u64,
        view: &ConnView,
        out: &mut Vec<DbSpan>,
    ) {
        if end != End::Completed && !op.answered() {
            op.span.end = end;
            op.span.end_ns = ts.max(op.span.start_ns);
        }
        let completed = op.span.end == End::Completed;
        let code = op.span.error.as_ref().map(Failure::code);
        // The transaction it may have begun with autocommit off exists if
        // the server says so, or if it was rolled back after a lock wait
        // (there was one to roll back); else its span is a root.
        let in_trans = op.status.is_some_and(|st| st & IN_TRANS != 0)
            || matches!(code.as_deref(), Some("1213" | "1205"));
        if completed && in_trans {
            self.txns.confirm(key, &op.span.ids);
        } else if let Some(block) = self.txns.discard_block(key, &op.span.ids) {
            // A root (or the application's span's child, as its block was),
            // keeping its trace and span id: the server's spans of the
            // statement are its children already.
            op.span.ids.parent_span_id = if block.remote {
                block.parent_span_id
            } else {
                0
            };
            (op.span.ids.remote, op.span.ids.remote_sampled) = (block.remote, block.remote_sampled);
        }
        let (s, verb) = (&op.span, &op.sql.verb);
        let mut txns = Vec::new();
        if completed {
            let failed = code.is_some();
            // A COMMIT that succeeded committed.
            let tag = (*verb == Verb::Commit && !failed).then_some("COMMIT");
            self.txns.query_ended(
                key,
                &s.ids,
                verb,
                s.end_ns,
                failed,
                code.as_deref(),
                tag,
                &mut txns,
            );
            // The server's word: no transaction after this statement. An
            // error packet carries no status (the client keeps the last OK's
            // IN_TRANS), but a deadlock always rolls the whole transaction back.
            let deadlock = code.as_deref() == Some("1213");
            let server_ended = (deadlock || op.status.is_some_and(|st| st & IN_TRANS == 0))
                && !matches!(verb, Verb::Commit | Verb::Rollback);
            if server_ended && self.txns.current(key).is_some() {
                // A failed DDL statement still committed before it ran.
                let outcome = if failed && !op.sql.implicit_commit {
                    Outcome::RolledBack
                } else {
                    Outcome::Committed
                };
                self.txns
                    .ended_by_server(key, s.end_ns, outcome, code.as_deref(), &mut txns);
            }
        } else {
            // Its outcome is unknown: it only stops being in flight.
            self.txns.query_ended(
                key,
                &s.ids,
                &Verb::Other,
                s.end_ns,
                false,
                None,
                None,
                &mut txns,
            );
        }
        out.push(attributes::query_span(op.span));
        push_txns(txns, view, out);
    }

    /// The process is gone: what it had in flight ends, its transactions are incomplete.
    pub fn process_exited(&mut self, pid: u32, ts_ns: u64, out: &mut Vec<DbSpan>) {
        for key in self.conns.keys_of(pid) {
            let mut c = self.conns.remove(key).expect("key listed");
            self.unindex(key, c.thread_id);
            if let Some(op) = c.op.take() {
                self.finish(key, op, End::ProcessExited, ts_ns, &c.view, out);
            }
            let mut txns = Vec::new();
            self.txns.conn_closed(key, ts_ns, &mut txns);
            push_txns(txns, &c.view, out);
        }
        let mut txns = Vec::new();
        self.txns.process_exited(pid, ts_ns, &mut txns);
        push_txns(txns, &ConnView::default(), out);
        self.stmts.forget_process(pid);
    }
}

/// After a result: more follow (the server says so), or the statement is done.
fn after_result(op: &mut Op, r: &Returned) -> bool {
    if op.stmt == 0 && r.server_status & MORE_RESULTS != 0 {
        op.wait = Wait::Next;
        return false;
    }
    true
}

/// A return value as its C type: `int` is eax and `my_bool` al (the rest
/// of rax is undefined: -1 may arrive as 0xffffffff); pointers in full
/// (only compared with NULL).
fn value(call: MyCall, ret: u64) -> i64 {
    match call {
        MyCall::ReadQueryResult => i64::from(ret as u8),
        MyCall::StoreResult | MyCall::UseResult => i64::from(ret != 0),
        _ => i64::from(ret as u32 as i32),
    }
}

fn push_txns(txns: Vec<TxnSpan>, view: &ConnView, out: &mut Vec<DbSpan>) {
    for t in txns {
        out.push(attributes::txn_span(t, view));
    }
}

#[path = "reconstruct_join.rs"]
mod join;

#[cfg(test)]
#[path = "reconstruct_tests.rs"]
mod tests;
