//! Client-side transactions: which statements open, end and mark a
//! transaction, and a pure tracker (per connection) turning query starts and
//! ends into transaction spans that parent those queries (the statements'
//! classification: `keywords`).

use crate::pipeline::sqlcomment::TraceParent;
use opentelemetry::KeyValue;

use crate::pipeline::dbspan::Described;
use crate::pipeline::span::{Event, IdGen, Ids};

#[path = "txn_keywords.rs"]
mod keywords;

pub use keywords::{verb, Verb};

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    RolledBack,
    /// PREPARE TRANSACTION: its fate is decided later (COMMIT/ROLLBACK PREPARED).
    Prepared,
    /// The connection closed or the process exited inside it.
    Incomplete,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Prepared => "prepared",
            Outcome::Incomplete => "incomplete",
        }
    }
}

/// A finished transaction, ready to export.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnSpan {
    pub pid: u32,
    pub conn: u64,
    pub ids: Ids,
    /// CLOCK_MONOTONIC nanoseconds: BEGIN's start to COMMIT/ROLLBACK's end.
    pub start_ns: u64,
    pub end_ns: u64,
    pub outcome: Outcome,
    /// A statement failed inside it, putting it in the server's aborted state
    /// (stays set after a ROLLBACK TO SAVEPOINT recovered from it), or the
    /// server rolled it back after an error (a MySQL deadlock).
    pub aborted: bool,
    /// The error that aborted it, or that made its COMMIT fail. Where errors
    /// do not abort (MySQL), the latest statement's error: the one a
    /// ROLLBACK after it answers.
    pub sqlstate: Option<String>,
    /// Time the application spent idle in transaction: the sum of the gaps
    /// with no statement in flight between BEGIN's start and the end.
    pub idle_ns: u64,
    /// Statements sent inside it, BEGIN and COMMIT/ROLLBACK included (its child spans).
    pub statements: u32,
    /// Earlier attempts of this transaction on the connection that rolled back
    /// with a serialization failure or a deadlock.
    pub retry_count: u32,
    pub events: Vec<Event>,
}

pub const SAVEPOINT_NAME: &str = "db.transaction.savepoint.name";

/// Errors after which applications retry the whole transaction: SQLSTATEs
/// (serialization failure, deadlock), and MySQL's error numbers for a
/// deadlock (1213) and a lock wait timeout (1205).
fn retryable(sqlstate: Option<&str>) -> bool {
    matches!(sqlstate, Some("40001" | "40P01" | "1213" | "1205"))
}

/// retry_count of the transaction after `t` on its connection.
fn next_retry(t: &TxnSpan) -> u32 {
    match t.outcome {
        Outcome::RolledBack if retryable(t.sqlstate.as_deref()) => t.retry_count + 1,
        _ => 0,
    }
}

pub type Key = (u32, u64);

struct Open {
    ids: Ids,
    /// Known to exist: opened by BEGIN, or confirmed by the server (see
    /// [`Tracker::query_started_tentatively`]).
    confirmed: bool,
    /// The statement ending it (COMMIT, ROLLBACK, PREPARE TRANSACTION) was
    /// sent: statements sent after it are not its own (libpq's pipeline mode
    /// sends them before that one's result is read).
    closing: bool,
    start_ns: u64,
    statements: u32,
    /// Ever aborted / aborted now (ROLLBACK TO SAVEPOINT leaves the aborted state).
    aborted: bool,
    aborted_now: bool,
    sqlstate: Option<String>,
    idle_ns: u64,
    in_flight: u32,
    /// End of the last statement: where an idle gap starts.
    last_end_ns: u64,
    retry_count: u32,
    events: Vec<Event>,
    /// Joined to the application's trace (a traceparent seen in it).
    adopted: bool,
}

/// A transaction joined the application's trace after some of its spans
/// were made: spans still in `from` belong to `to` (see pipeline::retrace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retrace {
    pub from: u128,
    pub to: u128,
}

