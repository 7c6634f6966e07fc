//! From MariaDB server probe hits to spans: a pure state machine (no clock,
//! no I/O), as PostgreSQL's `backend::Tracker`.
//!
//! Statements are seen at their end only (`Protocol::end_statement`), which
//! gives the text, the outcome, the counts, the server status and the
//! statement's start (`start_utime`). That probe also fires once per extra
//! result set of a `CALL`, with the CALL's start_utime and MORE_RESULTS set,
//! before the CALL's own; each statement of a multi-statement text has a
//! start_utime of its own. So an end with MORE_RESULTS is held until the
//! next end on its connection: the same start_utime makes it an inner result
//! set (no span of its own), another makes it a top-level statement.
//!
//! Transactions: the IN_TRANS bit of server_status at each top-level
//! statement's end, 0 → 1 opening one at that statement's start, 1 → 0
//! ending it at that statement's end.
//!
//! Lock waits: thd_wait_begin / thd_wait_end pairs, held by connection or
//! thread until the statement that waited ends (see `waits`); how the last
//! of them ended is how that statement ended (the ones before it were
//! granted: the statement went on to wait again).

use dbtel_common::mysite;

pub use super::waits::{THREADS_PER_SERVER, WAITS_PER_THREAD};
use std::sync::Arc;

use super::{
    blocked::{Answers, Blocked, BlockerView},
    errmsg::ErrorFormats,
    spans::{self, StatementSpan, TxnSpan, WaitOutcome, WaitSpan, What},
    waits::{Wait, Waits},
};
use crate::{
    events::ServerHit,
    mysql::{
        catalog::{
            blockers::{Ask, WaitFacts},
            queries::MARKER,
        },
        conns::Conns,
        records::{IN_TRANS, MORE_RESULTS},
        statements::Sql,
    },
    pipeline::{
        attr_block::AttrBlock,
        dbspan::DbSpan,
        span::{Event, IdGen, Ids},
        sql::{Dialect, FactsCache, QueryFacts, Text},
        txn::{Outcome, Verb},
    },
};

/// Connections kept per server (one per client session; past it, the least
/// recently used idle one is forgotten).
pub const CONNECTIONS_PER_SERVER: usize = 16_384;
/// Distinct statement texts whose facts are kept.
const FACTS_CAPACITY: usize = 4096;

/// enum_server_command values.
mod command {
    pub const NONE: u32 = 0;
    pub const INIT_DB: u32 = 2;
    pub const QUERY: u32 = 3;
    pub const CONNECT: u32 = 11;
    pub const STMT_PREPARE: u32 = 22;
    pub const STMT_EXECUTE: u32 = 23;
    pub const STMT_FETCH: u32 = 28;
}

/// Diagnostics_area status.
mod da {
    pub const EOF: u64 = 2;
    pub const ERROR: u64 = 5;
}

/// What the server side asks of a traced client when a statement ends:
/// the ids of the client's span for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientQuery<'a> {
    /// The query in flight on this connection id.
    InFlight(u64),
    /// The connection's prepare of this text: the server replies to
    /// COM_STMT_PREPARE before its end_statement, so the client may have
    /// returned from it, and sent its next command, by then.
    Prepare(u64, Option<&'a str>),
}

impl ClientQuery<'_> {
    pub fn connection_id(&self) -> u64 {
        match *self {
            ClientQuery::InFlight(id) | ClientQuery::Prepare(id, _) => id,
        }
    }
}

/// Why spans were closed before their end was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    ProcessExited,
    AgentStopped,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub statements: u64,
    pub lock_waits: u64,
    /// CALL result sets folded into their CALL.
    pub inner_results: u64,
    /// Commands that make no span (login, ping, statement close, …).
    pub other_commands: u64,
    /// Statements of the agent's own catalog sessions (no span).
    pub own_statements: u64,
}

/// One end_statement, with what it took from its thread.
#[derive(Debug)]
struct Done {
    tid: u32,
    ts_ns: u64,
    start_utime: u64,
    command: u32,
    status: u64,
    errno: u32,
    server_status: u32,
    affected: u64,
    sent: u64,
    text: Option<String>,
    truncated: bool,
    waits: Vec<Wait>,
    /// The client's query in flight on the connection when it ended.
    client: Option<Ids>,
    /// A deadlock victim: the other member of its cycle.
    deadlock_other: Option<Other>,
}

/// A deadlock cycle as the detector saw it: on which server, and each
/// member's connection with its client's query then, if traced. Taken at
/// detection because the victim's rollback lets the other's statement finish,
/// and its client may return before the victim's statement ends.
#[derive(Debug, Clone)]
struct Cycle {
    pid: u32,
    members: [Other; 2],
}

