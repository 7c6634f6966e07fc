//! Record streams as the probes send them (encoded, then decoded), and the
//! spans they must give.

use opentelemetry::KeyValue;

use super::*;
use crate::{
    mysql::records::{self, encode},
    pipeline::dbspan::Kind,
};

const PID: u32 = 100;
const TID: u32 = 101;
/// MYSQL* and MYSQL_STMT* handles.
const DB: u64 = 0x1000;
const DB2: u64 = 0x5000;
const ST: u64 = 0x2000;
const ST2: u64 = 0x3000;

const AC: u32 = AUTOCOMMIT;
const TX: u32 = AUTOCOMMIT | IN_TRANS;
const MARIADB: &str = "10.11.19-MariaDB-0+deb12u1";
const SOCK: &str = "/run/mysqld/mysqld.sock";

struct H {
    r: Reconstructor,
    out: Vec<DbSpan>,
    now: u64,
    /// server_status of the returns that follow.
    status: u32,
}

fn ret(call: MyCall, handle: u64, mysql: u64, ret: u64) -> Returned {
    Returned {
        at: Origin {
            pid: PID,
            tid: TID,
            ts_ns: 0,
            conn: handle,
        },
        call,
        mysql,
        ret,
        thread_id: 42,
        errno: 0,
        sqlstate: String::new(),
        affected_rows: None,
        rows: 0,
        field_count: 0,
        server_status: AC,
        stmt_id: 0,
    }
}

impl H {
    fn new() -> Self {
        let mut h = H {
            r: Reconstructor::with_seed(1, Text::Obfuscated),
            out: vec![],
            now: 1_000_000,
            status: AC,
        };
        h.conn(DB, "shop", "localhost", SOCK, 0, MARIADB, 42);
        h
    }

    fn at(&mut self, handle: u64) -> Origin {
        self.now += 1_000;
        Origin {
            pid: PID,
            tid: TID,
            ts_ns: self.now,
            conn: handle,
        }
    }

    fn feed(&mut self, bytes: Vec<u8>) {
        let rec = records::decode(&bytes).expect("decodes");
        self.r.on_record(rec, &mut self.out);
    }

    #[allow(clippy::too_many_arguments)]
    fn conn(
        &mut self,
        mysql: u64,
        db: &str,
        host: &str,
        socket: &str,
        port: u32,
        version: &str,
        thread_id: u64,
    ) {
        let at = self.at(mysql);
        let c = ConnDetails {
            at,
            thread_id,
            db: db.into(),
            host: host.into(),
            socket: socket.into(),
            port,
            version: version.into(),
        };
        self.feed(encode::conn(&c));
    }

    /// A call's entry: its time.
    fn call(&mut self, call: MyCall, handle: u64, mysql: u64, text: Option<&str>) -> u64 {
        let at = self.at(handle);
        self.feed(encode::call(at, call, mysql, text));
        at.ts_ns
    }

    /// A call's return, edited from the defaults: its time.
    fn ret(&mut self, mut r: Returned, edit: impl FnOnce(&mut Returned)) -> u64 {
        r.server_status = self.status;
        edit(&mut r);
        r.at = self.at(r.at.conn);
        self.feed(encode::returned(&r));
        r.at.ts_ns
    }

    /// mysql_real_query of a statement without rows: (start, end).
    fn exec(&mut self, text: &str, affected: u64) -> (u64, u64) {
        let start = self.call(MyCall::RealQuery, DB, DB, Some(text));
        let end = self.ret(ret(MyCall::RealQuery, DB, DB, 0), |r| {
            r.affected_rows = Some(affected)
        });
        (start, end)
    }

    fn fail(&mut self, text: &str, errno: u32, sqlstate: &str) -> (u64, u64) {
        let start = self.call(MyCall::RealQuery, DB, DB, Some(text));
        let end = self.ret(ret(MyCall::RealQuery, DB, DB, 1), |r| {
            (r.errno, r.sqlstate) = (errno, sqlstate.into())
        });
        (start, end)
    }

