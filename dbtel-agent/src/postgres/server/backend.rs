//! What each PostgreSQL backend did, from its server probe hits: query spans
//! (any client, any protocol), explicit transactions, lock waits and how they
//! ended. A pure state machine like `reconstruct`: no clock, no I/O.
//!
//! Queries come from statement__status (pgstat_report_activity): a text means
//! "running this", NULL means "idle" — the same for the simple and the
//! extended protocol (Parse, Bind and Execute each report the same text).
//! Where EndCommand is probed, a statement ends there, with its row count:
//! statements sent without a Sync between them (no idle report) are each a
//! span, and so is each statement of a simple-protocol text of several.
//! A wait that ends in an error gets no lock__wait__done: the error report
//! (errcode/errmsg, deadlock__found) and transaction__abort close it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use dbtel_common::site;

pub use self::types::*;
pub use crate::postgres::server::blocks::TxnOutcome;
use crate::{
    events::{Origin, ServerHit},
    pipeline::span::{Event, IdGen, Ids},
    postgres::server::blocks::BlockEffect,
    postgres::server::target::unpack_sqlstate,
};

#[derive(Debug, Default)]
struct Backend {
    postmaster: u32,
    query: Option<ServerQuery>,
    txn: Option<ServerTxn>,
    waits: Vec<LockWait>,
    error: Option<ErrorReport>,
    /// An ERROR report began (errstart_cold): its errcode and errmsg are next.
    awaiting_code: bool,
    awaiting_message: bool,
    /// The pending error was emitted (EmitErrorReport): it reached the client.
    error_emitted: bool,
    /// Emitted, and its code as sent (site::ERROR_SENT) not seen yet.
    awaiting_sent: bool,
    /// SQL-level prepared statements of the session: name → statement.
    prepared: HashMap<String, String>,
    deadlock: bool,
    /// What the running statement does to the transaction block.
    effect: BlockEffect,
    /// The query ran to its end (EndCommand); it closes at the next text or
    /// idle report, so that an error in between (a deferred constraint at
    /// the implicit commit of Sync) is still its own.
    completed: bool,
    /// The statements of a simple-protocol text still to run after this one.
    rest: VecDeque<Arc<str>>,
    /// The query is a text of several statements that could not be split:
    /// each completion extends it.
    whole: bool,
    /// The last statement closed had failed.
    last_failed: bool,
    /// When its last hit came (monotonic ns).
    last_ns: u64,
    /// The last completion read from the kernel side's held one (see
    /// close_quiet): it comes again with the backend's next record.
    done_ns: u64,
}

