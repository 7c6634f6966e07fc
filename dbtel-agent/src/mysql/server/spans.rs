//! Names and attributes of MySQL/MariaDB server spans (statements,
//! transactions, lock waits), mirroring PostgreSQL's server spans with
//! `mysql` in place of `postgresql`: pure functions of the reconstructed
//! span. The state machine that finds them is in `reconstruct`.

use std::sync::Arc;

use opentelemetry::{KeyValue, Value};

use super::blocked::Blocked;
use crate::pipeline::name::Name;
use crate::pipeline::{
    attr_block::Blocks,
    dbspan::{DbSpan, Described, Kind},
    span::{Event, Ids, Link},
    sql::QueryFacts,
    txn::Outcome,
};

/// What a statement span stands for: the server command that ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A statement of a COM_QUERY text, or a prepared statement's execution.
    Statement,
    /// COM_STMT_PREPARE: named as the client's prepare spans.
    Prepare,
    /// COM_STMT_FETCH: rows read from an execution's cursor.
    Fetch,
    /// COM_INIT_DB (`mysql_select_db`, the CLI's `use`).
    InitDb,
}

/// One top-level statement as the server ran it.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementSpan {
    pub ids: Ids,
    /// A child of its client's span (that client is traced too).
    pub joined: bool,
    /// The server process.
    pub pid: u32,
    /// The OS thread that ran it.
    pub tid: u32,
    /// The connection's id (CONNECTION_ID(), the client's db.mysql.connection_id).
    pub connection_id: u64,
    /// CLOCK_MONOTONIC nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    pub what: What,
    /// None: the text was not readable.
    pub facts: Option<Arc<QueryFacts>>,
    pub truncated: bool,
    /// The error number the client got.
    pub errno: Option<u32>,
    /// Its message format from the server's errmsg.sys (no user data):
    /// the span's status description.
    pub error_format: Option<String>,
    pub returned_rows: Option<u64>,
    pub affected_rows: Option<u64>,
    pub events: Vec<Event>,
}

/// A transaction as the server ran it (its IN_TRANS status bit).
#[derive(Debug, Clone, PartialEq)]
pub struct TxnSpan {
    pub ids: Ids,
    /// Opened under its client's transaction (that client is traced too).
    pub joined: bool,
    pub pid: u32,
    pub connection_id: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub outcome: Outcome,
    /// The error that rolled it back (1213: a deadlock).
    pub errno: Option<u32>,
    pub statements: u32,
    pub events: Vec<Event>,
}

/// What a lock wait waited for (thd_wait_begin's type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockType {
    /// THD_WAIT_ROW_LOCK (3): an InnoDB row lock.
    Row,
    /// THD_WAIT_TABLE_LOCK (6): an InnoDB table lock or a thr_lock.
    Table,
    /// THD_WAIT_META_DATA_LOCK (5): MDL (DDL, LOCK TABLES, GET_LOCK).
    Metadata,
}