/// The other member of a deadlock cycle.
#[derive(Debug, Clone)]
struct Other {
    connection: u64,
    /// Its client's query in flight, if traced.
    client: Option<Ids>,
    query: Option<Arc<QueryFacts>>,
}

impl Done {
    fn start_ns(&self) -> u64 {
        match self.start_utime.checked_mul(1000) {
            Some(s) if s != 0 => s.min(self.ts_ns),
            _ => self.ts_ns,
        }
    }

    fn errno(&self) -> Option<u32> {
        (self.status == da::ERROR).then_some(self.errno)
    }
}

#[derive(Debug)]
struct OpenTxn {
    ids: Ids,
    joined: bool,
    start_ns: u64,
    statements: u32,
}

#[derive(Debug, Default)]
struct Conn {
    /// IN_TRANS after its last top-level statement (None: first seen in a
    /// session begun before the agent attached).
    in_trans: Option<bool>,
    txn: Option<OpenTxn>,
    /// An end with MORE_RESULTS: a statement of a text of several, or a
    /// CALL's inner result set (known at the next end).
    pending: Option<Done>,
    /// Its last statement: what a session idle in its transaction last did
    /// (a blocker's query).
    last: Option<Arc<QueryFacts>>,
    /// Who it is, from the catalog (see `sessions`).
    session: Option<Arc<Session>>,
    /// The database a USE switched to since.
    db: Option<String>,
    /// Its session's attributes (with `db`) as its spans share them: built
    /// at its first span after the session or `db` changed.
    described: Option<Arc<AttrBlock>>,
    /// Its session is being looked up: its spans wait in `held`.
    awaiting: bool,
    held: Vec<DbSpan>,
    /// Closed while awaiting its session: kept until the answer.
    closed: bool,
    /// Who it was, as it said while ending (while awaiting its session).
    ending: Option<Session>,
}

impl Conn {
    fn idle(&self) -> bool {
        self.txn.is_none() && self.pending.is_none() && self.held.is_empty()
    }
}

pub struct Tracker {
    /// db.system.name: "mariadb" or "mysql".
    system: &'static str,
    /// By (server pid, connection id).
    conns: Conns<Conn>,
    waits: Waits,
    facts: FactsCache,
    gen: IdGen,
    /// Recent deadlock cycles, bounded.
    deadlocks: std::collections::VecDeque<Cycle>,
    /// Lock waits that began, for the catalog to look up (when `asking`).
    pub asks: Vec<Ask>,
    pub asking: bool,
    /// The catalog's answers, until their statements end.
    answers: Answers,
    /// Connections first seen, whose sessions the catalog is to look up.
    pub session_asks: Vec<(u32, u64)>,
    awaiting: sessions::Awaiting,
    /// Each server's error message formats (see `errmsg`).
    formats: crate::FastMap<u32, Arc<ErrorFormats>>,
    pub counters: Counters,
}

/// Deadlock pairs remembered for the victims' statements to find.
const DEADLOCKS_KEPT: usize = 64;

impl Tracker {
    /// Transactions open now on the traced servers' connections.
    pub fn open_transactions(&self) -> u64 {
        self.conns.values().filter(|c| c.txn.is_some()).count() as u64
    }

    /// Whether it traces a server now (one attached, or connections seen).
    pub fn traces_servers(&self) -> bool {
        !self.formats.is_empty() || self.conns.values().next().is_some()
    }