impl Backend {
    /// The statement running, not one completed and waiting to be closed.
    fn running(&self) -> Option<&ServerQuery> {
        self.query.as_ref().filter(|_| !self.completed)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub queries: u64,
    pub lock_waits: u64,
    pub deadlocks: u64,
    /// Spans closed by a backend's exit.
    pub incomplete: u64,
    /// Parallel workers' copies of their leader's statement, not exported.
    pub worker_echoes: u64,
    /// Statements reported but neither run to their end nor failed: parsed
    /// (a prepare) or bound without an Execute, or a portal suspended at a row
    /// limit (its last Execute is the span). Not exported.
    pub unexecuted: u64,
    /// Completions without a statement to end (one begun before the agent attached).
    pub unmatched_completions: u64,
}

/// Prepared statements a session made, the fewer the better: bounded by starting over.
const MAX_PREPARED: usize = 1024;

/// Keeps track of a session's SQL-level PREPARE / DEALLOCATE; for an EXECUTE,
/// the name and the statement it runs.
fn prepared_statement(names: &mut HashMap<String, String>, text: &str) -> Option<(String, String)> {
    use crate::pipeline::sql::prepared::{action, Action};
    match action(text)? {
        Action::Prepare(name, body) => {
            if names.len() >= MAX_PREPARED {
                names.clear();
            }
            names.insert(name, body.to_string());
        }
        Action::Execute(name) => return names.get(&name).map(|body| (name, body.clone())),
        Action::Deallocate(Some(name)) => {
            names.remove(&name);
        }
        Action::Deallocate(None) => names.clear(),
    }
    None
}

/// A statement that ended lately, as much of it as tells a parallel worker's
/// echo of it (text length and head: no copy of the text per statement).
#[derive(Debug, Clone, Copy)]
struct Ended {
    postmaster: u32,
    pid: u32,
    start_ns: u64,
    end_ns: u64,
    len: usize,
    head: [u8; 24],
}

fn text_head(t: &str) -> [u8; 24] {
    let mut h = [0u8; 24];
    let n = t.len().min(24);
    h[..n].copy_from_slice(&t.as_bytes()[..n]);
    h
}

/// Statements remembered after their end: a parallel worker exits a little
/// after its leader's statement ended.
const ENDED_MEMORY: usize = 64;

pub struct Tracker {
    backends: crate::FastMap<u32, Backend>,
    gen: IdGen,
    pub counters: Counters,
    ended: VecDeque<Ended>,
    /// errstart_cold is probed: only reports it opened are errors (else every
    /// errcode counts, warnings and notices included).
    pub errors_by_level: bool,
    /// Servers whose EndCommand is probed: their statements end there, one
    /// span each even without a Sync between them, with a row count. (Else a
    /// statement ends at the next text or idle report.)
    completing: crate::FastSet<u32>,
    /// Texts with a `;` found to hold one statement (see backend_completion).
    single: completion::Singles,
    /// Blocks that joined an application's trace (taken by the agent).
    pub retraces: Vec<crate::pipeline::txn::Retrace>,
}

/// Closes a backend's open waits: ended by `error` (at its time) or, with
/// none, at `ts`.
fn end_waits(
    b: &mut Backend,
    error: Option<&ErrorReport>,
    deadlock: bool,
    ts: u64,
    out: &mut Vec<ServerSpan>,
) {
    if b.waits.is_empty() {
        return;
    }
    let outcome = WaitOutcome::from_error(error, deadlock);
    for mut w in b.waits.drain(..) {
        w.end_ns = error.map_or(ts, |e| e.ts_ns).max(w.start_ns);
        w.outcome = outcome.clone();
        out.push(ServerSpan::Wait(w));
    }
}

impl Tracker {
    pub fn new(gen: IdGen) -> Self {
        Tracker {
            backends: Default::default(),
            gen,
            retraces: Vec::new(),
            counters: Counters::default(),
            ended: Default::default(),
            errors_by_level: false,
            completing: Default::default(),
            single: Default::default(),
        }
    }

    /// The server's statements end at EndCommand (it is probed).
    pub fn completes_statements(&mut self, postmaster: u32) {
        self.completing.insert(postmaster);
    }

    /// Queries running (for leak checks): not those completed, waiting for
    /// the next statement or the quiet sweep to close them.
    pub fn in_flight(&self) -> usize {
        self.backends
            .values()
            .filter(|b| b.running().is_some())
            .count()
    }

    /// The ids a blocker's work can be linked to: its transaction, else its query.
    pub fn current(&self, pid: u32) -> Option<Ids> {
        let b = self.backends.get(&pid)?;
        b.txn
            .as_ref()
            .map(|t| t.ids)
            .or_else(|| b.running().map(|q| q.ids))
    }

    /// Backends with state kept (for sweeping out those whose exit was missed).
    pub fn pids(&self) -> Vec<u32> {
        self.backends.keys().copied().collect()
    }

    /// The lock wait a backend is in, if any.
    pub fn open_wait(&self, pid: u32) -> Option<Ids> {
        self.backends.get(&pid)?.waits.last().map(|w| w.ids)
    }

    /// Text of the query a backend is running, if known.
    pub fn running_query(&self, pid: u32) -> Option<&str> {
        self.backends.get(&pid)?.running().map(|q| &*q.text)
    }

