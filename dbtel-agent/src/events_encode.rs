//! Builds the bytes the kernel would send; used by tests and the replay bench.

use super::*;

pub fn header(kind: Kind, func: u32, at: &Origin) -> Header {
    Header {
        kind: kind as u16,
        engine: kind.engine() as u16,
        func,
        pid: at.pid,
        tid: at.tid,
        ts_ns: at.ts_ns,
        conn: at.conn,
    }
}

pub fn bytes_of<T>(v: &T) -> &[u8] {
    // SAFETY: repr(C) plain data.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

pub fn fill(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

pub fn call(at: Origin, func: u32, text: Option<&str>, name: Option<&str>) -> Vec<u8> {
    let mut out = vec![0u8; QueryEvent::TEXT_OFFSET];
    out[..32].copy_from_slice(bytes_of(&header(Kind::Query, func, &at)));
    let text = text.unwrap_or("");
    out[32..36].copy_from_slice(&(text.len() as u32).to_ne_bytes());
    if let Some(n) = name {
        out[36..40].copy_from_slice(&(n.len() as u32).to_ne_bytes());
        fill(&mut out[48..48 + dbtel_common::NAME_CAP], n);
    }
    out.extend_from_slice(text.as_bytes());
    out
}

pub fn result(
    at: Origin,
    result: u64,
    status: i32,
    ntuples: i32,
    cmd: &str,
    sqlstate: &str,
) -> Vec<u8> {
    result_from(
        dbtel_common::func::PQGET_RESULT,
        at,
        result,
        status,
        ntuples,
        cmd,
        sqlstate,
    )
}

/// A result seen by the probe inside PQgetResult (NULLs are not reported).
pub fn result_point(at: Origin, status: i32, ntuples: i32, cmd: &str, sqlstate: &str) -> Vec<u8> {
    result_from(
        dbtel_common::func::PQGET_RESULT_POINT,
        at,
        0xbeef,
        status,
        ntuples,
        cmd,
        sqlstate,
    )
}

fn result_from(
    func: u32,
    at: Origin,
    result: u64,
    status: i32,
    ntuples: i32,
    cmd: &str,
    sqlstate: &str,
) -> Vec<u8> {
    let mut r = ResultEvent {
        hdr: header(Kind::Result, func, &at),
        result,
        status,
        ntuples,
        cmd_status: [0; 64],
        sqlstate: [0; 8],
    };
    fill(&mut r.cmd_status, cmd);
    fill(&mut r.sqlstate, sqlstate);
    bytes_of(&r).to_vec()
}

pub fn conn(at: Origin, backend_pid: i32, db: &str, host: &str, port: &str) -> Vec<u8> {
    let mut c = ConnEvent {
        hdr: header(Kind::Conn, 0, &at),
        backend_pid,
        _pad: 0,
        db: [0; dbtel_common::DB_CAP],
        host: [0; dbtel_common::HOST_CAP],
        port: [0; dbtel_common::PORT_CAP],
    };
    fill(&mut c.db, db);
    fill(&mut c.host, host);
    fill(&mut c.port, port);
    bytes_of(&c).to_vec()
}

pub fn finish(at: Origin) -> Vec<u8> {
    bytes_of(&header(Kind::Finish, dbtel_common::func::PQFINISH, &at)).to_vec()
}

/// A pipeline-mode call; `ret`: its result, for calls probed at return.
pub fn pipeline(at: Origin, func: u32, ret: Option<i32>) -> Vec<u8> {
    let p = PipelineEvent {
        hdr: header(Kind::Pipeline, func, &at),
        ret: ret.unwrap_or(0),
        returned: ret.is_some() as u32,
    };
    bytes_of(&p).to_vec()
}

pub fn server(at: Origin, site: u32, args: [u64; USDT_MAX_ARGS], text: Option<&str>) -> Vec<u8> {
    server_of(Kind::Server, at, site, args, text)
}

/// A server site's record of either engine ([`Kind::Server`] or [`Kind::MyServer`]).
pub fn server_of(
    kind: Kind,
    at: Origin,
    site: u32,
    args: [u64; USDT_MAX_ARGS],
    text: Option<&str>,
) -> Vec<u8> {
    let mut b = bytes_of(&header(kind, site, &at)).to_vec();
    // No completion held (see dbtel_common::Held).
    for a in args.into_iter().chain([0; 3]) {
        b.extend_from_slice(&a.to_ne_bytes());
    }
    let t = text.unwrap_or("");
    b.extend_from_slice(&(t.len() as u32).to_ne_bytes());
    let flags = if text.is_some() {
        qflags::TEXT_PRESENT
    } else {
        0
    };
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(t.as_bytes());
    b
}

pub fn server_exit(at: Origin) -> Vec<u8> {
    bytes_of(&header(Kind::ServerExit, 0, &at)).to_vec()
}

pub fn client_exit(at: Origin) -> Vec<u8> {
    bytes_of(&header(Kind::ClientExit, 0, &at)).to_vec()
}

pub fn loaded(at: Origin, held: bool) -> Vec<u8> {
    let func = if held { dbtel_common::loader::HELD } else { 0 };
    bytes_of(&header(Kind::Loaded, func, &at)).to_vec()
}

/// As the exec tracepoint sends it: the used part of the path only.
pub fn exec(at: Origin, cgroup_id: u64, path: &str) -> Vec<u8> {
    let mut b = bytes_of(&header(Kind::Exec, 0, &at)).to_vec();
    b.extend_from_slice(&cgroup_id.to_ne_bytes());
    b.extend_from_slice(&(path.len() as u32).to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(path.as_bytes());
    b
}
