//! Names and attributes of server-side spans (queries, transaction blocks,
//! lock waits): pure functions of the reconstructed span and what the catalog
//! said about the backends involved.

use std::sync::Arc;

use opentelemetry::{KeyValue, Value};

use crate::{
    pipeline::attr_block::{AttrBlock, Blocks},
    pipeline::dbspan::{DbSpan, Described, Kind},
    pipeline::span::Link,
    pipeline::sql::{self, FactsCache, QueryFacts, RowCount},
    postgres::catalog::{Backend, Blocker, Relation},
    postgres::server::backend::{Cut, LockWait, ServerQuery, ServerTxn, TxnOutcome, WaitOutcome},
};

/// A query as the server ran it (kind SERVER), exported with the server's
/// resource. `backend_pid`: the backend's PID as its server knows it (see
/// host::pidns).
pub fn query_span(
    q: ServerQuery,
    backend_pid: i32,
    cache: &mut FactsCache,
    backend: Option<&BackendDesc>,
) -> DbSpan {
    // An SQL EXECUTE's values are not in its text: no hash of it.
    let (facts, text_hash) = match &q.prepared {
        Some((_, body)) => (&cache.get(body), 0),
        None => cache.get_shared_hashed(&q.text),
    };
    let d = describe_query(&q, backend_pid, facts, backend);
    let joined = q.joined;
    let ran = (u64::from(q.pid), facts.group, text_hash);
    DbSpan::new(
        q.postmaster,
        q.ids,
        Kind::Server,
        (q.start_ns, q.end_ns),
        d,
        q.events,
        Vec::new(),
    )
    .mirrored(joined)
    .ran(ran.0, ran.1, ran.2)
}

/// A transaction block as the server ran it.
pub fn txn_span(t: ServerTxn, backend_pid: i32, backend: Option<&BackendDesc>) -> DbSpan {
    let d = describe_txn(&t, backend_pid, backend);
    let joined = t.joined;
    DbSpan::new(
        t.postmaster,
        t.ids,
        Kind::Server,
        (t.start_ns, t.end_ns),
        d,
        t.events,
        Vec::new(),
    )
    .mirrored(joined)
}

/// A lock wait (kind INTERNAL: time spent inside the server), linked to the
/// blockers' transactions where dbtel traces them.
pub fn wait_span(
    w: LockWait,
    backend_pid: i32,
    facts: &WaitFacts,
    cache: &mut FactsCache,
    links: Vec<Link>,
) -> DbSpan {
    let d = describe_wait(&w, backend_pid, facts, cache);
    DbSpan::new(
        w.postmaster,
        w.ids,
        Kind::Internal,
        (w.start_ns, w.end_ns),
        d,
        w.events,
        links,
    )
}

/// What the catalog told about a lock wait while it lasted.
#[derive(Debug, Clone, Default)]
pub struct WaitFacts {
    pub relation: Option<Relation>,
    pub blockers: Vec<Blocker>,
}

/// A backend as its spans describe it: the catalog's row, and the attributes
/// it gives every span, built once as a block its spans share.
#[derive(Debug, Clone)]
pub struct BackendDesc {
    pub info: Backend,
    attrs: Arc<AttrBlock>,
}

impl BackendDesc {
    pub fn new(info: Backend) -> Self {
        let mut attrs = Vec::new();
        backend_attributes(&info, &mut attrs);
        BackendDesc {
            info,
            attrs: AttrBlock::new(attrs),
        }
    }
}

/// db.system.name and the backend's PID: in its block when the span has
/// it (most spans: one allocation and two attributes fewer per span), else
/// the span's own.
fn backend_common(a: &mut Vec<KeyValue>, backend_pid: i32, backend: Option<&BackendDesc>) {
    if backend.is_none_or(|b| b.info.pid != backend_pid) {
        a.push(KeyValue::new("db.system.name", "postgresql"));
        a.push(KeyValue::new(
            "db.postgresql.backend.pid",
            backend_pid as i64,
        ));
    }
}