    /// Adds an event to the lock wait with these ids if it is still open.
    pub fn annotate_wait(&mut self, wait: Ids, ev: Event) -> bool {
        for b in self.backends.values_mut() {
            if let Some(w) = b.waits.iter_mut().find(|w| w.ids == wait) {
                w.events.push(ev);
                return true;
            }
        }
        false
    }

    /// One probe hit. `client` tells what the traced client side knows about
    /// the connection served by a backend PID.
    pub fn on_hit(
        &mut self,
        mut hit: ServerHit,
        client: &dyn Fn(u32) -> Option<ClientIds>,
        out: &mut Vec<ServerSpan>,
        notices: &mut Vec<Notice>,
    ) {
        let at = hit.at;
        let b = self.backends.entry(at.pid).or_default();
        b.postmaster = at.conn as u32;
        b.last_ns = at.ts_ns;
        match hit.site {
            // The text is moved into the statement: no copy per statement.
            site::STATEMENT_STATUS => match hit.text.take() {
                Some(text) => {
                    if !b.completed && b.query.as_ref().is_some_and(|q| q.text == text) {
                        return; // Bind/Execute of the statement already running
                    }
                    self.end_statement(at, client, out);
                    self.open_text(at, text, hit.truncated, client);
                }
                None => self.end_statement(at, client, out),
            },
            site::COMMAND_DONE => self.command_done(at, hit.args[1], client, out),
            site::TRANSACTION_ABORT => {
                let (error, deadlock) = (b.error.take(), std::mem::take(&mut b.deadlock));
                // Waits ended by the error that aborted the transaction.
                end_waits(b, error.as_ref(), deadlock, at.ts_ns, out);
                if let (Some(q), Some(e)) = (b.query.as_mut(), &error) {
                    q.error.get_or_insert_with(|| e.clone());
                }
                let user_rollback =
                    error.is_none() && b.effect.ends == Some(TxnOutcome::RolledBack);
                match b.txn.as_mut() {
                    Some(_) if user_rollback => {
                        self.close_txn(at.pid, at.ts_ns, TxnOutcome::RolledBack, out)
                    }
                    // Failed inside a block: it stays open, aborted, until ROLLBACK.
                    Some(t) if t.error.is_none() => {
                        let e = error.unwrap_or_else(|| ErrorReport {
                            sqlstate: "_OTHER".into(),
                            message: None,
                            ts_ns: at.ts_ns,
                        });
                        t.events.push(Event {
                            name: "transaction.aborted",
                            ts_ns: at.ts_ns,
                            attributes: vec![opentelemetry::KeyValue::new(
                                "db.response.status_code",
                                e.sqlstate.clone(),
                            )],
                        });
                        t.error = Some(e);
                    }
                    _ => {}
                }
            }
            site::LOCK_WAIT_START => {
                let tag = LockTag::from_args(&hit.args);
                let from_client = client(at.pid).and_then(|c| c.query);
                // Inside the server's statement (itself under the client's query when
                // that client is traced); the client's query if the statement went unseen.
                let parent = b.query.as_ref().map(|q| q.ids).or(from_client);
                let under_client = from_client.is_some();
                let ids = match parent {
                    Some(p) => p.child(&mut self.gen),
                    None => self.gen.root(),
                };
                let b = self.backends.get_mut(&at.pid).expect("entry made above");
                if let Some(q) = b.query.as_mut() {
                    for name in ["contention_detected", "lock_contention_detected"] {
                        q.events.push(Event {
                            name,
                            ts_ns: at.ts_ns,
                            attributes: vec![],
                        });
                    }
                }
                self.counters.lock_waits += 1;
                b.waits.push(LockWait {
                    pid: at.pid,
                    postmaster: b.postmaster,
                    ids,
                    under_client,
                    start_ns: at.ts_ns,
                    end_ns: at.ts_ns,
                    tag,
                    outcome: WaitOutcome::Granted,
                    query: b.query.as_ref().map(|q| q.text.to_string()),
                    events: vec![],
                });
                notices.push(Notice::WaitStarted {
                    pid: at.pid,
                    postmaster: b.postmaster,
                    wait: ids,
                    under_client,
                    tag,
                    ts_ns: at.ts_ns,
                });
            }
            site::LOCK_WAIT_DONE => {
                let tag = LockTag::from_args(&hit.args);
                // Waits nest only in odd cases; take the latest with this tag.
                if let Some(i) = b
                    .waits
                    .iter()
                    .rposition(|w| w.tag == tag)
                    .or(b.waits.len().checked_sub(1))
                {
                    let mut w = b.waits.remove(i);
                    w.end_ns = at.ts_ns;
                    out.push(ServerSpan::Wait(w));
                }
            }
            site::DEADLOCK_FOUND => {
                b.deadlock = true;
                self.counters.deadlocks += 1;
                let wait = b.waits.last().map(|w| w.ids);
                notices.push(Notice::Deadlock {
                    pid: at.pid,
                    postmaster: b.postmaster,
                    wait,
                    ts_ns: at.ts_ns,
                });
            }
            // errstart_cold calls errstart: one report, two hits.
            site::ERRSTART if b.awaiting_code => {}
            site::ERRSTART => {
                // elog(ERROR) without errcode keeps errstart's default, XX000.
                b.error = Some(ErrorReport {
                    sqlstate: "XX000".into(),
                    message: None,
                    ts_ns: at.ts_ns,
                });
                (b.awaiting_code, b.awaiting_message, b.error_emitted) = (true, true, false);
            }
            site::ERROR_EMITTED => {
                b.error_emitted = b.error.is_some();
                b.awaiting_sent = b.error_emitted;
                (b.awaiting_code, b.awaiting_message) = (false, false);
            }
            site::ERROR_FLUSHED => {
                // Caught (a PL/pgSQL EXCEPTION block): the statement goes on, unharmed.
                if !std::mem::take(&mut b.error_emitted) && b.error.is_some() {
                    b.error = None;
                }
                (b.awaiting_code, b.awaiting_message) = (false, false);
            }
            site::ERRCODE if self.errors_by_level => {
                // The first errcode after errstart_cold; a later one belongs to a lesser report.
                if let Some(e) = b
                    .error
                    .as_mut()
                    .filter(|_| std::mem::take(&mut b.awaiting_code))
                {
                    e.sqlstate = unpack_sqlstate(hit.args[0]);
                }
            }
            site::ERRCODE => {
                b.error = Some(ErrorReport {
                    sqlstate: unpack_sqlstate(hit.args[0]),
                    message: None,
                    ts_ns: at.ts_ns,
                });
                b.awaiting_message = true;
            }
            site::ERROR_SENT => {
                if let Some(e) = b
                    .error
                    .as_mut()
                    .filter(|_| std::mem::take(&mut b.awaiting_sent))
                {
                    e.sqlstate = unpack_sqlstate(hit.args[0]);
                }
            }
            site::ERRMSG => {
                if let Some(e) = b
                    .error
                    .as_mut()
                    .filter(|_| std::mem::take(&mut b.awaiting_message))
                {
                    e.message = hit.text.take().map(|t| t.to_string());
                }
            }
            _ => {}
        }
    }

