//! libpq's client spans described: span names and attributes of queries
//! (semantic conventions, libpq's function, rows, errors) and of the
//! connection they run on, and the DbSpans of queries and transactions.

use dbtel_common::func;
use std::sync::Arc;

use opentelemetry::KeyValue;

use crate::pipeline::name::Name;
use crate::{
    pipeline::{
        attr_block::{AttrBlock, Blocks},
        dbspan::{DbSpan, Described, Kind},
        span, sql,
        txn::{self, TxnSpan},
    },
    postgres::libpq::reconstruct::{ConnInfo, End, QuerySpan},
};

/// A query's span (kind CLIENT), given its text's facts.
/// `text`: its text's facts and hash as sent (sql::text_hash_as_sent).
pub fn query_span(q: QuerySpan, text: Option<(&sql::QueryFacts, u64)>) -> DbSpan {
    let facts = text.map(|(f, _)| f);
    let d = describe_with(&q, facts);
    // Literals are in the text only when it is sent as a whole.
    let inline = matches!(q.call, func::PQEXEC | func::PQSEND_QUERY);
    let text_hash = text.filter(|_| inline).map_or(0, |(_, hash)| hash);
    let ran = (q.conn, facts.map_or(0, |f| f.group), text_hash);
    DbSpan::new(
        q.pid,
        q.ids,
        Kind::Client,
        (q.start_ns, q.end_ns),
        d,
        q.events,
        Vec::new(),
    )
    .ran(ran.0, ran.1, ran.2)
}

/// A client transaction. Kind CLIENT, like its queries: it is the
/// application's view of work done by a remote server (a unit the server
/// commits or rolls back), not work inside the process; it also keeps the
/// span visible to back ends that only look at CLIENT/SERVER spans.
pub fn txn_span(t: TxnSpan, conn: Option<&ConnInfo>) -> DbSpan {
    let d = txn::describe(&t, "postgresql", conn.map_or(&[], |c| conn_attrs(c).kvs()));
    DbSpan::new(
        t.pid,
        t.ids,
        Kind::Client,
        (t.start_ns, t.end_ns),
        d,
        t.events,
        Vec::new(),
    )
}

pub fn function_name(f: u32) -> &'static str {
    match f {
        func::PQEXEC => "PQexec",
        func::PQEXEC_PARAMS => "PQexecParams",
        func::PQPREPARE => "PQprepare",
        func::PQEXEC_PREPARED => "PQexecPrepared",
        func::PQSEND_QUERY => "PQsendQuery",
        func::PQSEND_QUERY_PARAMS => "PQsendQueryParams",
        func::PQSEND_PREPARE => "PQsendPrepare",
        func::PQSEND_QUERY_PREPARED => "PQsendQueryPrepared",
        _ => "unknown",
    }
}

/// Where the connection goes, shared by its query and transaction spans: a
/// block built at its first span.
pub fn conn_attrs(c: &ConnInfo) -> &Arc<AttrBlock> {
    c.attrs.get_or_init(|| {
        let mut v = Vec::with_capacity(5);
        build_conn_attributes(c, &mut v);
        AttrBlock::new(v)
    })
}

fn build_conn_attributes(c: &ConnInfo, a: &mut Vec<KeyValue>) {
    use span::shared;
    if !c.db.is_empty() {
        a.push(KeyValue::new("db.namespace", shared(&c.db)));
    }
    if c.host.starts_with('/') || c.host.is_empty() {
        // Unix domain socket: libpq's socket file in that directory.
        let dir = if c.host.is_empty() {
            "/var/run/postgresql"
        } else {
            c.host.as_str()
        };
        let port = if c.port.is_empty() {
            "5432"
        } else {
            c.port.as_str()
        };
        a.push(KeyValue::new(
            "server.address",
            shared(&format!("{}/.s.PGSQL.{port}", dir.trim_end_matches('/'))),
        ));
        a.push(KeyValue::new("network.transport", "unix"));
    } else {
        a.push(KeyValue::new("server.address", shared(&c.host)));
        if let Ok(p) = c.port.parse::<i64>() {
            a.push(KeyValue::new("server.port", p));
        }
        a.push(KeyValue::new("network.transport", "tcp"));
    }
    if c.backend_pid > 0 {
        a.push(KeyValue::new(
            "db.postgresql.backend.pid",
            c.backend_pid as i64,
        ));
    }
}