#[derive(Default)]
struct Conn {
    /// Blocks in flight, in the order they began: one, unless a pipeline
    /// has sent the next BEGIN before the last block's COMMIT was answered.
    open: Vec<Open>,
    /// retry_count the next transaction gets.
    next_retry: u32,
}

impl Conn {
    /// The block a statement sent now joins.
    fn joinable(&mut self) -> Option<&mut Open> {
        self.open.last_mut().filter(|o| !o.closing)
    }

    /// The block a statement with these ids was sent into.
    fn of(&self, ids: &Ids) -> Option<usize> {
        // By span id alone: a block that joined the application's trace
        // changed its trace id after its first statements were sent.
        self.open
            .iter()
            .position(|o| o.ids.span_id == ids.parent_span_id)
    }
}

/// Whether a statement ends its block (when it runs: see [`Tracker::query_skipped`]).
fn ends_block(verb: &Verb) -> bool {
    matches!(
        verb,
        Verb::Commit | Verb::Rollback | Verb::PrepareTransaction
    )
}

pub struct Tracker {
    conns: crate::FastMap<Key, Conn>,
    /// Blocks that joined an application's trace, until taken.
    retraces: Vec<Retrace>,
    /// A failed statement aborts the block (PostgreSQL); else it is only an
    /// event in it (MySQL: the transaction goes on, and may commit).
    errors_abort: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// PostgreSQL's rules: an error aborts the block.
    pub fn new() -> Self {
        Self::with_errors_abort(true)
    }

    pub fn with_errors_abort(errors_abort: bool) -> Self {
        Tracker {
            conns: Default::default(),
            retraces: Vec::new(),
            errors_abort,
        }
    }

    /// Transactions open now (begun, or confirmed by the server).
    pub fn open_transactions(&self) -> u64 {
        self.conns
            .values()
            .map(|c| c.open.iter().filter(|o| o.confirmed).count() as u64)
            .sum()
    }

    /// Connections with state (for bound checks).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The open transaction on a connection (the latest, in a pipeline).
    pub fn current(&self, key: Key) -> Option<Ids> {
        self.conns.get(&key)?.open.last().map(|o| o.ids)
    }

    /// The transaction a statement with these ids belongs to.
    pub fn of(&self, key: Key, ids: &Ids) -> Option<Ids> {
        let conn = self.conns.get(&key)?;
        conn.of(ids).map(|i| conn.open[i].ids)
    }

    /// A statement is sent: returns the ids its span carries. Its block is
    /// the one open as of the statements sent before it, whether or not
    /// their results have been read.
    pub fn query_started(&mut self, key: Key, verb: &Verb, start_ns: u64, gen: &mut IdGen) -> Ids {
        self.start(key, verb, start_ns, gen, true, None)
    }

    /// As [`Tracker::query_started`], for a text whose sqlcommenter comment
    /// names the application's span `tp`: outside a transaction the
    /// statement is that span's child; a transaction it begins or is the
    /// first to name joins that trace as that span's child (its statements
    /// stay the transaction's children).
    pub fn query_started_from(
        &mut self,
        key: Key,
        verb: &Verb,
        start_ns: u64,
        gen: &mut IdGen,
        tp: Option<TraceParent>,
    ) -> Ids {
        self.start(key, verb, start_ns, gen, true, tp)
    }

    /// Transactions that joined an application's trace since the last call.
    pub fn take_retraces(&mut self) -> Vec<Retrace> {
        std::mem::take(&mut self.retraces)
    }

    /// As [`Tracker::query_started_from`], but a block `verb` opens may not
    /// exist (MySQL with autocommit off: a statement starts a transaction
    /// only if it uses a transactional table): it stays tentative until
    /// [`Tracker::confirm`], or [`Tracker::discard`] drops it.
    pub fn query_started_tentatively(
        &mut self,
        key: Key,
        verb: &Verb,
        start_ns: u64,
        gen: &mut IdGen,
        tp: Option<TraceParent>,
    ) -> Ids {
        self.start(key, verb, start_ns, gen, false, tp)
    }