impl LockType {
    /// THD_WAIT_* values of 10.11's service_thd_wait.h; None for non-lock waits.
    pub fn from_wait_type(t: u64) -> Option<Self> {
        match t {
            3 => Some(LockType::Row),
            5 => Some(LockType::Metadata),
            6 => Some(LockType::Table),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LockType::Row => "row",
            LockType::Table => "table",
            LockType::Metadata => "metadata",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    Granted,
    /// 1213 ER_LOCK_DEADLOCK: this statement was the victim.
    Deadlock,
    /// 1205 ER_LOCK_WAIT_TIMEOUT (innodb_lock_wait_timeout, lock_wait_timeout).
    LockWaitTimeout,
    /// 1317 ER_QUERY_INTERRUPTED: KILL QUERY.
    Interrupted,
    /// 1927 ER_CONNECTION_KILLED: KILL CONNECTION.
    Killed,
    /// 1969 ER_STATEMENT_TIMEOUT: max_statement_time.
    StatementTimeout,
    /// Another error ended the statement (its number).
    Error(u32),
    /// The server exited while it waited.
    ProcessExited,
    /// Still waiting when the agent stopped.
    AgentStopped,
}

impl WaitOutcome {
    /// How the wait ended, from the error its statement ended with.
    pub fn from_errno(errno: Option<u32>) -> Self {
        match errno {
            None => WaitOutcome::Granted,
            Some(1213) => WaitOutcome::Deadlock,
            Some(1205) => WaitOutcome::LockWaitTimeout,
            Some(1317) => WaitOutcome::Interrupted,
            Some(1927) => WaitOutcome::Killed,
            Some(1969) => WaitOutcome::StatementTimeout,
            Some(n) => WaitOutcome::Error(n),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WaitOutcome::Granted => "granted",
            WaitOutcome::Deadlock => "deadlock",
            WaitOutcome::LockWaitTimeout => "lock_wait_timeout",
            WaitOutcome::Interrupted => "interrupted",
            WaitOutcome::Killed => "killed",
            WaitOutcome::StatementTimeout => "statement_timeout",
            WaitOutcome::Error(_) => "error",
            WaitOutcome::ProcessExited => "process_exited",
            WaitOutcome::AgentStopped => "agent_stopped",
        }
    }
}

/// A lock wait (kind INTERNAL: time spent inside the server).
#[derive(Debug, Clone, PartialEq)]
pub struct WaitSpan {
    pub ids: Ids,
    pub pid: u32,
    pub tid: u32,
    /// None: its statement never ended (cut short), so its connection is not known.
    pub connection_id: Option<u64>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub lock: LockType,
    pub outcome: WaitOutcome,
    /// The waiting statement's facts.
    pub facts: Option<Arc<QueryFacts>>,
    /// What the catalog said while it waited (a wait shorter than its
    /// grace, or no catalog: None).
    pub blocked: Option<Arc<Blocked>>,
    /// deadlock_detected, on a deadlock victim's wait.
    pub events: Vec<Event>,
}

pub fn statement_span(s: StatementSpan, system: &'static str) -> DbSpan {
    let d = describe_statement(&s, system);
    let joined = s.joined;
    let ran = (s.connection_id, s.facts.as_ref().map_or(0, |f| f.group), 0);
    DbSpan::new(
        s.pid,
        s.ids,
        Kind::Server,
        (s.start_ns, s.end_ns),
        d,
        s.events,
        Vec::new(),
    )
    .mirrored(joined)
    .ran(ran.0, ran.1, ran.2)
}

pub fn txn_span(t: TxnSpan, system: &'static str) -> DbSpan {
    let d = describe_txn(&t, system);
    let joined = t.joined;
    DbSpan::new(
        t.pid,
        t.ids,
        Kind::Server,
        (t.start_ns, t.end_ns),
        d,
        t.events,
        Vec::new(),
    )
    .mirrored(joined)
}

/// A lock wait, linked to its blockers' transactions where dbtel traces them.
pub fn wait_span(w: WaitSpan, system: &'static str) -> DbSpan {
    let d = describe_wait(&w, system);
    let links = w
        .blocked
        .iter()
        .flat_map(|b| &b.blockers)
        .filter_map(|b| {
            let t = b.transaction?;
            Some(Link {
                trace_id: t.trace_id,
                span_id: t.span_id,
                attributes: vec![
                    KeyValue::new("dbtel.link.type", "blocked_by"),
                    KeyValue::new("db.mysql.connection_id", b.connection_id as i64),
                ],
            })
        })
        .collect();
    DbSpan::new(
        w.pid,
        w.ids,
        Kind::Internal,
        (w.start_ns, w.end_ns),
        d,
        w.events,
        links,
    )
}

pub fn describe_statement(s: &StatementSpan, system: &'static str) -> Described {
    // Sized for the usual count: growing it cost a realloc or two per span.
    let mut a = crate::pipeline::attr_pool::take(10);
    a.push(KeyValue::new("db.system.name", system));
    let mut name = Name::default();
    let mut blocks = Blocks::default();
    match (s.what, &s.facts) {
        // Preparing does not run the statement: named as the client's prepare.
        (What::Prepare | What::Fetch, f) => {
            let op = if s.what == What::Prepare {
                "PREPARE"
            } else {
                "FETCH"
            };
            let summary = f
                .as_ref()
                .and_then(|f| f.summary.as_ref())
                .map(|x| format!("{op} {x}"));
            a.push(KeyValue::new("db.operation.name", op));
            if let Some(c) = f.as_ref().and_then(|f| f.collection.clone()) {
                a.push(KeyValue::new("db.collection.name", c));
            }
            if let Some(x) = &summary {
                a.push(KeyValue::new("db.query.summary", x.clone()));
            }
            if let Some(f) = f {
                a.push(KeyValue::new("db.query.text", f.text.clone()));
            }
            name = summary.map_or(Name::Static(op), Name::from);
        }
        (What::InitDb, _) => {
            a.push(KeyValue::new("db.operation.name", "USE"));
            name = "USE".into();
        }
        (What::Statement, Some(f)) => {
            blocks.facts = Some(f.attrs.clone());
            name = f.name().unwrap_or_default();
        }
        (What::Statement, None) => {}
    }
    if s.truncated {
        a.push(KeyValue::new("dbtel.query.text_truncated", true));
    }
    a.extend([
        KeyValue::new("db.mysql.connection_id", s.connection_id as i64),
        KeyValue::new("process.pid", i64::from(s.pid)),
        KeyValue::new("thread.id", i64::from(s.tid)),
    ]);
    let error = match s.errno {
        Some(n) => {
            let code = n.to_string();
            a.push(KeyValue::new("db.response.status_code", code.clone()));
            a.push(KeyValue::new("error.type", code.clone()));
            Some(s.error_format.clone().unwrap_or(code))
        }
        None => {
            if let Some(n) = s.returned_rows {
                a.push(KeyValue::new("db.response.returned_rows", n as i64));
            }
            if let Some(n) = s.affected_rows {
                a.push(KeyValue::new("db.response.affected_rows", n as i64));
            }
            None
        }
    };
    if name.is_empty() {
        name = system.into();
    }
    Described {
        name,
        attributes: a,
        blocks,
        error,
    }
}

pub fn describe_txn(t: &TxnSpan, system: &'static str) -> Described {
    let mut a = vec![
        KeyValue::new("db.system.name", system),
        KeyValue::new("db.mysql.connection_id", t.connection_id as i64),
        KeyValue::new("db.transaction.outcome", t.outcome.as_str()),
        KeyValue::new("db.transaction.aborted", t.errno.is_some()),
        KeyValue::new("db.transaction.statement_count", i64::from(t.statements)),
        KeyValue::new("process.pid", i64::from(t.pid)),
    ];
    let error = t.errno.map(|n| {
        a.push(KeyValue::new("error.type", n.to_string()));
        n.to_string()
    });
    Described {
        name: "transaction".into(),
        attributes: a,
        blocks: Default::default(),
        error,
    }
}

/// A lock wait: what was waited for and how it ended. Named after the
/// waiting statement's table, else the lock type.
pub fn describe_wait(w: &WaitSpan, system: &'static str) -> Described {
    let mut a = vec![KeyValue::new("db.system.name", system)];
    if let Some(id) = w.connection_id {
        a.push(KeyValue::new("db.mysql.connection_id", id as i64));
    }
    a.extend([
        KeyValue::new("db.mysql.lock.type", w.lock.name()),
        KeyValue::new("db.mysql.lock.outcome", w.outcome.name()),
        KeyValue::new("process.pid", i64::from(w.pid)),
        KeyValue::new("thread.id", i64::from(w.tid)),
    ]);
    // The table: the waiting statement's, else the one the lock is on.
    let locked = w.blocked.as_ref().and_then(|b| b.table.clone());
    let table = w
        .facts
        .as_ref()
        .and_then(|f| f.collection.clone())
        .or_else(|| {
            locked
                .as_ref()
                .map(|t| t.rsplit('.').next().unwrap_or(t).to_string())
        });
    if let Some(f) = &w.facts {
        a.push(KeyValue::new("db.query.text", f.text.clone()));
    }
    if let Some(t) = &table {
        a.push(KeyValue::new("db.collection.name", t.clone()));
    }
    if let Some(b) = &w.blocked {
        blocked_attributes(b, &mut a);
    }
    let error = match w.outcome {
        WaitOutcome::Granted | WaitOutcome::AgentStopped => None,
        WaitOutcome::Error(n) => {
            a.push(KeyValue::new("error.type", n.to_string()));
            Some(format!("lock wait ended by error {n}"))
        }
        other => {
            a.push(KeyValue::new("error.type", other.name()));
            Some(format!(
                "lock wait ended: {}",
                other.name().replace('_', " ")
            ))
        }
    };
    let on = table.unwrap_or_else(|| w.lock.name().to_string());
    Described {
        name: format!("lock wait {on}").into(),
        attributes: a,
        blocks: Default::default(),
        error,
    }
}

/// The lock as the catalog saw it, and who held it (mirroring PostgreSQL's
/// db.postgresql.lock.* and db.postgresql.blocker.*).
fn blocked_attributes(b: &Blocked, a: &mut Vec<KeyValue>) {
    if let Some(m) = &b.mode {
        a.push(KeyValue::new("db.mysql.lock.mode", m.clone()));
    }
    if let Some(t) = &b.table {
        a.push(KeyValue::new("db.mysql.lock.table", t.clone()));
    }
    if let Some(i) = &b.index {
        a.push(KeyValue::new("db.mysql.lock.index", i.clone()));
    }
    let Some(first) = b.blockers.first() else {
        return;
    };
    a.push(KeyValue::new(
        "db.mysql.blocker.connection_id",
        first.connection_id as i64,
    ));
    if let Some(q) = &first.query {
        a.push(KeyValue::new("db.mysql.blocker.query", q.text.clone()));
    }
    a.push(KeyValue::new("db.mysql.blocker.state", first.state.clone()));
    if let Some(age) = first.transaction_age_ms {
        a.push(KeyValue::new("db.mysql.blocker.transaction_age_ms", age));
    }
    if let Some(m) = &first.mode {
        a.push(KeyValue::new("db.mysql.blocker.lock_mode", m.clone()));
    }
    if b.blockers.len() > 1 {
        let ids: Vec<i64> = b.blockers.iter().map(|b| b.connection_id as i64).collect();
        a.push(KeyValue::new(
            "db.mysql.blocker.connection_ids",
            Value::Array(ids.into()),
        ));
    }
}

/// deadlock_detected on a victim's statement and wait: both members of the
/// cycle by connection id and query (obfuscated), and the other's client
/// span when that client is traced.
pub fn deadlock_attributes(
    victim: (u64, Option<&str>),
    other: (u64, Option<&str>),
    other_client: Option<Ids>,
) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("db.mysql.deadlock.victim.connection_id", victim.0 as i64),
        KeyValue::new("db.mysql.deadlock.other.connection_id", other.0 as i64),
    ];
    if let Some(q) = victim.1 {
        a.push(KeyValue::new(
            "db.mysql.deadlock.victim.query",
            q.to_string(),
        ));
    }
    if let Some(q) = other.1 {
        a.push(KeyValue::new(
            "db.mysql.deadlock.other.query",
            q.to_string(),
        ));
    }
    if let Some(ids) = other_client {
        a.push(KeyValue::new(
            "db.mysql.deadlock.other.trace_id",
            format!("{:032x}", ids.trace_id),
        ));
        a.push(KeyValue::new(
            "db.mysql.deadlock.other.span_id",
            format!("{:016x}", ids.span_id),
        ));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::sql::{self, Dialect, Text};

    fn facts(t: &str) -> Option<Arc<QueryFacts>> {
        Some(Arc::new(sql::facts_in(Dialect::MySql, t, Text::Obfuscated)))
    }

    fn stmt(what: What, text: &str) -> StatementSpan {
        StatementSpan {
            ids: Ids::default(),
            joined: false,
            pid: 7,
            tid: 8,
            connection_id: 42,
            start_ns: 1,
            end_ns: 2,
            what,
            facts: facts(text),
            truncated: false,
            errno: None,
            error_format: None,
            returned_rows: None,
            affected_rows: None,
            events: vec![],
        }
    }

    #[test]
    fn prepare_fetch_and_use_are_named_like_the_client_names_them() {
        let d = describe_statement(
            &stmt(What::Prepare, "SELECT a FROM t WHERE id = ?"),
            "mariadb",
        );
        assert_eq!(d.name, "PREPARE SELECT t");
        assert_eq!(
            d.attributes,
            vec![
                KeyValue::new("db.system.name", "mariadb"),
                KeyValue::new("db.operation.name", "PREPARE"),
                KeyValue::new("db.collection.name", "t"),
                KeyValue::new("db.query.summary", "PREPARE SELECT t"),
                KeyValue::new("db.query.text", "SELECT a FROM t WHERE id = ?"),
                KeyValue::new("db.mysql.connection_id", 42i64),
                KeyValue::new("process.pid", 7i64),
                KeyValue::new("thread.id", 8i64),
            ]
        );
        let mut f = stmt(What::Fetch, "SELECT a FROM t");
        f.returned_rows = Some(5);
        let d = describe_statement(&f, "mysql");
        assert_eq!(d.name, "FETCH SELECT t");
        assert!(d
            .attributes
            .contains(&KeyValue::new("db.response.returned_rows", 5i64)));
        let mut u = stmt(What::InitDb, "");
        u.facts = None;
        assert_eq!(describe_statement(&u, "mariadb").name, "USE");
        let mut none = stmt(What::Statement, "");
        none.facts = None;
        assert_eq!(describe_statement(&none, "mariadb").name, "mariadb");
    }

    #[test]
    fn wait_outcomes() {
        assert_eq!(
            WaitOutcome::from_errno(Some(1969)).name(),
            "statement_timeout"
        );
        assert_eq!(
            WaitOutcome::from_errno(Some(1062)),
            WaitOutcome::Error(1062)
        );
        let mut w = WaitSpan {
            ids: Ids::default(),
            pid: 7,
            tid: 8,
            connection_id: None,
            start_ns: 1,
            end_ns: 2,
            lock: LockType::Metadata,
            outcome: WaitOutcome::Error(1062),
            facts: None,
            blocked: None,
            events: vec![],
        };
        let d = describe_wait(&w, "mariadb");
        assert_eq!(
            (d.name.as_str(), d.error.as_deref()),
            ("lock wait metadata", Some("lock wait ended by error 1062"))
        );
        assert!(d.attributes.contains(&KeyValue::new("error.type", "1062")));
        w.outcome = WaitOutcome::AgentStopped;
        assert_eq!(describe_wait(&w, "mariadb").error, None);
        w.outcome = WaitOutcome::ProcessExited;
        assert_eq!(
            describe_wait(&w, "mariadb").error.as_deref(),
            Some("lock wait ended: process exited")
        );
    }
}