/// Who the backend serves, from the catalog (pg_stat_activity), after the
/// attributes every span of a backend has.
fn backend_attributes(b: &Backend, a: &mut Vec<KeyValue>) {
    use crate::pipeline::span::shared;
    a.push(KeyValue::new("db.system.name", "postgresql"));
    a.push(KeyValue::new("db.postgresql.backend.pid", b.pid as i64));
    if let Some(d) = &b.datname {
        a.push(KeyValue::new("db.namespace", shared(d)));
    }
    if let Some(u) = &b.usename {
        a.push(KeyValue::new("user.name", shared(u)));
    }
    if !b.application_name.is_empty() {
        a.push(KeyValue::new(
            "db.postgresql.application_name",
            shared(&b.application_name),
        ));
    }
    // "client backend" for applications; autovacuum workers and the like are
    // traced too (their locks explain waits) and say so.
    if !b.backend_type.is_empty() {
        a.push(KeyValue::new(
            "db.postgresql.backend_type",
            shared(&b.backend_type),
        ));
    }
    match (&b.client_addr, b.client_port) {
        (Some(addr), Some(port)) if port > 0 => {
            a.push(KeyValue::new("client.address", shared(addr)));
            a.push(KeyValue::new("client.port", port as i64));
            a.push(KeyValue::new("network.transport", "tcp"));
        }
        // pg_stat_activity shows no address and port -1 for unix sockets.
        (None, Some(-1)) => a.push(KeyValue::new("network.transport", "unix")),
        // Not known (a session the catalog never saw, a background process).
        _ => {}
    }
}

pub fn describe_query(
    q: &ServerQuery,
    backend_pid: i32,
    facts: &QueryFacts,
    backend: Option<&BackendDesc>,
) -> Described {
    let mut a = crate::pipeline::attr_pool::take(4);
    backend_common(&mut a, backend_pid, backend);
    let name = facts.name().unwrap_or_else(|| "postgresql".into());
    if q.truncated {
        a.push(KeyValue::new("dbtel.query.text_truncated", true));
    }
    if let Some((name, _)) = &q.prepared {
        a.push(KeyValue::new("db.postgresql.statement.name", name.clone()));
    }
    if let (Some(n), None) = (q.rows, &q.error) {
        // EndCommand's count, named as the client names its command tag's.
        let text = q.prepared.as_ref().map_or(&*q.text, |(_, body)| body);
        match facts
            .operation
            .as_deref()
            .and_then(|op| sql::row_count(op, text))
        {
            Some(RowCount::Returned) => {
                a.push(KeyValue::new("db.response.returned_rows", n as i64))
            }
            Some(RowCount::Affected) => {
                a.push(KeyValue::new("db.response.affected_rows", n as i64))
            }
            None => {}
        }
    }
    let mut error = None;
    if let Some(e) = &q.error {
        a.push(KeyValue::new("db.response.status_code", e.sqlstate.clone()));
        a.push(KeyValue::new("error.type", e.sqlstate.clone()));
        error = Some(e.message.clone().unwrap_or_else(|| e.sqlstate.clone()));
    } else if let Some(cut) = q.incomplete {
        match cut {
            // Autovacuum and other workers report a statement and exit without going idle.
            Cut::ProcessExited
                if backend.is_none_or(|b| b.info.backend_type == "client backend") =>
            {
                a.push(KeyValue::new("error.type", "dbtel.process_exited"));
                error = Some("query did not complete: backend exited".into());
            }
            Cut::ProcessExited => {}
            Cut::AgentStopped => a.push(KeyValue::new("dbtel.span.cut_short", "agent_stopped")),
        }
    }
    Described {
        name,
        attributes: a,
        blocks: Blocks::new(Some(&facts.attrs), backend.map(|b| &b.attrs)),
        error,
    }
}

pub fn describe_txn(t: &ServerTxn, backend_pid: i32, backend: Option<&BackendDesc>) -> Described {
    let outcome = match t.outcome {
        TxnOutcome::Committed => "committed",
        TxnOutcome::RolledBack => "rolled_back",
        TxnOutcome::Prepared => "prepared",
        TxnOutcome::Incomplete => "incomplete",
    };
    let mut a = Vec::with_capacity(4);
    backend_common(&mut a, backend_pid, backend);
    a.extend([
        KeyValue::new("db.transaction.outcome", outcome),
        KeyValue::new("db.transaction.aborted", t.error.is_some()),
        KeyValue::new("db.transaction.statement_count", t.statements as i64),
    ]);
    let error = t.error.as_ref().map(|e| {
        a.push(KeyValue::new("error.type", e.sqlstate.clone()));
        e.message.clone().unwrap_or_else(|| e.sqlstate.clone())
    });
    Described {
        name: "transaction".into(),
        attributes: a,
        blocks: Blocks::new(None, backend.map(|b| &b.attrs)),
        error,
    }
}