    fn start(
        &mut self,
        key: Key,
        verb: &Verb,
        start_ns: u64,
        gen: &mut IdGen,
        confirmed: bool,
        tp: Option<TraceParent>,
    ) -> Ids {
        let fresh = |gen: &mut IdGen| match &tp {
            Some(tp) => Ids::under_app(tp, gen),
            None => gen.root(),
        };
        let conn = self.conns.entry(key).or_default();
        if conn.joinable().is_none() && *verb == Verb::Begin {
            conn.open.push(Open {
                ids: fresh(gen),
                adopted: tp.is_some(),
                confirmed,
                closing: false,
                start_ns,
                statements: 0,
                aborted: false,
                aborted_now: false,
                sqlstate: None,
                idle_ns: 0,
                in_flight: 0,
                last_end_ns: start_ns,
                retry_count: conn.next_retry,
                events: vec![Event {
                    name: "transaction.started",
                    ts_ns: start_ns,
                    attributes: vec![],
                }],
            });
        }
        let Some(o) = conn.joinable() else {
            return fresh(gen); // autocommit, or inside a transaction begun before we attached
        };
        if let Some(tp) = tp.filter(|_| !o.adopted) {
            // The application names its span only now (psycopg2 sends BEGIN
            // without a comment): the transaction joins that trace.
            self.retraces.push(Retrace {
                from: o.ids.trace_id,
                to: tp.trace_id,
            });
            (o.ids.trace_id, o.ids.parent_span_id, o.ids.remote) = (tp.trace_id, tp.span_id, true);
            o.ids.remote_sampled = tp.sampled;
            o.adopted = true;
        }
        if o.in_flight == 0 {
            o.idle_ns += start_ns.saturating_sub(o.last_end_ns);
        }
        o.in_flight += 1;
        o.statements += 1;
        o.closing = ends_block(verb);
        o.ids.child(gen)
    }

