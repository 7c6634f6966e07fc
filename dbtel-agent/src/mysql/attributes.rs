//! MySQL client spans described: names and attributes of queries
//! (semantic conventions, the C API function, rows, errors) and of the
//! connection they run on, and the DbSpans of queries and transactions.
//! The state machine that finds them is in `reconstruct`.

use std::sync::Arc;

use dbtel_common::MyCall;
use opentelemetry::KeyValue;

use super::records::ConnDetails;
use crate::pipeline::name::Name;
use crate::pipeline::{
    attr_block::{AttrBlock, Blocks},
    dbspan::{DbSpan, Described, Kind},
    span::{shared, Ids},
    sql::QueryFacts,
    txn::{self, TxnSpan},
};

/// What a connection's spans say about it: its server's kind and where it
/// goes. Built when its details change; its spans share it (one block,
/// encoded once).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnView {
    /// db.system.name: "mariadb" or "mysql" (also when not known).
    pub system: &'static str,
    pub attrs: Arc<AttrBlock>,
}

impl Default for ConnView {
    fn default() -> Self {
        ConnView {
            system: "mysql",
            attrs: AttrBlock::new(Vec::new()),
        }
    }
}

impl ConnView {
    /// From the connection's details (None: no Conn record came) and its
    /// connection id (0: unknown), the latest of the details' and the returns'.
    pub fn new(d: Option<&ConnDetails>, thread_id: u64) -> Self {
        let mut a = Vec::with_capacity(5);
        let mut system = "mysql";
        if let Some(d) = d {
            if d.version.to_ascii_lowercase().contains("mariadb") {
                system = "mariadb";
            }
            if !d.db.is_empty() {
                a.push(KeyValue::new("db.namespace", shared(&d.db)));
            }
            // The client library says "localhost" for a unix socket connection.
            if !d.socket.is_empty() && (d.host.is_empty() || d.host == "localhost") {
                a.push(KeyValue::new("server.address", shared(&d.socket)));
                a.push(KeyValue::new("network.transport", "unix"));
            } else if !d.host.is_empty() {
                a.push(KeyValue::new("server.address", shared(&d.host)));
                if d.port != 0 {
                    a.push(KeyValue::new("server.port", i64::from(d.port)));
                }
                a.push(KeyValue::new("network.transport", "tcp"));
            }
        }
        if thread_id != 0 {
            a.push(KeyValue::new("db.mysql.connection_id", thread_id as i64));
        }
        ConnView {
            system,
            attrs: AttrBlock::new(a),
        }
    }
}

/// Why a query span ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Its last result was read (or the next call showed none would be).
    Completed,
    /// mysql_close with it in flight.
    ConnectionClosed,
    /// The process exited with it in flight.
    ProcessExited,
    /// The next call on its connection began before it returned (a return
    /// the probe missed, or another thread using the connection).
    Superseded,
    /// Its connection was forgotten: its process had too many (see
    /// `reconstruct::CONNECTIONS_PER_PROCESS`).
    ConnectionEvicted,
}

/// A failed call: the handle's error number and SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub errno: u32,
    pub sqlstate: String,
}

impl Failure {
    /// The error number in decimal ("1213"), the code spans and
    /// transactions carry; "_OTHER" when the handle gave none.
    pub fn code(&self) -> String {
        if self.errno == 0 {
            "_OTHER".into()
        } else {
            self.errno.to_string()
        }
    }
}

/// One statement text sent (or prepared, or executed), finished.
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySpan {
    pub ids: Ids,
    pub pid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    /// The call that sent it (RealQuery, SendQuery, StmtPrepare, StmtExecute).
    pub call: MyCall,
    /// Facts of its text (None: the text was not readable, or an execution
    /// of a statement whose prepare was not seen).
    pub facts: Option<Arc<QueryFacts>>,
    pub truncated: bool,
    /// An execution of a statement prepared before dbtel attached.
    pub prepared_before_attach: bool,
    /// Rows buffered by mysql_store_result / mysql_stmt_store_result, summed
    /// over its results (None: none buffered, e.g. streamed).
    pub returned_rows: Option<u64>,
    /// Rows changed, for statements that change rows.
    pub affected_rows: Option<u64>,
    pub error: Option<Failure>,
    pub end: End,
    pub conn: Arc<ConnView>,
}