/// A lock wait: what was waited for, how it ended, and who held it.
pub fn describe_wait(
    w: &LockWait,
    backend_pid: i32,
    facts: &WaitFacts,
    cache: &mut FactsCache,
) -> Described {
    let t = &w.tag;
    let mut a = vec![
        KeyValue::new("db.system.name", "postgresql"),
        KeyValue::new("db.postgresql.backend.pid", backend_pid as i64),
        KeyValue::new("db.postgresql.lock.type", t.type_name()),
        KeyValue::new("db.postgresql.lock.mode", t.mode_name()),
        KeyValue::new("db.postgresql.lock.outcome", w.outcome.name().to_string()),
    ];
    match t.locktag_type {
        // transactionid: field1 is the xid waited for.
        5 => a.push(KeyValue::new(
            "db.postgresql.lock.transaction_id",
            t.field1 as i64,
        )),
        // virtualxid: backend id / local xid.
        6 => a.push(KeyValue::new(
            "db.postgresql.lock.virtual_transaction_id",
            format!("{}/{}", t.field1, t.field2),
        )),
        _ => {}
    }
    if let Some((db, rel)) = t.relation() {
        a.push(KeyValue::new("db.postgresql.lock.database_oid", db as i64));
        a.push(KeyValue::new("db.postgresql.lock.relation_oid", rel as i64));
        if t.locktag_type == 4 {
            a.push(KeyValue::new("db.postgresql.lock.page", t.field3 as i64));
            a.push(KeyValue::new("db.postgresql.lock.tuple", t.field4 as i64));
        }
    }
    let query_facts = w.query.as_deref().map(|q| cache.get(q));
    if let Some(f) = &query_facts {
        a.push(KeyValue::new("db.query.text", f.text.clone()));
    }
    // The table: from the lock tag when it names one, else (a row lock waits on
    // the holder's transaction id) the table the waiting statement works on.
    let table = match &facts.relation {
        Some(r) => Some(r.name.clone()),
        None => query_facts.as_ref().and_then(|f| f.collection.clone()),
    };
    if let Some(r) = &facts.relation {
        a.push(KeyValue::new(
            "db.postgresql.lock.relation",
            format!("{}.{}", r.schema, r.name),
        ));
    }
    if let Some(t) = &table {
        a.push(KeyValue::new("db.collection.name", t.clone()));
    }
    if let Some(b) = facts.blockers.first() {
        a.push(KeyValue::new("db.postgresql.blocker.pid", b.pid as i64));
        a.push(KeyValue::new(
            "db.postgresql.blocker.query",
            cache.get(&b.query).text.clone(),
        ));
        a.push(KeyValue::new(
            "db.postgresql.blocker.state",
            b.state.clone(),
        ));
        if let Some(age) = b.xact_age_ms {
            a.push(KeyValue::new(
                "db.postgresql.blocker.transaction_age_ms",
                age,
            ));
        }
        if facts.blockers.len() > 1 {
            let pids: Vec<i64> = facts.blockers.iter().map(|b| b.pid as i64).collect();
            a.push(KeyValue::new(
                "db.postgresql.blocker.pids",
                Value::Array(pids.into()),
            ));
        }
    }
    let error = match &w.outcome {
        WaitOutcome::Granted | WaitOutcome::AgentStopped => None,
        WaitOutcome::Error(code) => {
            a.push(KeyValue::new("error.type", code.clone()));
            Some(format!("lock wait ended by error {code}"))
        }
        other => {
            a.push(KeyValue::new("error.type", other.name().to_string()));
            Some(format!(
                "lock wait ended: {}",
                other.name().replace('_', " ")
            ))
        }
    };
    let on = table.unwrap_or_else(|| t.type_name().to_string());
    Described {
        name: format!("lock wait {on}").into(),
        attributes: a,
        blocks: Default::default(),
        error,
    }
}