/// Span name, attributes and error of a query, given its text's facts.
pub fn describe_with(q: &QuerySpan, facts: Option<&sql::QueryFacts>) -> Described {
    // Sized for the usual count: growing it cost a realloc or two per span.
    let mut a = crate::pipeline::attr_pool::take(16);
    a.extend([
        KeyValue::new("db.system.name", "postgresql"),
        KeyValue::new("code.function.name", function_name(q.call)),
        KeyValue::new("process.pid", q.pid as i64),
        KeyValue::new("thread.id", q.tid as i64),
    ]);
    let mut name = Name::default();
    let mut blocks = Blocks::default();
    if let Some(f) = facts.filter(|_| !q.is_prepare()) {
        blocks.facts = Some(f.attrs.clone());
        name = f.name().unwrap_or_default();
    } else if let Some(f) = facts {
        let summary = f.summary.as_ref().map(|s| format!("PREPARE {s}"));
        a.push(KeyValue::new("db.operation.name", "PREPARE"));
        if let Some(c) = &f.collection {
            a.push(KeyValue::new("db.collection.name", c.clone()));
        }
        if let Some(s) = &summary {
            a.push(KeyValue::new("db.query.summary", s.clone()));
        }
        a.push(KeyValue::new("db.query.text", f.text.clone()));
        name = summary.map_or(Name::Static("PREPARE"), Name::from);
    }
    if let Some(n) = &q.statement_name {
        a.push(KeyValue::new("db.postgresql.statement.name", n.clone()));
    }
    if q.prepared_before_attach {
        // Executing a statement prepared before dbtel attached: its text was never seen.
        a.push(KeyValue::new(
            "dbtel.statement.prepared_before_attach",
            true,
        ));
        a.push(KeyValue::new("db.operation.name", "EXECUTE"));
        name = format!("EXECUTE {}", q.statement_name.as_deref().unwrap_or("")).into();
    }
    if q.text_truncated {
        a.push(KeyValue::new("dbtel.query.text_truncated", true));
    }
    blocks.conn = q.conn_info.as_ref().map(|c| conn_attrs(c).clone());
    let mut error = None;
    match q.end {
        // It did not run: no rows, and no error of its own (the statement
        // that failed before it in its pipeline carries that).
        End::Completed if q.skipped => a.push(KeyValue::new("dbtel.query.skipped", true)),
        End::Completed => {
            if q.failed {
                let code = q.sqlstate.clone().unwrap_or_else(|| "_OTHER".into());
                a.push(KeyValue::new("db.response.status_code", code.clone()));
                a.push(KeyValue::new("error.type", code.clone()));
                error = Some(code);
            } else {
                let tagged = q
                    .cmd_status
                    .as_deref()
                    .and_then(|t| Some((t, sql::affected_rows(t)?)));
                // COPY … TO STDOUT sends its rows as copy data, not as a result's tuples.
                let copied_out = tagged.is_some_and(|(t, _)| t.starts_with("COPY"))
                    && q.text.as_deref().and_then(sql::copy_direction)
                        == Some(sql::CopyDirection::Out);
                match tagged {
                    Some((_, n)) if copied_out => {
                        a.push(KeyValue::new("db.response.returned_rows", n))
                    }
                    _ => {
                        a.push(KeyValue::new("db.response.returned_rows", q.rows as i64));
                        if let Some((_, n)) = tagged {
                            a.push(KeyValue::new("db.response.affected_rows", n));
                        }
                    }
                }
            }
        }
        other => {
            let why = match other {
                End::ConnectionClosed => "connection_closed",
                End::ProcessExited => "process_exited",
                End::Refused => "refused",
                End::Evicted => "connection_evicted",
                _ => "superseded",
            };
            error = Some(crate::pipeline::dbspan::cut_short(why, &mut a));
        }
    }
    if name.is_empty() {
        name = "postgresql".into();
    }
    Described {
        name,
        attributes: a,
        blocks,
        error,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::span::Ids;

    fn describe(q: &QuerySpan, raw_text: bool) -> Described {
        let facts = q.text.as_deref().map(|t| sql::facts(t, !raw_text));
        describe_with(q, facts.as_ref())
    }

    fn q(text: Option<&str>) -> QuerySpan {
        QuerySpan {
            pid: 10,
            tid: 11,
            conn: 1,
            start_ns: 1_000,
            end_ns: 3_000_000,
            call: func::PQEXEC,
            text: text.map(Into::into),
            text_truncated: false,
            statement_name: None,
            prepared_before_attach: false,
            rows: 1,
            cmd_status: Some("SELECT 1".into()),
            sqlstate: None,
            failed: false,
            skipped: false,
            conn_info: Some(Arc::new(ConnInfo {
                backend_pid: 99,
                db: "shop".into(),
                host: "/tmp".into(),
                port: "5433".into(),
                ..Default::default()
            })),
            end: End::Completed,
            ids: Ids::default(),
            events: vec![],
        }
    }

    fn get(d: &Described, k: &str) -> Option<String> {
        d.attributes
            .iter()
            .chain(d.blocks.kvs())
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn semantic_convention_attributes() {
        let d = describe(&q(Some("SELECT name FROM items WHERE id = 7")), false);
        assert_eq!(d.name, "SELECT items");
        assert_eq!(get(&d, "db.system.name").as_deref(), Some("postgresql"));
        assert_eq!(get(&d, "db.operation.name").as_deref(), Some("SELECT"));
        assert_eq!(get(&d, "db.collection.name").as_deref(), Some("items"));
        assert_eq!(
            get(&d, "db.query.text").as_deref(),
            Some("SELECT name FROM items WHERE id = ?")
        );
        assert_eq!(get(&d, "db.namespace").as_deref(), Some("shop"));
        assert_eq!(
            get(&d, "server.address").as_deref(),
            Some("/tmp/.s.PGSQL.5433")
        );
        assert_eq!(get(&d, "db.response.returned_rows").as_deref(), Some("1"));
        assert_eq!(get(&d, "db.postgresql.backend.pid").as_deref(), Some("99"));
        assert!(d.error.is_none());
        let raw = describe(&q(Some("SELECT 7")), true);
        assert_eq!(get(&raw, "db.query.text").as_deref(), Some("SELECT 7"));
    }

    #[test]
    fn affected_rows_from_command_tags() {
        let mut u = q(Some("update t set a = 1"));
        u.cmd_status = Some("UPDATE 4".into());
        u.rows = 0;
        let d = describe(&u, false);
        assert_eq!(
            (
                get(&d, "db.response.affected_rows").as_deref(),
                get(&d, "db.response.returned_rows").as_deref()
            ),
            (Some("4"), Some("0"))
        );
        assert_eq!(
            get(
                &describe(&q(Some("SELECT 1")), false),
                "db.response.affected_rows"
            ),
            None
        );
        let mut out = q(Some("copy (select 1) to stdout"));
        (out.cmd_status, out.rows) = (Some("COPY 12".into()), 0);
        let d = describe(&out, false);
        assert_eq!(
            (
                get(&d, "db.response.returned_rows").as_deref(),
                get(&d, "db.response.affected_rows")
            ),
            (Some("12"), None),
            "rows copied out"
        );
        let mut into = q(Some("copy t from stdin"));
        (into.cmd_status, into.rows) = (Some("COPY 3".into()), 0);
        let d = describe(&into, false);
        assert_eq!(
            (
                get(&d, "db.response.returned_rows").as_deref(),
                get(&d, "db.response.affected_rows").as_deref()
            ),
            (Some("0"), Some("3"))
        );
    }

    #[test]
    fn tcp_failure_prepare_and_unknown_statement() {
        let mut s = q(Some("select * from nope"));
        s.conn_info = Some(Arc::new(ConnInfo {
            backend_pid: 1,
            db: "d".into(),
            host: "127.0.0.1".into(),
            port: "5432".into(),
            ..Default::default()
        }));
        s.failed = true;
        s.sqlstate = Some("42P01".into());
        let d = describe(&s, false);
        assert_eq!(get(&d, "server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(get(&d, "server.port").as_deref(), Some("5432"));
        assert_eq!(get(&d, "db.response.status_code").as_deref(), Some("42P01"));
        assert_eq!(get(&d, "error.type").as_deref(), Some("42P01"));
        assert_eq!(d.error.as_deref(), Some("42P01"));
        assert_eq!(get(&d, "db.response.returned_rows"), None);

        let mut p = q(Some("select * from t where id = $1"));
        p.call = func::PQPREPARE;
        p.statement_name = Some("s1".into());
        let d = describe(&p, false);
        assert_eq!(d.name, "PREPARE SELECT t");
        assert_eq!(get(&d, "db.operation.name").as_deref(), Some("PREPARE"));

        let mut e = q(None);
        e.call = func::PQSEND_QUERY_PREPARED;
        e.statement_name = Some("P0_1".into());
        e.prepared_before_attach = true;
        let d = describe(&e, false);
        assert_eq!(d.name, "EXECUTE P0_1");
        assert_eq!(
            get(&d, "dbtel.statement.prepared_before_attach").as_deref(),
            Some("true")
        );
        assert_eq!(get(&d, "db.query.text"), None);
    }

    #[test]
    fn incomplete_spans_are_errors() {
        let mut s = q(Some("select pg_sleep(10)"));
        s.end = End::ProcessExited;
        let d = describe(&s, false);
        assert_eq!(
            get(&d, "error.type").as_deref(),
            Some("dbtel.process_exited")
        );
        assert_eq!(
            d.error.as_deref(),
            Some("query did not complete: process exited")
        );
    }

    #[test]
    fn transactions_carry_their_connection() {
        let conn = ConnInfo {
            backend_pid: 99,
            db: "shop".into(),
            host: "10.0.0.1".into(),
            port: "6432".into(),
            ..Default::default()
        };
        let t = TxnSpan {
            pid: 7,
            conn: 1,
            ids: Ids::default(),
            start_ns: 1_000,
            end_ns: 5_000,
            outcome: txn::Outcome::Committed,
            aborted: false,
            sqlstate: None,
            idle_ns: 0,
            statements: 3,
            retry_count: 0,
            events: vec![],
        };
        let s = txn_span(t, Some(&conn));
        assert_eq!(
            (s.name.as_str(), s.kind, s.pid, s.duration_ns()),
            ("transaction", Kind::Client, 7, 4_000)
        );
        assert_eq!(s.system(), Some("postgresql"));
        for kv in [
            KeyValue::new("db.namespace", "shop"),
            KeyValue::new("server.address", "10.0.0.1"),
            KeyValue::new("server.port", 6432i64),
            KeyValue::new("network.transport", "tcp"),
            KeyValue::new("db.postgresql.backend.pid", 99i64),
        ] {
            assert!(s.attributes.contains(&kv), "{kv:?} in {:?}", s.attributes);
        }
    }
}