    /// mysql_real_query + mysql_store_result + mysql_next_result (MySQLdb, the CLI).
    fn select(&mut self, text: &str, rows: u64) -> (u64, u64) {
        let start = self.call(MyCall::RealQuery, DB, DB, Some(text));
        self.ret(ret(MyCall::RealQuery, DB, DB, 0), |r| r.field_count = 2);
        let end = self.ret(ret(MyCall::StoreResult, DB, DB, 0xdead0), |r| {
            (r.rows, r.field_count) = (rows, 2)
        });
        self.ret(ret(MyCall::NextResult, DB, DB, u64::MAX), |_| {});
        (start, end)
    }

    fn take(&mut self) -> Vec<DbSpan> {
        std::mem::take(&mut self.out)
    }
}

fn get(s: &DbSpan, k: &str) -> Option<String> {
    s.attribute(k).map(|v| v.to_string())
}

fn names(spans: &[DbSpan]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

fn conn_attrs() -> Vec<KeyValue> {
    vec![
        KeyValue::new("db.namespace", "shop"),
        KeyValue::new("server.address", SOCK),
        KeyValue::new("network.transport", "unix"),
        KeyValue::new("db.mysql.connection_id", 42i64),
    ]
}

#[test]
fn autocommit_text_queries() {
    let mut h = H::new();
    let (s1, e1) = h.exec("INSERT INTO t VALUES (1)", 1);
    // MySQLdb then asks for a result set and the next result: there are none.
    h.ret(ret(MyCall::StoreResult, DB, DB, 0), |_| {});
    h.ret(ret(MyCall::NextResult, DB, DB, u64::MAX), |_| {});
    let (s2, e2) = h.select("SELECT a FROM t WHERE b = 'x'", 3);
    let s3 = h.call(MyCall::RealQuery, DB, DB, Some("select a from t"));
    h.ret(ret(MyCall::RealQuery, DB, DB, 0), |r| r.field_count = 1);
    let e3 = h.ret(ret(MyCall::UseResult, DB, DB, 0xbeef0), |r| {
        r.field_count = 1
    });
    let out = h.take();
    assert_eq!(names(&out), ["INSERT t", "SELECT t", "SELECT t"]);
    let mut want = vec![
        KeyValue::new("db.system.name", "mariadb"),
        KeyValue::new("code.function.name", "mysql_real_query"),
        KeyValue::new("process.pid", i64::from(PID)),
        KeyValue::new("thread.id", i64::from(TID)),
        KeyValue::new("db.response.affected_rows", 1i64),
        // The text's facts, then the connection's: blocks shared by its spans.
        KeyValue::new("db.operation.name", "INSERT"),
        KeyValue::new("db.collection.name", "t"),
        KeyValue::new("db.query.summary", "INSERT t"),
        KeyValue::new("db.query.text", "INSERT INTO t VALUES (?)"),
    ];
    want.extend(conn_attrs());
    assert_eq!(out[0].exported_attributes(), want);
    assert_eq!(
        (
            out[0].start_ns,
            out[0].end_ns,
            out[0].kind,
            out[0].error.as_deref()
        ),
        (s1, e1, Kind::Client, None)
    );
    assert_eq!(
        (
            out[1].start_ns,
            out[1].end_ns,
            out[1].rows(),
            out[1].affected_rows()
        ),
        (s2, e2, Some(3), None)
    );
    assert_eq!(
        get(&out[1], "db.query.text").as_deref(),
        Some("SELECT a FROM t WHERE b = ?")
    );
    assert_eq!(
        (
            out[2].start_ns,
            out[2].end_ns,
            out[2].rows(),
            out[2].affected_rows()
        ),
        (s3, e3, None, None),
        "streamed: no count"
    );
    assert!(out.iter().all(|s| s.ids.parent_span_id == 0));
    assert!(
        out[0].ids.trace_id != out[1].ids.trace_id && out[1].ids.trace_id != out[2].ids.trace_id
    );
    assert_eq!(h.r.in_flight(), 0);
}

#[test]
fn failed_query() {
    let mut h = H::new();
    let (s, e) = h.fail("SELECT * FROM nope", 1146, "42S02");
    let out = h.take();
    assert_eq!(
        (
            out.len(),
            out[0].name.as_str(),
            out[0].start_ns,
            out[0].end_ns
        ),
        (1, "SELECT nope", s, e)
    );
    assert_eq!(out[0].error.as_deref(), Some("1146"));
    assert_eq!(out[0].error_type(), Some("1146"));
    assert_eq!(
        get(&out[0], "db.response.status_code").as_deref(),
        Some("1146")
    );
    assert_eq!(get(&out[0], "db.mysql.sqlstate").as_deref(), Some("42S02"));
    assert_eq!((out[0].rows(), out[0].affected_rows()), (None, None));
}

#[test]
fn multi_statement_texts_are_one_span() {
    let mut h = H::new();
    let more = AC | MORE_RESULTS;
    let s = h.call(
        MyCall::RealQuery,
        DB,
        DB,
        Some("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); SELECT * FROM t"),
    );
    h.status = more;
    h.ret(ret(MyCall::RealQuery, DB, DB, 0), |r| {
        r.affected_rows = Some(1)
    });
    h.ret(ret(MyCall::StoreResult, DB, DB, 0), |_| {}); // no result set: not the end
    h.ret(ret(MyCall::NextResult, DB, DB, 0), |r| {
        r.affected_rows = Some(1)
    });
    h.ret(ret(MyCall::NextResult, DB, DB, 0), |r| r.field_count = 3);
    h.status = AC;
    let e = h.ret(ret(MyCall::StoreResult, DB, DB, 0xdead0), |r| {
        (r.rows, r.field_count) = (4, 3)
    });
    h.ret(ret(MyCall::NextResult, DB, DB, 0xffff_ffff), |_| {}); // -1 in eax only
    let out = h.take();
    assert_eq!(names(&out), ["INSERT t INSERT t SELECT t"]);
    assert_eq!(
        (
            out[0].start_ns,
            out[0].end_ns,
            out[0].affected_rows(),
            out[0].rows()
        ),
        (s, e, Some(2), Some(4))
    );

    // CALL: its result sets, then its final OK through mysql_next_result.
    let s = h.call(MyCall::RealQuery, DB, DB, Some("CALL p(1)"));
    h.status = more;
    h.ret(ret(MyCall::RealQuery, DB, DB, 0), |r| r.field_count = 1);
    h.ret(ret(MyCall::StoreResult, DB, DB, 0xdead0), |r| r.rows = 2);
    h.ret(ret(MyCall::NextResult, DB, DB, 0), |r| r.field_count = 1);
    h.ret(ret(MyCall::StoreResult, DB, DB, 0xdead0), |r| r.rows = 5);
    h.status = AC;
    let e = h.ret(ret(MyCall::NextResult, DB, DB, 0), |r| {
        r.affected_rows = Some(0)
    });
    h.ret(ret(MyCall::NextResult, DB, DB, u64::MAX), |_| {});
    // A later result fails: the statement fails.
    h.call(
        MyCall::RealQuery,
        DB,
        DB,
        Some("SELECT 1; SELECT * FROM nope"),
    );
    h.status = more;
    h.ret(ret(MyCall::RealQuery, DB, DB, 0), |r| r.field_count = 1);
    h.ret(ret(MyCall::StoreResult, DB, DB, 0xdead0), |r| r.rows = 1);
    h.status = AC;
    h.ret(ret(MyCall::NextResult, DB, DB, 1), |r| {
        (r.errno, r.sqlstate) = (1146, "42S02".into())
    });
    let out = h.take();
    assert_eq!(names(&out), ["CALL", "SELECT SELECT nope"]);
    assert_eq!(
        (
            out[0].start_ns,
            out[0].end_ns,
            out[0].rows(),
            out[0].affected_rows()
        ),
        (s, e, Some(7), None)
    );
    assert_eq!(
        (out[1].error.as_deref(), out[1].rows()),
        (Some("1146"), None)
    );
    assert_eq!(h.r.in_flight(), 0);
}

#[test]
fn send_query_then_read_query_result() {
    let mut h = H::new();
    let s = h.call(MyCall::SendQuery, DB, DB, Some("SELECT id FROM orders"));
    h.ret(ret(MyCall::SendQuery, DB, DB, 0), |_| {});
    // my_bool: only al counts.
    h.ret(ret(MyCall::ReadQueryResult, DB, DB, 0x7f00), |r| {
        r.field_count = 1
    });
    let e = h.ret(ret(MyCall::StoreResult, DB, DB, 0xdead0), |r| r.rows = 5);
    h.call(MyCall::SendQuery, DB, DB, Some("SELECT 1"));
    let f = h.ret(ret(MyCall::SendQuery, DB, DB, 1), |r| r.errno = 2006);
    let out = h.take();
    assert_eq!(names(&out), ["SELECT orders", "SELECT"]);
    assert_eq!(
        (out[0].start_ns, out[0].end_ns, out[0].rows()),
        (s, e, Some(5))
    );
    assert_eq!(
        get(&out[0], "code.function.name").as_deref(),
        Some("mysql_send_query")
    );
    assert_eq!(
        (
            out[1].end_ns,
            out[1].error.as_deref(),
            get(&out[1], "db.mysql.sqlstate")
        ),
        (f, Some("2006"), None)
    );
}

#[test]
fn prepare_executions_and_close() {
    let mut h = H::new();
    let s = h.call(
        MyCall::StmtPrepare,
        ST,
        DB,
        Some("SELECT a FROM t WHERE id = ?"),
    );
    let e = h.ret(ret(MyCall::StmtPrepare, ST, DB, 0), |r| r.stmt_id = 1);
    // Buffered: mysql_stmt_store_result's rows.
    let x1 = h.call(MyCall::StmtExecute, ST, DB, None);
    h.ret(ret(MyCall::StmtExecute, ST, DB, 0), |r| r.field_count = 1);
    let y1 = h.ret(ret(MyCall::StmtStoreResult, ST, DB, 0), |r| r.rows = 1);
    // Read row by row: it ends at its return, once the close shows it is over.
    let x2 = h.call(MyCall::StmtExecute, ST, DB, None);
    let y2 = h.ret(ret(MyCall::StmtExecute, ST, DB, 0), |r| r.field_count = 1);
    assert_eq!(h.r.in_flight(), 1);
    h.call(MyCall::StmtClose, ST, DB, None);
    assert_eq!(h.r.in_flight(), 0);
    // The handle's address is reused for another statement.
    h.call(
        MyCall::StmtPrepare,
        ST,
        DB,
        Some("UPDATE t SET a = ? WHERE id = ?"),
    );
    h.ret(ret(MyCall::StmtPrepare, ST, DB, 0), |_| {});
    h.call(MyCall::StmtExecute, ST, DB, None);
    h.ret(ret(MyCall::StmtExecute, ST, DB, 0), |r| {
        r.affected_rows = Some(2)
    });
    h.call(MyCall::StmtPrepare, ST2, DB, Some("SELEC oops"));
    h.ret(ret(MyCall::StmtPrepare, ST2, DB, 1), |r| {
        (r.errno, r.sqlstate) = (1064, "42000".into())
    });
    let out = h.take();
    assert_eq!(
        names(&out),
        [
            "PREPARE SELECT t",
            "SELECT t",
            "SELECT t",
            "PREPARE UPDATE t",
            "UPDATE t",
            "PREPARE SELEC"
        ]
    );
    assert_eq!(
        (out[0].start_ns, out[0].end_ns, out[0].operation()),
        (s, e, Some("PREPARE"))
    );
    assert_eq!(
        get(&out[0], "code.function.name").as_deref(),
        Some("mysql_stmt_prepare")
    );
    assert_eq!(
        get(&out[0], "db.query.text").as_deref(),
        Some("SELECT a FROM t WHERE id = ?")
    );
    assert_eq!(
        (
            out[1].start_ns,
            out[1].end_ns,
            out[1].rows(),
            out[1].operation()
        ),
        (x1, y1, Some(1), Some("SELECT"))
    );
    assert_eq!(
        get(&out[1], "code.function.name").as_deref(),
        Some("mysql_stmt_execute")
    );
    assert_eq!(
        get(&out[1], "db.query.text").as_deref(),
        Some("SELECT a FROM t WHERE id = ?")
    );
    assert_eq!(
        (
            out[2].start_ns,
            out[2].end_ns,
            out[2].rows(),
            out[2].error.as_deref()
        ),
        (x2, y2, None, None)
    );
    assert_eq!((out[4].affected_rows(), out[4].rows()), (Some(2), None));
    assert_eq!(
        (
            out[5].error.as_deref(),
            get(&out[5], "db.mysql.sqlstate").as_deref()
        ),
        (Some("1064"), Some("42000"))
    );
    assert!(out
        .iter()
        .all(|s| get(s, "db.system.name").as_deref() == Some("mariadb")));
}

#[test]
fn execution_of_a_statement_prepared_before_attach() {
    let mut h = H::new();
    h.call(MyCall::StmtExecute, ST, DB, None);
    h.ret(ret(MyCall::StmtExecute, ST, DB, 0), |r| r.field_count = 2);
    h.ret(ret(MyCall::StmtStoreResult, ST, DB, 0), |r| r.rows = 3);
    let out = h.take();
    assert_eq!(names(&out), ["EXECUTE"]);
    assert_eq!(out[0].operation(), Some("EXECUTE"));
    assert_eq!(
        get(&out[0], "dbtel.statement.prepared_before_attach").as_deref(),
        Some("true")
    );
    assert_eq!(
        (get(&out[0], "db.query.text"), out[0].rows()),
        (None, Some(3))
    );
}

#[test]
fn close_mid_transaction() {
    let mut h = H::new();
    h.call(MyCall::StmtPrepare, ST, DB, Some("SELECT 1"));
    h.ret(ret(MyCall::StmtPrepare, ST, DB, 0), |_| {});
    h.status = TX;
    h.exec("BEGIN", 0);
    h.call(MyCall::RealQuery, DB, DB, Some("SELECT SLEEP(10)"));
    let closed = h.call(MyCall::Close, DB, DB, None);
    let out = h.take();
    assert_eq!(names(&out)[1..], ["BEGIN", "SELECT", "transaction"]);
    assert_eq!(
        (out[2].end_ns, out[2].error_type()),
        (closed, Some("dbtel.connection_closed"))
    );
    assert_eq!(
        out[2].error.as_deref(),
        Some("query did not complete: connection closed")
    );
    assert_eq!(
        (out[3].end_ns, out[3].error.as_deref()),
        (closed, Some("dbtel.incomplete"))
    );
    assert!(out[3]
        .attributes
        .contains(&KeyValue::new("db.transaction.outcome", "incomplete")));
    assert_eq!(
        (h.r.in_flight(), h.r.statements_held(PID)),
        (0, 0),
        "its statements are forgotten"
    );
}

#[test]
fn process_exit_ends_what_is_in_flight() {
    let mut h = H::new();
    h.status = TX;
    h.exec("BEGIN", 0);
    let s = h.call(MyCall::RealQuery, DB, DB, Some("UPDATE t SET a = 1"));
    // Another connection: an execution whose rows are being read.
    h.call(MyCall::StmtPrepare, ST, DB2, Some("SELECT a FROM t"));
    h.ret(ret(MyCall::StmtPrepare, ST, DB2, 0), |_| {});
    h.call(MyCall::StmtExecute, ST, DB2, None);
    let answered = h.ret(ret(MyCall::StmtExecute, ST, DB2, 0), |r| r.field_count = 1);
    assert_eq!(h.r.in_flight(), 2);
    let mut out = h.take();
    h.r.process_exited(PID + 1, 9_000_000, &mut out);
    assert_eq!(
        names(&out),
        ["BEGIN", "PREPARE SELECT t"],
        "another process: nothing"
    );
    h.r.process_exited(PID, 9_000_000, &mut out);
    let mut cut: Vec<_> = out[2..]
        .iter()
        .map(|s| (s.name.as_str(), s.start_ns, s.end_ns, s.error.as_deref()))
        .collect();
    cut.sort();
    assert_eq!(
        cut,
        [
            ("SELECT t", answered - 1_000, answered, None),
            (
                "UPDATE t",
                s,
                9_000_000,
                Some("query did not complete: process exited")
            ),
            (
                "transaction",
                out[0].start_ns,
                9_000_000,
                Some("dbtel.incomplete")
            ),
        ]
    );
    assert_eq!((h.r.in_flight(), h.r.statements_held(PID)), (0, 0));
}

#[test]
fn system_endpoint_and_connection_id() {
    let mut h = H::new();
    h.conn(DB2, "", "10.0.0.5", "", 3307, "8.0.36", 9);
    h.exec("SELECT 1", 0);
    h.call(MyCall::RealQuery, DB2, DB2, Some("DO 1"));
    h.ret(ret(MyCall::RealQuery, DB2, DB2, 0), |r| r.thread_id = 9);
    // No Conn record: the returns tell the connection id.
    h.call(MyCall::RealQuery, 0x7000, 0x7000, Some("DO 2"));
    h.ret(ret(MyCall::RealQuery, 0x7000, 0x7000, 0), |r| {
        r.thread_id = 77
    });
    let out = h.take();
    assert_eq!(get(&out[0], "db.system.name").as_deref(), Some("mariadb"));
    assert_eq!(get(&out[0], "network.transport").as_deref(), Some("unix"));
    let all = out[1].exported_attributes();
    let tcp: Vec<_> = all[all.len() - 4..].to_vec();
    assert_eq!(
        tcp,
        [
            KeyValue::new("server.address", "10.0.0.5"),
            KeyValue::new("server.port", 3307i64),
            KeyValue::new("network.transport", "tcp"),
            KeyValue::new("db.mysql.connection_id", 9i64),
        ]
    );
    assert_eq!(
        (
            get(&out[1], "db.system.name").as_deref(),
            get(&out[1], "db.namespace")
        ),
        (Some("mysql"), None)
    );
    assert_eq!(
        get(&out[2], "db.mysql.connection_id").as_deref(),
        Some("77")
    );
    assert_eq!(
        (
            get(&out[2], "db.system.name").as_deref(),
            get(&out[2], "server.address")
        ),
        (Some("mysql"), None)
    );
}

#[test]
fn a_new_database_applies_to_later_spans_only() {
    let mut h = H::new();
    h.call(MyCall::StmtPrepare, ST, DB, Some("SELECT a FROM t"));
    h.ret(ret(MyCall::StmtPrepare, ST, DB, 0), |_| {});
    h.call(MyCall::StmtExecute, ST, DB, None);
    h.ret(ret(MyCall::StmtExecute, ST, DB, 0), |r| r.field_count = 1);
    h.exec("USE other", 0); // the kernel sends the new database before the next call
    h.conn(DB, "other", "localhost", SOCK, 0, MARIADB, 42);
    h.exec("SELECT 2", 0);
    let out = h.take();
    assert_eq!(
        names(&out),
        ["PREPARE SELECT t", "SELECT t", "USE", "SELECT"]
    );
    let dbs: Vec<_> = out
        .iter()
        .map(|s| get(s, "db.namespace").unwrap())
        .collect();
    assert_eq!(dbs, ["shop", "shop", "shop", "other"]);
}

#[test]
fn prepared_statements_stay_bounded() {
    let mut h = H::new();
    let mut out = Vec::new();
    for i in 0..100_000u64 {
        let at = Origin {
            pid: PID,
            tid: TID,
            ts_ns: 2_000_000 + 2 * i,
            conn: 0x10_0000 + 0x100 * i,
        };
        h.r.on_record(
            Record::Call {
                at,
                call: MyCall::StmtPrepare,
                mysql: DB,
                text: Some(format!("SELECT c{i} FROM t")),
                truncated: false,
            },
            &mut out,
        );
        let r = Returned {
            at: Origin {
                ts_ns: at.ts_ns + 1,
                ..at
            },
            ..ret(MyCall::StmtPrepare, at.conn, DB, 0)
        };
        h.r.on_record(Record::Return(r), &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
    }
    assert_eq!(h.r.statements_held(PID), STATEMENTS_PER_PROCESS);
    // The newest are kept, the oldest forgotten.
    for (handle, known) in [(0x10_0000 + 0x100 * 99_999, true), (0x10_0000, false)] {
        let at = Origin {
            pid: PID,
            tid: TID,
            ts_ns: 3_000_000,
            conn: handle,
        };
        h.r.on_record(
            Record::Call {
                at,
                call: MyCall::StmtExecute,
                mysql: DB,
                text: None,
                truncated: false,
            },
            &mut out,
        );
        h.r.on_record(
            Record::Return(ret(MyCall::StmtExecute, handle, DB, 0)),
            &mut out,
        );
        let s = out.pop().unwrap();
        assert_eq!(
            get(&s, "dbtel.statement.prepared_before_attach").is_none(),
            known,
            "{}",
            s.name
        );
    }
}

#[path = "reconstruct_txn_tests.rs"]
mod txn;

/// A program leaking connections (never mysql_close): the least recently
/// used idle ones are forgotten, their transactions ended incomplete.
#[test]
fn connections_stay_bounded() {
    let mut h = H::new();
    let busy = h.call(MyCall::RealQuery, DB, DB, Some("SELECT SLEEP(100)")); // the oldest, in flight
    h.status = TX;
    let handle = |i: u64| 0x10_0000 + 0x100 * i;
    let n = CONNECTIONS_PER_PROCESS as u64 + 1_000;
    for i in 0..n {
        let begin = h.call(MyCall::RealQuery, handle(i), handle(i), Some("BEGIN"));
        h.ret(ret(MyCall::RealQuery, handle(i), handle(i), 0), |_| {});
        let out = h.take();
        if i + 1 < CONNECTIONS_PER_PROCESS as u64 {
            assert_eq!(names(&out), ["BEGIN"], "{i}");
            continue;
        }
        // The oldest idle one goes at the first record of a new connection.
        let gone = i + 1 - CONNECTIONS_PER_PROCESS as u64;
        assert_eq!(names(&out), ["transaction", "BEGIN"], "{i}");
        assert_eq!(
            (out[0].end_ns, out[0].error.as_deref()),
            (begin, Some("dbtel.incomplete"))
        );
        assert!(out[0]
            .attributes
            .contains(&KeyValue::new("db.transaction.outcome", "incomplete")));
        assert_eq!(
            out[0].start_ns,
            busy + 1_000 + 2_000 * gone,
            "its BEGIN's start"
        );
        assert_eq!(h.r.connections_held(PID), CONNECTIONS_PER_PROCESS);
    }
    assert!(h.r.txns.connections() <= CONNECTIONS_PER_PROCESS);
    assert!(
        h.r.conns.held(PID).1 <= 2 * CONNECTIONS_PER_PROCESS,
        "order entries"
    );
    assert_eq!(h.r.in_flight(), 1, "the busy one is kept");
    // The newest keep their transactions; a forgotten one is a stranger now.
    h.status = AC;
    for (i, kept) in [(n - 1, true), (0, false)] {
        h.call(MyCall::RealQuery, handle(i), handle(i), Some("COMMIT"));
        h.ret(ret(MyCall::RealQuery, handle(i), handle(i), 0), |_| {});
        let out = h.take();
        let want: &[&str] = if kept {
            &["COMMIT", "transaction"]
        } else {
            &["transaction", "COMMIT"]
        };
        assert_eq!(names(&out), want, "{i}");
        if kept {
            assert!(out[1]
                .attributes
                .contains(&KeyValue::new("db.transaction.outcome", "committed")));
        } else {
            // Coming back, it takes the place of the oldest idle one.
            let oldest = n - CONNECTIONS_PER_PROCESS as u64 + 1;
            assert!(out[0]
                .attributes
                .contains(&KeyValue::new("db.transaction.outcome", "incomplete")));
            assert_eq!(out[0].start_ns, busy + 1_000 + 2_000 * oldest);
            assert_eq!(out[1].ids.parent_span_id, 0);
        }
    }
    h.ret(ret(MyCall::RealQuery, DB, DB, 0), |_| {});
    let out = h.take();
    assert_eq!(
        (names(&out), out[0].start_ns, out[0].error.as_deref()),
        (vec!["SELECT"], busy, None)
    );
}
