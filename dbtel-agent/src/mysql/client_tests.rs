//! The engine's records of both halves, client library and server, as the
//! probes send them: server spans become children of the client's query in
//! flight on the connection the server knows by that id.

use dbtel_common::{mysite, Kind, MyCall};

use super::*;
use crate::{
    events::{encode as ev, Origin},
    mysql::records::{encode, ConnDetails, Returned, AUTOCOMMIT},
    pipeline::dbspan::Kind as SpanKind,
};

const APP: u32 = 100;
const SRV: u32 = 900;
const DB: u64 = 0x1000;

fn app(ts_ns: u64) -> Origin {
    Origin {
        pid: APP,
        tid: APP + 1,
        ts_ns,
        conn: DB,
    }
}

fn conn(e: &mut Client, ts_ns: u64, thread_id: u64, out: &mut Vec<DbSpan>) {
    let c = ConnDetails {
        at: app(ts_ns),
        thread_id,
        db: "shop".into(),
        host: "localhost".into(),
        socket: "/run/mysqld/mysqld.sock".into(),
        port: 0,
        version: "10.11.19-MariaDB-0+deb12u1".into(),
    };
    assert_eq!(e.on_record(&encode::conn(&c), out), Ok(APP));
}

fn returned(
    e: &mut Client,
    ts_ns: u64,
    call: MyCall,
    ret: u64,
    server_status: u32,
    edit: impl FnOnce(&mut Returned),
    out: &mut Vec<DbSpan>,
) {
    let mut r = Returned {
        at: app(ts_ns),
        call,
        mysql: DB,
        ret,
        thread_id: 42,
        errno: 0,
        sqlstate: String::new(),
        affected_rows: None,
        rows: 0,
        field_count: 0,
        server_status,
        stmt_id: 0,
    };
    edit(&mut r);
    assert_eq!(e.on_record(&encode::returned(&r), out), Ok(APP));
}

/// The server's end of a statement on connection `cid`.
#[allow(clippy::too_many_arguments)]
fn server_end(
    e: &mut Client,
    ts_ns: u64,
    cid: u64,
    text: &str,
    start_us: u64,
    server_status: u64,
    sent: u64,
    out: &mut Vec<DbSpan>,
) {
    let at = Origin {
        pid: SRV,
        tid: SRV + 7,
        ts_ns,
        conn: u64::from(SRV),
    };
    let args = [
        cid,
        0x7f00,
        text.len() as u64,
        0,
        2,
        server_status,
        start_us,
        3,
        0,
        sent,
    ];
    let bytes = ev::server_of(Kind::MyServer, at, mysite::STATEMENT_DONE, args, Some(text));
    assert_eq!(e.on_record(&bytes, out), Ok(SRV));
}

#[test]
fn the_server_statement_is_the_child_of_the_client_query_in_flight_on_its_connection() {
    let mut e = Client::with_seed(1, Text::Obfuscated);
    let mut out = vec![];
    conn(&mut e, 1_000_000, 42, &mut out);
    let call = encode::call(
        app(2_000_000),
        MyCall::RealQuery,
        DB,
        Some("SELECT a FROM t"),
    );
    assert_eq!(e.on_record(&call, &mut out), Ok(APP));
    let client = e.recon.in_flight_on(42).expect("in flight");
    assert_eq!(e.recon.in_flight_on(43), None);
    server_end(
        &mut e,
        2_300_000,
        42,
        "SELECT a FROM t",
        2_100,
        0x2,
        3,
        &mut out,
    );
    returned(
        &mut e,
        2_400_000,
        MyCall::RealQuery,
        0,
        AUTOCOMMIT,
        |r| r.field_count = 1,
        &mut out,
    );
    returned(
        &mut e,
        2_500_000,
        MyCall::StoreResult,
        0xbeef0,
        AUTOCOMMIT,
        |r| (r.rows, r.field_count) = (3, 1),
        &mut out,
    );
    assert_eq!(out.len(), 2);
    let (s, c) = (&out[0], &out[1]);
    assert_eq!(
        (
            s.kind,
            s.name.as_str(),
            s.pid,
            s.start_ns,
            s.end_ns,
            s.rows()
        ),
        (
            SpanKind::Server,
            "SELECT t",
            SRV,
            2_100_000,
            2_300_000,
            Some(3)
        )
    );
    assert_eq!((c.kind, c.ids), (SpanKind::Client, client));
    assert_eq!(
        (s.ids.trace_id, s.ids.parent_span_id),
        (c.ids.trace_id, c.ids.span_id)
    );
    assert_eq!(e.recon.in_flight_on(42), None, "nothing in flight any more");
}