pub fn function_name(c: MyCall) -> &'static str {
    match c {
        MyCall::RealQuery => "mysql_real_query",
        MyCall::SendQuery => "mysql_send_query",
        MyCall::ReadQueryResult => "mysql_read_query_result",
        MyCall::StoreResult => "mysql_store_result",
        MyCall::UseResult => "mysql_use_result",
        MyCall::NextResult => "mysql_next_result",
        MyCall::StmtPrepare => "mysql_stmt_prepare",
        MyCall::StmtExecute => "mysql_stmt_execute",
        MyCall::StmtStoreResult => "mysql_stmt_store_result",
        MyCall::StmtClose => "mysql_stmt_close",
        MyCall::Close => "mysql_close",
    }
}

/// A query's span (kind CLIENT).
pub fn query_span(q: QuerySpan) -> DbSpan {
    let d = describe(&q);
    let conn = Arc::as_ptr(&q.conn) as u64;
    let group = q.facts.as_ref().map_or(0, |f| f.group);
    DbSpan::new(
        q.pid,
        q.ids,
        Kind::Client,
        (q.start_ns, q.end_ns),
        d,
        Vec::new(),
        Vec::new(),
    )
    .ran(conn, group, 0)
}

/// A client transaction, kind CLIENT like its queries (as libpq's).
pub fn txn_span(t: TxnSpan, conn: &ConnView) -> DbSpan {
    let d = txn::describe(&t, conn.system, conn.attrs.kvs());
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

/// Span name, attributes and error of a query.
pub fn describe(q: &QuerySpan) -> Described {
    // Sized for the usual count: growing it cost a realloc or two per span.
    let mut a = crate::pipeline::attr_pool::take(12);
    a.extend([
        KeyValue::new("db.system.name", q.conn.system),
        KeyValue::new("code.function.name", function_name(q.call)),
        KeyValue::new("process.pid", i64::from(q.pid)),
        KeyValue::new("thread.id", i64::from(q.tid)),
    ]);
    let mut name = Name::default();
    let mut blocks = Blocks::default();
    match (&q.facts, q.call) {
        // Preparing does not run the statement: named as libpq's PQprepare spans.
        (Some(f), MyCall::StmtPrepare) => {
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
        (Some(f), _) => {
            blocks.facts = Some(f.attrs.clone());
            name = f.name().unwrap_or_default();
        }
        (None, MyCall::StmtPrepare) => {
            a.push(KeyValue::new("db.operation.name", "PREPARE"));
            name = "PREPARE".into();
        }
        (None, _) => {}
    }
    if q.prepared_before_attach {
        // Its text was never seen.
        a.push(KeyValue::new(
            "dbtel.statement.prepared_before_attach",
            true,
        ));
        a.push(KeyValue::new("db.operation.name", "EXECUTE"));
        name = "EXECUTE".into();
    }
    if q.truncated {
        a.push(KeyValue::new("dbtel.query.text_truncated", true));
    }
    if !q.conn.attrs.kvs().is_empty() {
        blocks.conn = Some(q.conn.attrs.clone());
    }
    let mut error = None;
    match (q.end, &q.error) {
        (End::Completed, Some(f)) => {
            let code = f.code();
            a.push(KeyValue::new("db.response.status_code", code.clone()));
            a.push(KeyValue::new("error.type", code.clone()));
            if !f.sqlstate.is_empty() {
                a.push(KeyValue::new("db.mysql.sqlstate", f.sqlstate.clone()));
            }
            error = Some(code);
        }
        (End::Completed, None) => {
            if let Some(n) = q.returned_rows {
                a.push(KeyValue::new("db.response.returned_rows", n as i64));
            }
            if let Some(n) = q.affected_rows {
                a.push(KeyValue::new("db.response.affected_rows", n as i64));
            }
        }
        (cut, _) => {
            let why = match cut {
                End::ConnectionClosed => "connection_closed",
                End::ProcessExited => "process_exited",
                End::ConnectionEvicted => "connection_evicted",
                _ => "superseded",
            };
            error = Some(crate::pipeline::dbspan::cut_short(why, &mut a));
        }
    }
    if name.is_empty() {
        name = "mysql".into();
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
    use super::*;
    use crate::{events::Origin, pipeline::sql};

    fn details(host: &str, socket: &str, port: u32, version: &str) -> ConnDetails {
        ConnDetails {
            at: Origin {
                pid: 1,
                tid: 1,
                ts_ns: 0,
                conn: 0x10,
            },
            thread_id: 42,
            db: "shop".into(),
            host: host.into(),
            socket: socket.into(),
            port,
            version: version.into(),
        }
    }

    fn get(a: &[KeyValue], k: &str) -> Option<String> {
        a.iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn where_the_connection_goes() {
        let v = ConnView::new(
            Some(&details(
                "localhost",
                "/run/mysqld/mysqld.sock",
                3306,
                "10.11.19-MariaDB-0+deb12u1",
            )),
            42,
        );
        assert_eq!(v.system, "mariadb");
        assert_eq!(
            v.attrs.kvs(),
            [
                KeyValue::new("db.namespace", "shop"),
                KeyValue::new("server.address", "/run/mysqld/mysqld.sock"),
                KeyValue::new("network.transport", "unix"),
                KeyValue::new("db.mysql.connection_id", 42i64),
            ]
        );
        let v = ConnView::new(
            Some(&details("db.example", "/tmp/x.sock", 3307, "8.0.36")),
            7,
        );
        assert_eq!(v.system, "mysql");
        assert_eq!(
            v.attrs.kvs(),
            [
                KeyValue::new("db.namespace", "shop"),
                KeyValue::new("server.address", "db.example"),
                KeyValue::new("server.port", 3307i64),
                KeyValue::new("network.transport", "tcp"),
                KeyValue::new("db.mysql.connection_id", 7i64),
            ]
        );
        let mut d = details("127.0.0.1", "", 0, "5.5.5-10.6.1-mariadb");
        d.db.clear();
        let v = ConnView::new(Some(&d), 0);
        assert_eq!(
            (
                v.system,
                get(v.attrs.kvs(), "server.port"),
                get(v.attrs.kvs(), "db.namespace")
            ),
            ("mariadb", None, None)
        );
        assert_eq!(
            ConnView::new(None, 9),
            ConnView {
                system: "mysql",
                attrs: AttrBlock::new(vec![KeyValue::new("db.mysql.connection_id", 9i64)])
            }
        );
    }

    fn q(text: Option<&str>, call: MyCall) -> QuerySpan {
        QuerySpan {
            ids: Ids::default(),
            pid: 10,
            tid: 11,
            start_ns: 1_000,
            end_ns: 2_000,
            call,
            facts: text.map(|t| Arc::new(sql::facts_in(sql::Dialect::MySql, t, true))),
            truncated: false,
            prepared_before_attach: false,
            returned_rows: None,
            affected_rows: None,
            error: None,
            end: End::Completed,
            conn: Arc::new(ConnView::default()),
        }
    }

    #[test]
    fn prepare_failure_and_cut_spans() {
        let d = describe(&q(
            Some("SELECT a FROM t WHERE id = ?"),
            MyCall::StmtPrepare,
        ));
        assert_eq!(d.name, "PREPARE SELECT t");
        assert_eq!(
            get(&d.attributes, "db.operation.name").as_deref(),
            Some("PREPARE")
        );
        assert_eq!(
            get(&d.attributes, "db.query.summary").as_deref(),
            Some("PREPARE SELECT t")
        );
        assert_eq!(
            get(&d.attributes, "code.function.name").as_deref(),
            Some("mysql_stmt_prepare")
        );

        let mut f = q(Some("select * from nope"), MyCall::RealQuery);
        f.error = Some(Failure {
            errno: 1146,
            sqlstate: "42S02".into(),
        });
        f.returned_rows = Some(3);
        let d = describe(&f);
        assert_eq!(d.error.as_deref(), Some("1146"));
        for (k, v) in [
            ("db.response.status_code", "1146"),
            ("error.type", "1146"),
            ("db.mysql.sqlstate", "42S02"),
        ] {
            assert_eq!(get(&d.attributes, k).as_deref(), Some(v), "{k}");
        }
        assert_eq!(
            get(&d.attributes, "db.response.returned_rows"),
            None,
            "no rows on an error"
        );

        let mut c = q(None, MyCall::SendQuery);
        c.end = End::Superseded;
        let d = describe(&c);
        assert_eq!(
            (d.name.as_str(), d.error.as_deref()),
            ("mysql", Some("query did not complete: superseded"))
        );
        assert_eq!(
            get(&d.attributes, "error.type").as_deref(),
            Some("dbtel.superseded")
        );
    }
}