    /// `effect`: the text's effect on the block when the caller read it
    /// already (None: read here).
    fn open_query(
        &mut self,
        at: Origin,
        text: Arc<str>,
        truncated: bool,
        client: &dyn Fn(u32) -> Option<ClientIds>,
        effect: Option<BlockEffect>,
    ) {
        let Tracker {
            backends,
            gen,
            retraces,
            counters,
            ..
        } = self;
        // Looked up once: this runs for every statement.
        let b = backends.get_mut(&at.pid).expect("entry exists");
        // Blocks are known from their statements' texts (the transaction
        // start/commit probes would cost two traps per implicit transaction).
        let effect = effect.unwrap_or_else(|| BlockEffect::of(&text, b.txn.is_some()));
        if effect.opened {
            txn::open_txn(b, gen, at, client);
        }
        let joined = client(at.pid).and_then(|c| c.query);
        // Untraced client: the application's span from the text's
        // sqlcommenter comment (a traced client's span is the parent else).
        let tp = joined
            .is_none()
            .then(|| crate::pipeline::sqlcomment::traceparent_in(&text))
            .flatten();
        if let (Some(tp), Some(t)) = (tp, b.txn.as_mut().filter(|t| !t.adopted)) {
            retraces.push(crate::pipeline::txn::Retrace {
                from: t.ids.trace_id,
                to: tp.trace_id,
            });
            (t.ids.trace_id, t.ids.parent_span_id, t.ids.remote) = (tp.trace_id, tp.span_id, true);
            t.ids.remote_sampled = tp.sampled;
            t.adopted = true;
        }
        let ids = match (joined, &b.txn, tp) {
            (Some(c), _, _) => c.child(gen),
            (None, Some(t), _) => t.ids.child(gen),
            (None, None, Some(tp)) => Ids::under_app(&tp, gen),
            (None, None, None) => gen.root(),
        };
        if let Some(t) = b.txn.as_mut() {
            t.statements += 1;
        }
        b.effect = effect;
        (b.completed, b.whole) = (false, false);
        // Nothing from before this statement belongs to it.
        (
            b.error,
            b.deadlock,
            b.awaiting_code,
            b.awaiting_message,
            b.awaiting_sent,
        ) = (None, false, false, false, false);
        counters.queries += 1;
        let prepared = prepared_statement(&mut b.prepared, &text);
        b.query = Some(ServerQuery {
            pid: at.pid,
            postmaster: b.postmaster,
            ids,
            joined: joined.is_some(),
            start_ns: at.ts_ns,
            end_ns: at.ts_ns,
            text,
            truncated,
            prepared,
            rows: None,
            error: None,
            incomplete: None,
            events: vec![],
        });
    }