/// The server's end of a COM_STMT_PREPARE on connection `cid` (its reply
/// already sent: the Diagnostics_area disabled).
fn server_prepared(
    e: &mut Client,
    ts_ns: u64,
    cid: u64,
    text: &str,
    start_us: u64,
    out: &mut Vec<DbSpan>,
) {
    let at = Origin {
        pid: SRV,
        tid: SRV + 7,
        ts_ns,
        conn: u64::from(SRV),
    };
    let args = [
        cid,
        0x7f00,
        text.len() as u64,
        0,
        6,
        0x2,
        start_us,
        22,
        0,
        0,
    ];
    let bytes = ev::server_of(Kind::MyServer, at, mysite::STATEMENT_DONE, args, Some(text));
    assert_eq!(e.on_record(&bytes, out), Ok(SRV));
}

#[test]
fn a_server_prepare_that_ends_after_the_clients_next_call_began_is_still_the_child_of_its_prepare()
{
    let mut e = Client::with_seed(5, Text::Obfuscated);
    let mut out = vec![];
    conn(&mut e, 1_000_000, 42, &mut out);
    let (s1, s2, s3) = (0x5001, 0x5002, 0x5003);
    let stmt = |ts, stmt| Origin {
        conn: stmt,
        ..app(ts)
    };
    let prepare = |e: &mut Client, ts, s, text, out: &mut Vec<DbSpan>| {
        e.on_record(
            &encode::call(stmt(ts, s), MyCall::StmtPrepare, DB, Some(text)),
            out,
        )
        .unwrap();
    };
    let prepared = |e: &mut Client, ts, s, out: &mut Vec<DbSpan>| {
        returned(
            e,
            ts,
            MyCall::StmtPrepare,
            0,
            AUTOCOMMIT,
            |r| r.at.conn = s,
            out,
        )
    };
    // The server replied to the first prepare before its end_statement: the
    // client returned and sent its next prepare first.
    prepare(
        &mut e,
        2_000_000,
        s1,
        "SELECT a FROM t WHERE id = ?",
        &mut out,
    );
    prepared(&mut e, 2_200_000, s1, &mut out);
    prepare(&mut e, 2_300_000, s2, "BEGIN", &mut out);
    server_prepared(
        &mut e,
        2_250_000,
        42,
        "SELECT a FROM t WHERE id = ?",
        2_100,
        &mut out,
    );
    // The second one's end before its reply reached the client.
    server_prepared(&mut e, 2_400_000, 42, "BEGIN", 2_350, &mut out);
    prepared(&mut e, 2_500_000, s2, &mut out);
    // The same text again, ended after the client's return with nothing in flight.
    prepare(&mut e, 3_000_000, s3, "BEGIN", &mut out);
    prepared(&mut e, 3_200_000, s3, &mut out);
    server_prepared(&mut e, 3_300_000, 42, "BEGIN", 3_100, &mut out);
    let client: Vec<&DbSpan> = out.iter().filter(|s| s.kind == SpanKind::Client).collect();
    let server: Vec<&DbSpan> = out.iter().filter(|s| s.kind == SpanKind::Server).collect();
    assert_eq!((client.len(), server.len()), (3, 3));
    for (c, s) in client.iter().zip(&server) {
        assert_eq!(
            (s.name.as_str(), s.ids.trace_id, s.ids.parent_span_id),
            (c.name.as_str(), c.ids.trace_id, c.ids.span_id)
        );
    }
    // Answered prepares are let go: a stray end finds no parent.
    server_prepared(&mut e, 3_400_000, 42, "BEGIN", 3_350, &mut out);
    assert_eq!(out.last().unwrap().ids.parent_span_id, 0);
}