    /// The server says the block of the statement sent with `ids` exists.
    pub fn confirm(&mut self, key: Key, ids: &Ids) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Some(i) = conn.of(ids) {
            conn.open[i].confirmed = true;
        }
    }

    /// The server says no transaction came of the statement sent with
    /// `ids`, which opened a tentative block: the block is dropped (no
    /// span), if that statement is still its only one. Returns whether it
    /// was: the statement's span must then get ids of its own (a root).
    pub fn discard(&mut self, key: Key, ids: &Ids) -> bool {
        self.discard_block(key, ids).is_some()
    }

    /// [`Tracker::discard`], returning the ids the dropped block had.
    pub fn discard_block(&mut self, key: Key, ids: &Ids) -> Option<Ids> {
        let conn = self.conns.get_mut(&key)?;
        match conn.of(ids) {
            Some(i) if !conn.open[i].confirmed && conn.open[i].statements == 1 => {
                Some(conn.open.remove(i).ids)
            }
            _ => None,
        }
    }

    /// A statement sent with `ids` did not run (a pipeline aborted before
    /// it): it only stops being in flight, and a block it was to end stays
    /// open (in a pipeline, the server still waits for its ROLLBACK).
    pub fn query_skipped(&mut self, key: Key, ids: &Ids, verb: &Verb, end_ns: u64) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(i) = conn.of(ids) else { return };
        let o = &mut conn.open[i];
        o.in_flight = o.in_flight.saturating_sub(1);
        o.last_end_ns = o.last_end_ns.max(end_ns);
        if ends_block(verb) {
            o.closing = false;
        }
    }

    /// The last result of the statement sent with `ids` arrived (or it was
    /// superseded: then pass `Verb::Other`, not failed, so only the in-flight
    /// count moves).
    #[allow(clippy::too_many_arguments)]
    pub fn query_ended(
        &mut self,
        key: Key,
        ids: &Ids,
        verb: &Verb,
        end_ns: u64,
        failed: bool,
        sqlstate: Option<&str>,
        cmd_status: Option<&str>,
        out: &mut Vec<TxnSpan>,
    ) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(i) = conn.of(ids) else { return };
        let o = &mut conn.open[i];
        o.in_flight = o.in_flight.saturating_sub(1);
        o.last_end_ns = o.last_end_ns.max(end_ns);
        let name_attr = |n: &str| vec![KeyValue::new(SAVEPOINT_NAME, n.to_string())];
        let outcome = match verb {
            Verb::Commit if failed => {
                // COMMIT itself failed (e.g. a serialization failure at commit).
                if !o.aborted_now {
                    o.sqlstate = sqlstate.map(Into::into).or(o.sqlstate.take());
                }
                Some(Outcome::RolledBack)
            }
            // The server answers COMMIT of an aborted transaction with ROLLBACK.
            Verb::Commit => match cmd_status {
                Some(t) if t.starts_with("ROLLBACK") => Some(Outcome::RolledBack),
                Some(t) if t.starts_with("COMMIT") => Some(Outcome::Committed),
                _ if o.aborted_now => Some(Outcome::RolledBack),
                _ => Some(Outcome::Committed),
            },
            Verb::Rollback => Some(Outcome::RolledBack),
            // A failed PREPARE TRANSACTION rolls the block back; the server
            // answers ROLLBACK to preparing an aborted one.
            Verb::PrepareTransaction
                if failed
                    || o.aborted_now
                    || cmd_status.is_some_and(|t| t.starts_with("ROLLBACK")) =>
            {
                if failed && !o.aborted_now {
                    o.sqlstate = sqlstate.map(Into::into).or(o.sqlstate.take());
                }
                Some(Outcome::RolledBack)
            }
            Verb::PrepareTransaction => Some(Outcome::Prepared),
            _ if failed && !self.errors_abort => {
                let code = sqlstate.unwrap_or("_OTHER");
                o.sqlstate = Some(code.to_string());
                let attrs = vec![KeyValue::new("db.response.status_code", code.to_string())];
                o.events.push(Event {
                    name: "transaction.statement_failed",
                    ts_ns: end_ns,
                    attributes: attrs,
                });
                None
            }
            _ if failed => {
                // Any error inside a transaction block aborts it; the first one is the cause.
                if !o.aborted_now {
                    o.aborted = true;
                    o.aborted_now = true;
                    o.sqlstate = Some(sqlstate.unwrap_or("_OTHER").to_string());
                    let attrs = vec![KeyValue::new(
                        "db.response.status_code",
                        sqlstate.unwrap_or("_OTHER").to_string(),
                    )];
                    o.events.push(Event {
                        name: "transaction.aborted",
                        ts_ns: end_ns,
                        attributes: attrs,
                    });
                }
                None
            }
            Verb::Savepoint(n) => {
                o.events.push(Event {
                    name: "transaction.savepoint",
                    ts_ns: end_ns,
                    attributes: name_attr(n),
                });
                None
            }
            Verb::Release(n) => {
                o.events.push(Event {
                    name: "transaction.savepoint_released",
                    ts_ns: end_ns,
                    attributes: name_attr(n),
                });
                None
            }
            Verb::RollbackTo(n) => {
                o.aborted_now = false;
                o.events.push(Event {
                    name: "transaction.rolled_back_to_savepoint",
                    ts_ns: end_ns,
                    attributes: name_attr(n),
                });
                None
            }
            Verb::Begin | Verb::Other => None,
        };
        if let Some(outcome) = outcome {
            let t = finish(key, conn.open.remove(i), end_ns, outcome);
            conn.next_retry = next_retry(&t);
            out.push(t);
        }
    }

    /// The server ended the connection's open transaction without the
    /// client's COMMIT or ROLLBACK (MySQL: a statement that commits
    /// implicitly, such as DDL; a rollback after a deadlock), as of the end
    /// of the statement that did it. `sqlstate`: the error that rolled it
    /// back (it replaces an earlier one: this one ended it).
    pub fn ended_by_server(
        &mut self,
        key: Key,
        end_ns: u64,
        outcome: Outcome,
        sqlstate: Option<&str>,
        out: &mut Vec<TxnSpan>,
    ) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        for mut o in std::mem::take(&mut conn.open) {
            if let (Outcome::RolledBack, Some(s)) = (outcome, sqlstate) {
                // Rolled back by the server for an error: aborted.
                if !o.aborted_now {
                    o.aborted = true;
                    let attrs = vec![KeyValue::new("db.response.status_code", s.to_string())];
                    o.events.push(Event {
                        name: "transaction.aborted",
                        ts_ns: end_ns,
                        attributes: attrs,
                    });
                }
                o.sqlstate = Some(s.to_string());
            }
            let t = finish(key, o, end_ns, outcome);
            conn.next_retry = next_retry(&t);
            out.push(t);
        }
    }

    /// PQfinish: an open transaction ends incomplete (the server rolls it back).
    pub fn conn_closed(&mut self, key: Key, ts_ns: u64, out: &mut Vec<TxnSpan>) {
        for o in self.conns.remove(&key).map(|c| c.open).unwrap_or_default() {
            out.push(finish(key, o, ts_ns, Outcome::Incomplete));
        }
    }

    pub fn process_exited(&mut self, pid: u32, ts_ns: u64, out: &mut Vec<TxnSpan>) {
        let keys: Vec<Key> = self.conns.keys().filter(|k| k.0 == pid).copied().collect();
        for k in keys {
            self.conn_closed(k, ts_ns, out);
        }
    }
}

