//! What client reconstruction produces: query spans (with how they ended
//! and the connection they ran on), transactions handed on with their
//! connection, the client context server spans join, and its counters.

use std::sync::Arc;

use dbtel_common::func;

use crate::pipeline::{span, span::Ids, txn::TxnSpan};

/// Connection details read once from libpq's PGconn.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub backend_pid: i32,
    pub db: String,
    /// Host name, address, or unix socket directory.
    pub host: String,
    pub port: String,
    /// Its span attributes, built at its first span (see attributes).
    pub attrs: std::sync::OnceLock<std::sync::Arc<crate::pipeline::attr_block::AttrBlock>>,
}

impl PartialEq for ConnInfo {
    /// The same connection details (the attribute cache follows from them).
    fn eq(&self, o: &Self) -> bool {
        (self.backend_pid, &self.db, &self.host, &self.port)
            == (o.backend_pid, &o.db, &o.host, &o.port)
    }
}

/// Why a span ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The last result was delivered.
    Completed,
    /// PQfinish closed the connection with the query in flight.
    ConnectionClosed,
    /// The traced process exited with the query in flight.
    ProcessExited,
    /// The next synchronous call on the connection began first (the call failed
    /// before producing results, e.g. a lost connection).
    Superseded,
    /// libpq refused the call without sending anything: a synchronous call
    /// (PQexec & co.) in pipeline mode.
    Refused,
    /// Forgotten for a bound (see reconstruct_bounds): too many connections
    /// or queries in flight.
    Evicted,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuerySpan {
    pub ids: Ids,
    pub pid: u32,
    pub tid: u32,
    pub conn: u64,
    /// CLOCK_MONOTONIC nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    /// The libpq function the application called (dbtel_common::func).
    pub call: u32,
    /// SQL text as the application sent it (None: unknown).
    pub text: Option<std::sync::Arc<str>>,
    pub text_truncated: bool,
    /// Prepared statement name, for prepare and execute-prepared calls.
    pub statement_name: Option<std::sync::Arc<str>>,
    /// An execution of a statement prepared before dbtel attached: its text is unknown.
    pub prepared_before_attach: bool,
    pub rows: u64,
    /// Command tag of the last result, e.g. "UPDATE 1".
    pub cmd_status: Option<std::sync::Arc<str>>,
    pub sqlstate: Option<String>,
    pub failed: bool,
    /// The server did not run it: an earlier statement of its pipeline failed
    /// (libpq's PGRES_PIPELINE_ABORTED).
    pub skipped: bool,
    pub conn_info: Option<Arc<ConnInfo>>,
    pub end: End,
    /// Added while in flight (e.g. by the server side: lock waits).
    pub events: Vec<span::Event>,
}

/// What the client-side reconstruction produces.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientSpan {
    Query(QuerySpan),
    /// A transaction and the connection it ran on (the tracker knows none).
    Txn(TxnSpan, Option<Arc<ConnInfo>>),
}

/// The client's view of a server backend right now (for server-side spans).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientContext {
    pub pid: u32,
    /// The query sent and in flight at the front of the connection's queue.
    pub query: Option<Ids>,
    /// The connection's open transaction.
    pub txn: Option<Ids>,
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
    /// Forgotten for a bound: connections, prepared statements' texts, queries in flight.
    pub evicted_connections: u64,
    pub evicted_statements: u64,
    pub evicted_queries: u64,
}