    /// Whether a backend's session is inside a transaction block.
    pub(super) fn in_block(&self, pid: u32) -> bool {
        self.backends.get(&pid).is_some_and(|b| b.txn.is_some())
    }
}

/// The statement is over (idle, or the next one began): (failed, its end).
/// An error it left that aborted nothing (in a savepoint, or caught) is
/// its error, and a wait still open ended with it. A completed one ended
/// at its completion.
fn close_query(
    b: &mut Backend,
    errors_by_level: bool,
    ended: &mut VecDeque<Ended>,
    pid: u32,
    ts: u64,
    out: &mut Vec<ServerSpan>,
) -> (bool, u64) {
    let error = if errors_by_level {
        b.error.take()
    } else {
        None
    };
    let deadlock = std::mem::take(&mut b.deadlock);
    (b.awaiting_code, b.awaiting_message) = (false, false);
    end_waits(b, error.as_ref(), deadlock, ts, out);
    let Some(mut q) = b.query.take() else {
        return (false, ts);
    };
    if !std::mem::take(&mut b.completed) {
        q.end_ns = ts.max(q.start_ns);
    }
    if q.error.is_none() {
        q.error = error;
    }
    let failed = q.error.is_some();
    b.last_failed = failed;
    if ended.len() == ENDED_MEMORY {
        ended.pop_front();
    }
    let (len, head) = (q.text.len(), text_head(&q.text));
    ended.push_back(Ended {
        postmaster: q.postmaster,
        pid,
        start_ns: q.start_ns,
        end_ns: q.end_ns,
        len,
        head,
    });
    let end = q.end_ns;
    out.push(ServerSpan::Query(q));
    (failed, end)
}

#[path = "backend_completion.rs"]
mod completion;

#[path = "backend_exits.rs"]
mod exits;

#[path = "backend_txn.rs"]
mod txn;

#[path = "backend_types.rs"]
mod types;

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