    /// db.system.name of its spans.
    pub fn system(&self) -> &'static str {
        self.system
    }

    pub fn new(system: &'static str, text: Text, gen: IdGen) -> Self {
        Tracker {
            system,
            conns: Conns::new(CONNECTIONS_PER_SERVER),
            waits: Waits::new(),
            facts: FactsCache::with_dialect(text, FACTS_CAPACITY, Dialect::MySql),
            gen,
            deadlocks: std::collections::VecDeque::new(),
            asks: Vec::new(),
            asking: false,
            answers: Answers::default(),
            session_asks: Vec::new(),
            awaiting: Default::default(),
            formats: Default::default(),
            counters: Counters::default(),
        }
    }

    /// Server `pid`'s error message formats (read from its errmsg.sys).
    pub fn set_formats(&mut self, pid: u32, f: ErrorFormats) {
        self.formats.insert(pid, Arc::new(f));
    }

    /// Lock waits begun and not ended (cut short if the server goes now).
    pub fn in_flight(&self) -> usize {
        self.waits.in_flight()
    }

    /// Connections held for a server (for bound checks).
    pub fn connections_held(&self, pid: u32) -> usize {
        self.conns.held(pid).0
    }

    /// OS threads with waits held for a server (for bound checks).
    pub fn threads_held(&self, pid: u32) -> usize {
        self.waits.threads_held(pid)
    }

    /// Finished waits held for a thread and for a connection (for bound checks).
    pub fn waits_held(&self, pid: u32, tid: u32, connection: u64) -> (usize, usize) {
        self.waits.held(pid, tid, connection)
    }

    /// Waits let go of to stay within the bounds.
    pub fn waits_dropped(&self) -> u64 {
        self.waits.dropped
    }

    /// One probe hit. `client` gives the client's span of a statement on a
    /// connection id, and `client_text` the text of the one it runs, when
    /// that client is traced.
    pub fn on_hit(
        &mut self,
        hit: &ServerHit,
        client: &mut dyn FnMut(ClientQuery) -> Option<Ids>,
        client_text: &dyn Fn(u64) -> Option<Arc<QueryFacts>>,
        out: &mut Vec<DbSpan>,
    ) {
        match hit.site {
            mysite::STATEMENT_DONE => self.statement_done(hit, client, out),
            mysite::WAIT_BEGIN => {
                if let Some((lock, start_ns)) = self.waits.begin(hit) {
                    if self.asking {
                        self.asks.push(Ask {
                            server: hit.at.pid,
                            tid: hit.at.tid,
                            connection: hit.args[2],
                            start_ns,
                            lock,
                        });
                    }
                }
            }
            mysite::WAIT_END => self.waits.end(hit),
            mysite::DEADLOCK => {
                // The detector runs in one of the cycle's threads, just before
                // the victim's statement fails with 1213 (measured).
                if self.deadlocks.len() >= DEADLOCKS_KEPT {
                    self.deadlocks.pop_front();
                }
                let mut member = |connection: u64| Other {
                    connection,
                    client: client(ClientQuery::InFlight(connection)),
                    query: client_text(connection),
                };
                let members = [member(hit.args[0]), member(hit.args[1])];
                self.deadlocks.push_back(Cycle {
                    pid: hit.at.pid,
                    members,
                });
            }
            mysite::SESSION_USER | mysite::SESSION_DB | mysite::SESSION_ADDRESS => {
                self.said_at_end(hit)
            }
            mysite::CONN_END => {
                let key = (hit.at.pid, hit.args[0]);
                if let Some(c) = self.conns.remove(key) {
                    self.closed(key, c, hit.at.ts_ns, out);
                }
                // Waits of a statement that never ended: roots.
                for w in self.waits.forget_connection(key.0, key.1) {
                    self.orphan(key.0, w, Some(key.1), WaitOutcome::Granted, out);
                }
            }
            _ => {}
        }
    }

    fn statement_done(
        &mut self,
        hit: &ServerHit,
        client: &mut dyn FnMut(ClientQuery) -> Option<Ids>,
        out: &mut Vec<DbSpan>,
    ) {
        let (at, a) = (hit.at, &hit.args);
        let (connection_id, command) = (a[0], a[7] as u32);
        let waits = self.waits.take(at.pid, at.tid, connection_id, at.ts_ns);
        // The agent's own catalog session: no span, ever.
        if self.answers.is_own(at.pid, connection_id)
            || hit.text.as_deref().is_some_and(|t| t.starts_with(MARKER))
        {
            self.answers.mark_own(at.pid, connection_id);
            for w in &waits {
                self.answers.take((at.pid, w.tid, w.start_ns));
            }
            self.counters.own_statements += 1;
            return;
        }
        match command {
            command::QUERY
            | command::STMT_PREPARE
            | command::STMT_EXECUTE
            | command::STMT_FETCH
            | command::INIT_DB => {}
            // The login's end: the session starts outside a transaction.
            command::CONNECT => {
                self.conn(at.pid, connection_id, at.ts_ns, out).in_trans =
                    Some(a[5] as u32 & IN_TRANS != 0);
                return;
            }
            // A read error before any command.
            command::NONE => return,
            _ => {
                self.counters.other_commands += 1;
                return;
            }
        }
        let mut done = Done {
            tid: at.tid,
            ts_ns: at.ts_ns,
            start_utime: a[6],
            command,
            status: a[4],
            errno: a[3] as u32,
            server_status: a[5] as u32,
            affected: a[8],
            sent: a[9],
            text: hit.text.as_deref().map(str::to_owned),
            truncated: hit.truncated,
            waits,
            client: client(if command == command::STMT_PREPARE {
                ClientQuery::Prepare(connection_id, hit.text.as_deref())
            } else {
                ClientQuery::InFlight(connection_id)
            }),
            deadlock_other: None,
        };
        if done.errno() == Some(1213) {
            let cycle = self.deadlocks.iter().rev().find(|c| {
                c.pid == at.pid && c.members.iter().any(|m| m.connection == connection_id)
            });
            if let Some(c) = cycle {
                let mut other =
                    c.members[usize::from(c.members[0].connection == connection_id)].clone();
                // What the other ran: its client's statement when traced, else
                // the last one it ended here (the one that took the lock).
                if other.query.is_none() {
                    other.query = self
                        .conns
                        .get((at.pid, other.connection))
                        .and_then(|c| c.last.clone());
                }
                done.deadlock_other = Some(other);
            }
        }
        let key = (at.pid, connection_id);
        // Worked on detached (its slot stays where it is in the order).
        let mut conn = std::mem::take(self.conn(at.pid, connection_id, at.ts_ns, out));
        let mark = out.len();
        let more = done.server_status & MORE_RESULTS != 0;
        match conn.pending.take() {
            // A result set of the CALL that ends now (or later).
            Some(p)
                if p.start_utime != 0
                    && p.start_utime == done.start_utime
                    && p.command == done.command =>
            {
                self.counters.inner_results += 1;
                let mut waits = p.waits;
                waits.append(&mut done.waits);
                done.waits = waits;
                done.client = p.client.or(done.client);
            }
            Some(p) => self.emit(key, &mut conn, p, out),
            None => {}
        }
        if more {
            conn.pending = Some(done);
        } else {
            self.emit(key, &mut conn, done, out);
        }
        *self.conns.get_mut(key).expect("touched") = conn;
        self.route(key, mark, out);
    }

    /// The connection's state, created if new (past the cap, the least
    /// recently used idle connection is let go).
    fn conn(&mut self, pid: u32, id: u64, ts: u64, out: &mut Vec<DbSpan>) -> &mut Conn {
        let key = (pid, id);
        let new = self.conns.get(key).is_none();
        if let Some((old, c)) = self.conns.touch(key, Conn::default, Conn::idle) {
            self.let_go(old, c, ts, out);
        }
        if new {
            self.ask_session(key, ts);
        }
        self.conns.get_mut(key).expect("touched")
    }

    /// A connection is forgotten: a statement held ends as it is, a
    /// transaction still open is incomplete.
    fn let_go(&mut self, key: (u32, u64), mut c: Conn, ts: u64, out: &mut Vec<DbSpan>) {
        if let Some(p) = c.pending.take() {
            self.emit(key, &mut c, p, out);
        }
        if let Some(t) = c.txn.take() {
            self.close_txn(key, t, ts, Outcome::Incomplete, None, out);
        }
        out.append(&mut c.held);
    }

    /// The server exited: what it left open ends.
    pub fn process_exited(&mut self, pid: u32, ts_ns: u64, out: &mut Vec<DbSpan>) {
        self.cut(pid, ts_ns, Cut::ProcessExited, out);
        self.answers.forget_server(pid);
    }

    /// The server is no longer traced (`why`): statements held end as they
    /// are, open transactions are incomplete, waits whose statement never
    /// ended are roots (with their connection if the probe named it).
    pub fn cut(&mut self, pid: u32, ts_ns: u64, why: Cut, out: &mut Vec<DbSpan>) {
        for key in self.conns.keys_of(pid) {
            let c = self.conns.remove(key).expect("key listed");
            self.let_go(key, c, ts_ns, out);
        }
        for (w, connection, cut) in self.waits.cut(pid, ts_ns) {
            let outcome = match (cut, why) {
                (false, _) => WaitOutcome::Granted,
                (true, Cut::ProcessExited) => WaitOutcome::ProcessExited,
                (true, Cut::AgentStopped) => WaitOutcome::AgentStopped,
            };
            self.orphan(pid, w, connection, outcome, out);
        }
    }

    /// A wait whose statement was not seen to end: a root.
    fn orphan(
        &mut self,
        pid: u32,
        w: Wait,
        connection_id: Option<u64>,
        outcome: WaitOutcome,
        out: &mut Vec<DbSpan>,
    ) {
        let span = WaitSpan {
            ids: self.gen.root(),
            pid,
            tid: w.tid,
            connection_id,
            start_ns: w.start_ns,
            end_ns: w.end_ns,
            lock: w.lock,
            outcome,
            facts: None,
            blocked: self.answers.take((pid, w.tid, w.start_ns)),
            events: vec![],
        };
        self.counters.lock_waits += 1;
        out.push(spans::wait_span(span, self.system));
    }
}

#[path = "answers.rs"]
mod answers;
#[path = "sessions.rs"]
pub mod sessions;
#[path = "statement_end.rs"]
mod statement_end;
#[path = "transactions.rs"]
mod transactions;
pub use sessions::Session;

#[cfg(test)]
#[path = "reconstruct_tests.rs"]
mod tests;