#[test]
fn with_autocommit_off_a_statement_that_opened_nothing_keeps_its_ids() {
    let mut e = Client::with_seed(2, Text::Obfuscated);
    let mut out = vec![];
    conn(&mut e, 1_000_000, 42, &mut out);
    let set = encode::call(
        app(1_100_000),
        MyCall::RealQuery,
        DB,
        Some("SET autocommit=0"),
    );
    e.on_record(&set, &mut out).unwrap();
    returned(&mut e, 1_200_000, MyCall::RealQuery, 0, 0, |_| {}, &mut out);
    out.clear();
    // The client opens a transaction tentatively; the server says none came of it.
    let call = encode::call(app(2_000_000), MyCall::RealQuery, DB, Some("SELECT 1"));
    e.on_record(&call, &mut out).unwrap();
    server_end(&mut e, 2_300_000, 42, "SELECT 1", 2_100, 0, 1, &mut out);
    returned(
        &mut e,
        2_400_000,
        MyCall::RealQuery,
        0,
        0,
        |r| r.field_count = 1,
        &mut out,
    );
    returned(
        &mut e,
        2_500_000,
        MyCall::StoreResult,
        0xbeef0,
        0,
        |r| (r.rows, r.field_count) = (1, 1),
        &mut out,
    );
    let (s, c) = (&out[0], &out[1]);
    assert_eq!(c.ids.parent_span_id, 0, "a root: no transaction");
    assert_eq!(
        (s.ids.trace_id, s.ids.parent_span_id),
        (c.ids.trace_id, c.ids.span_id),
        "still its server span's parent"
    );
}

#[test]
fn the_connection_id_index_follows_reconnects_and_closes() {
    let mut e = Client::with_seed(3, Text::Obfuscated);
    let mut out = vec![];
    conn(&mut e, 1_000_000, 42, &mut out);
    let call = encode::call(app(2_000_000), MyCall::RealQuery, DB, Some("SELECT 1"));
    e.on_record(&call, &mut out).unwrap();
    // The library reconnected: the return says the new id.
    returned(
        &mut e,
        2_100_000,
        MyCall::RealQuery,
        0,
        AUTOCOMMIT,
        |r| (r.thread_id, r.field_count) = (57, 1),
        &mut out,
    );
    assert_eq!(
        (e.recon.in_flight_on(42), e.recon.in_flight_on(57).is_some()),
        (None, true)
    );
    assert_eq!(e.recon.connection_ids_held(), 1);
    let close = encode::call(app(3_000_000), MyCall::Close, DB, None);
    e.on_record(&close, &mut out).unwrap();
    assert_eq!(
        (e.recon.in_flight_on(57), e.recon.connection_ids_held()),
        (None, 0)
    );
}

#[test]
fn forgetting_the_server_ends_its_open_spans() {
    let mut e = Client::with_seed(4, Text::Obfuscated);
    let mut out = vec![];
    let at = Origin {
        pid: SRV,
        tid: SRV + 7,
        ts_ns: 1_000_000,
        conn: u64::from(SRV),
    };
    let begin = ev::server_of(
        Kind::MyServer,
        at,
        mysite::WAIT_BEGIN,
        [0, 3, 0, 0, 0, 0, 0, 0, 0, 0],
        None,
    );
    e.on_record(&begin, &mut out).unwrap();
    assert_eq!(e.in_flight(), 1);
    e.forget(SRV, 2_000_000, &mut out);
    assert_eq!(
        (out.len(), out[0].name.as_str(), out[0].end_ns),
        (1, "lock wait row", 2_000_000)
    );
    assert_eq!(e.in_flight(), 0);
}