fn finish(key: Key, mut o: Open, end_ns: u64, outcome: Outcome) -> TxnSpan {
    let end_ns = end_ns.max(o.start_ns);
    match outcome {
        Outcome::Committed => o.events.push(Event {
            name: "transaction.committed",
            ts_ns: end_ns,
            attributes: vec![],
        }),
        Outcome::RolledBack => o.events.push(Event {
            name: "transaction.rolled_back",
            ts_ns: end_ns,
            attributes: vec![],
        }),
        Outcome::Prepared => o.events.push(Event {
            name: "transaction.prepared",
            ts_ns: end_ns,
            attributes: vec![],
        }),
        Outcome::Incomplete => {}
    }
    TxnSpan {
        pid: key.0,
        conn: key.1,
        ids: o.ids,
        start_ns: o.start_ns,
        end_ns,
        outcome,
        aborted: o.aborted,
        sqlstate: o.sqlstate,
        idle_ns: o.idle_ns,
        statements: o.statements,
        retry_count: o.retry_count,
        events: o.events,
    }
}

/// Span name, attributes and error of a transaction: `system` is its
/// db.system.name, `conn` its connection's attributes (from its engine).
pub fn describe(t: &TxnSpan, system: &'static str, conn: &[KeyValue]) -> Described {
    // From the pool query spans use: a vector of its own was a malloc and a
    // free per transaction.
    let mut a = crate::pipeline::attr_pool::take(8 + conn.len());
    a.extend([
        KeyValue::new("db.system.name", system),
        KeyValue::new("db.transaction.outcome", t.outcome.as_str()),
        KeyValue::new("db.transaction.aborted", t.aborted),
        KeyValue::new("db.transaction.statement_count", i64::from(t.statements)),
        KeyValue::new("db.transaction.idle_time_ms", t.idle_ns as f64 / 1e6),
        KeyValue::new("db.transaction.retry_count", i64::from(t.retry_count)),
        KeyValue::new("process.pid", i64::from(t.pid)),
    ]);
    a.extend_from_slice(conn);
    // An explicit ROLLBACK is the application's choice, not an error; a
    // rollback forced by an error is.
    let error = match (t.outcome, &t.sqlstate) {
        (Outcome::Committed | Outcome::Prepared, _) => None,
        (_, Some(code)) => Some(code.clone()),
        (Outcome::Incomplete, None) => Some("dbtel.incomplete".to_string()),
        (Outcome::RolledBack, None) => None,
    };
    if let Some(e) = &error {
        a.push(KeyValue::new("error.type", e.clone()));
    }
    Described {
        name: "transaction".into(),
        attributes: a,
        blocks: Default::default(),
        error,
    }
}

#[cfg(test)]
#[path = "txn_tests.rs"]
mod tests;
