//! What backend reconstruction produces: server queries, transaction blocks
//! and lock waits (with their tags and outcomes), and the notices the agent
//! acts on as they happen.

use crate::{
    pipeline::span::{Event, Ids},
    postgres::server::blocks::TxnOutcome,
};

/// What the client side knows about the connection a backend serves
/// (when the client is traced too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientIds {
    /// The client's query in flight on that connection.
    pub query: Option<Ids>,
    /// The client's open transaction.
    pub txn: Option<Ids>,
}

/// A lock tag as lock__wait__start reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTag {
    pub field1: u32,
    pub field2: u32,
    pub field3: u32,
    pub field4: u32,
    pub locktag_type: u32,
    pub mode: u32,
}

impl LockTag {
    pub(super) fn from_args(a: &[u64; dbtel_common::USDT_MAX_ARGS]) -> Self {
        LockTag {
            field1: a[0] as u32,
            field2: a[1] as u32,
            field3: a[2] as u32,
            field4: a[3] as u32,
            locktag_type: a[4] as u32,
            mode: a[5] as u32,
        }
    }

    /// LockTagType names (lock.h; stable since 9.x, SPECULATIVE_TOKEN since 9.5).
    pub fn type_name(&self) -> &'static str {
        match self.locktag_type {
            0 => "relation",
            1 => "extend",
            2 => "frozenid",
            3 => "page",
            4 => "tuple",
            5 => "transactionid",
            6 => "virtualxid",
            7 => "spectoken",
            8 => "object",
            9 => "userlock",
            10 => "advisory",
            _ => "unknown",
        }
    }

    /// Lock mode names as pg_locks shows them.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            1 => "AccessShareLock",
            2 => "RowShareLock",
            3 => "RowExclusiveLock",
            4 => "ShareUpdateExclusiveLock",
            5 => "ShareLock",
            6 => "ShareRowExclusiveLock",
            7 => "ExclusiveLock",
            8 => "AccessExclusiveLock",
            _ => "unknown",
        }
    }

    /// (database OID, relation OID) when the tag names a relation.
    pub fn relation(&self) -> Option<(u32, u32)> {
        matches!(self.locktag_type, 0 | 1 | 3 | 4).then_some((self.field1, self.field2))
    }
}

/// An error report seen in a backend: SQLSTATE and message format.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorReport {
    pub sqlstate: String,
    /// The untranslated format string (no user data in it).
    pub message: Option<String>,
    pub ts_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    Granted,
    Deadlock,
    LockTimeout,
    StatementTimeout,
    Canceled,
    /// Another error ended it (its SQLSTATE).
    Error(String),
    /// The backend exited while waiting.
    ProcessExited,
    /// Still waiting when the agent stopped.
    AgentStopped,
}

impl WaitOutcome {
    pub fn name(&self) -> &str {
        match self {
            WaitOutcome::Granted => "granted",
            WaitOutcome::Deadlock => "deadlock",
            WaitOutcome::LockTimeout => "lock_timeout",
            WaitOutcome::StatementTimeout => "statement_timeout",
            WaitOutcome::Canceled => "canceled",
            WaitOutcome::Error(_) => "error",
            WaitOutcome::ProcessExited => "process_exited",
            WaitOutcome::AgentStopped => "agent_stopped",
        }
    }

    pub(super) fn from_error(e: Option<&ErrorReport>, deadlock: bool) -> Self {
        if deadlock {
            return WaitOutcome::Deadlock;
        }
        let Some(e) = e else {
            return WaitOutcome::Error("_OTHER".into());
        };
        let msg = e.message.as_deref().unwrap_or("");
        match e.sqlstate.as_str() {
            "40P01" => WaitOutcome::Deadlock,
            "55P03" => WaitOutcome::LockTimeout,
            "57014" if msg.contains("statement timeout") => WaitOutcome::StatementTimeout,
            "57014" => WaitOutcome::Canceled,
            other => WaitOutcome::Error(other.to_string()),
        }
    }
}

/// Why a span was closed before its end was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    ProcessExited,
    AgentStopped,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerQuery {
    pub pid: u32,
    pub postmaster: u32,
    pub ids: Ids,
    /// Parented under the client's span (the client is traced too).
    pub joined: bool,
    pub start_ns: u64,
    pub end_ns: u64,
    pub text: std::sync::Arc<str>,
    pub truncated: bool,
    /// `EXECUTE name`: the name and the statement `PREPARE name AS` gave it
    /// (what the span is named and described by; `text` stays as reported).
    pub prepared: Option<(String, String)>,
    /// What EndCommand counted (QueryCompletion.nprocessed): rows returned,
    /// changed or copied, as its command tag says. `None`: it did not
    /// complete, or ran as a whole text of several statements.
    pub rows: Option<u64>,
    pub error: Option<ErrorReport>,
    /// Cut short: by the backend's exit, or by the agent stopping (not an error).
    pub incomplete: Option<Cut>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerTxn {
    pub pid: u32,
    pub postmaster: u32,
    pub ids: Ids,
    /// Opened under its client's transaction (that client is traced too).
    pub joined: bool,
    /// Joined to the application's trace by a statement's traceparent.
    pub adopted: bool,
    pub start_ns: u64,
    pub end_ns: u64,
    pub outcome: TxnOutcome,
    /// The error that put it in the aborted state.
    pub error: Option<ErrorReport>,
    pub statements: u32,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LockWait {
    pub pid: u32,
    pub postmaster: u32,
    pub ids: Ids,
    /// Its client is traced: the client's query hears of the wait too.
    pub under_client: bool,
    pub start_ns: u64,
    pub end_ns: u64,
    pub tag: LockTag,
    pub outcome: WaitOutcome,
    /// Text of the waiting query (raw: the exporter obfuscates).
    pub query: Option<String>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ServerSpan {
    Query(ServerQuery),
    Txn(ServerTxn),
    Wait(LockWait),
}

impl ServerSpan {
    /// The server it happened in.
    pub fn postmaster(&self) -> u32 {
        match self {
            ServerSpan::Query(q) => q.postmaster,
            ServerSpan::Txn(t) => t.postmaster,
            ServerSpan::Wait(w) => w.postmaster,
        }
    }

    /// The backend it happened in.
    pub fn pid(&self) -> u32 {
        match self {
            ServerSpan::Query(q) => q.pid,
            ServerSpan::Txn(t) => t.pid,
            ServerSpan::Wait(w) => w.pid,
        }
    }
}

/// Things the agent acts on as they happen (catalog lookups, client events).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A backend started waiting for a lock.
    WaitStarted {
        pid: u32,
        postmaster: u32,
        wait: Ids,
        under_client: bool,
        tag: LockTag,
        ts_ns: u64,
    },
    /// This backend found a deadlock and will abort (the victim).
    Deadlock {
        pid: u32,
        postmaster: u32,
        wait: Option<Ids>,
        ts_ns: u64,
    },
}
