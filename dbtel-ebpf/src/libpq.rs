//! libpq: query calls, results (inside PQgetResult or at its return), pipeline
//! mode, PQfinish; connection details read once per connection.

use super::*;
use core::intrinsics::AtomicOrdering;

#[map]
static SCRATCH: PerCpuArray<QueryEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static LAYOUTS: Array<LibpqLayout> = Array::with_max_entries(MAX_LAYOUTS, 0);
/// (tgid, PGconn*) seen already: connection details are sent once per connection.
#[map]
static SEEN_CONNS: LruHashMap<[u64; 2], u8> = LruHashMap::with_max_entries(16384, 0);
/// The connection each CPU last found in SEEN_CONNS: [tgid, PGconn*, FINISHES
/// then]. A query on the same connection skips the LRU lookup (a hash of 16
/// bytes and a bucket walk, per query); any PQfinish
/// anywhere invalidates every CPU's entry, since a new connection may reuse
/// the address.
#[map]
static LAST_CONN: PerCpuArray<[u64; 3]> = PerCpuArray::with_max_entries(1, 0);
/// PQfinish calls so far.
#[map]
static FINISHES: Array<u64> = Array::with_max_entries(1, 0);
/// PQgetResult entry → return: pid_tgid → PGconn* (bcc dbslower's pattern).
#[map]
static GETRESULT_ARGS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);
#[inline(always)]
fn layout(idx: u32) -> Option<&'static LibpqLayout> {
    LAYOUTS.get(idx).filter(|l| l.valid != 0)
}

/// Entry of every query-issuing call (PQexec, PQsendQuery, PQprepare, ...).
/// The cookie says which argument holds the text and which the statement name.
#[uprobe]
pub fn pq_query(ctx: ProbeContext) -> u32 {
    if !client_selected() {
        return 0;
    }
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let conn: u64 = ctx.arg(0).unwrap_or(0);
    note_conn(conn, cookie::layout(c));
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let ev = unsafe { &mut *ev };
    ev.hdr = header(Kind::Query, cookie::func(c), conn);
    ev.flags = 0;
    ev.name_len = 0;
    ev.text_len = 0;
    // Read arguments at constant offsets: the verifier refuses a computed
    // offset into the register context.
    let args: [u64; 3] = [0, ctx.arg(1).unwrap_or(0), ctx.arg(2).unwrap_or(0)];
    let arg = |n: u32| match n {
        2 => args[1],
        3 => args[2],
        _ => 0,
    };
    let name_arg = cookie::name_arg(c);
    if name_arg != 0 {
        let p = arg(name_arg);
        if let Ok(s) = unsafe { bpf_probe_read_user_str_bytes(p as *const u8, &mut ev.name) } {
            ev.name_len = s.len() as u32;
        }
    }
    let text_arg = cookie::text_arg(c);
    if text_arg != 0 {
        let (n, flags) = crate::text::copy(&mut ev.text, arg(text_arg), None);
        ev.text_len = n;
        ev.flags |= flags;
    }
    let len = QueryEvent::TEXT_OFFSET + ev.text_len as usize;
    let bytes: &[u8; core::mem::size_of::<QueryEvent>()] =
        unsafe { &*(ev as *const QueryEvent).cast() };
    if len <= bytes.len()
        && EVENTS
            .output::<[u8]>(&bytes[..len], wakeup_flags())
            .is_err()
    {
        bump(counter::RINGBUF_FULL);
    }
    0
}

/// Sends the connection's database, host, port and backend PID the first time
/// this process uses the connection object.
#[inline(always)]
fn note_conn(conn: u64, layout_idx: u32) {
    if conn == 0 {
        return;
    }
    let key = [bpf_get_current_pid_tgid() >> 32, conn];
    let finishes = FINISHES
        .get_ptr(0)
        .map_or(0, |p| unsafe { core::ptr::read_volatile(p) });
    let last = LAST_CONN.get_ptr_mut(0);
    if let Some(last) = last {
        let last = unsafe { &mut *last };
        if *last == [key[0], key[1], finishes] {
            return;
        }
        *last = [key[0], key[1], finishes];
    }
    if SEEN_CONNS.get_ptr(key).is_some() {
        return;
    }
    let _ = SEEN_CONNS.insert(key, 1, 0);
    let Some(l) = layout(layout_idx).filter(|l| l.conn_valid != 0) else {
        return;
    };
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.hdr = header(Kind::Conn, 0, conn);
    ev.backend_pid = read::<i32>(conn + l.conn_be_pid as u64).unwrap_or(0);
    ev._pad = 0;
    ev.db[0] = 0;
    ev.host[0] = 0;
    ev.port[0] = 0;
    if let Some(p) = read::<u64>(conn + l.conn_db as u64) {
        let _ = unsafe { bpf_probe_read_user_str_bytes(p as *const u8, &mut ev.db) };
    }
    if let (Some(hosts), Some(which)) = (
        read::<u64>(conn + l.conn_connhost as u64),
        read::<i32>(conn + l.conn_whichhost as u64),
    ) {
        if hosts != 0 && which >= 0 && which < 64 {
            let h = hosts + (which as u64) * l.connhost_size as u64;
            if let Some(p) = read::<u64>(h + l.connhost_host as u64) {
                let _ = unsafe { bpf_probe_read_user_str_bytes(p as *const u8, &mut ev.host) };
            }
            if let Some(p) = read::<u64>(h + l.connhost_port as u64) {
                let _ = unsafe { bpf_probe_read_user_str_bytes(p as *const u8, &mut ev.port) };
            }
        }
    }
    entry.submit(wakeup_flags());
}

#[uprobe]
pub fn pq_getresult(ctx: ProbeContext) -> u32 {
    if !client_selected() {
        return 0;
    }
    let conn: u64 = ctx.arg(0).unwrap_or(0);
    let _ = GETRESULT_ARGS.insert(bpf_get_current_pid_tgid(), conn, 0);
    0
}

/// PGRES_FATAL_ERROR: only such results carry a SQLSTATE worth reading.
const PGRES_FATAL_ERROR: i32 = 7;

#[uretprobe]
pub fn pq_getresult_ret(ctx: RetProbeContext) -> u32 {
    if !client_selected() {
        return 0;
    }
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(conn) = (unsafe { GETRESULT_ARGS.get(pid_tgid) }).copied() else {
        bump(counter::RESULT_UNMATCHED);
        return 0;
    };
    let _ = GETRESULT_ARGS.remove(pid_tgid);
    send_result(conn, ctx.ret(), c);
    0
}

/// Inside PQgetResult, where a result about to be returned sits in a register
/// (see the agent's resultpoint module): one trap per result, none for the
/// NULL that ends a query. The cookie names the registers.
#[uprobe]
pub fn pq_result(ctx: ProbeContext) -> u32 {
    if !client_selected() {
        return 0;
    }
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let regs = ctx.as_ptr() as u64;
    let res = reg(regs, cookie::res_reg(c) as u16);
    if res != 0 {
        send_result(reg(regs, cookie::conn_reg(c) as u16), res, c);
    }
    0
}

#[inline(always)]
fn send_result(conn: u64, res: u64, c: u64) {
    let Some(mut entry) = EVENTS.reserve::<ResultEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.hdr = header(Kind::Result, cookie::func(c), conn);
    ev.result = res;
    ev.status = -1;
    ev.ntuples = 0;
    ev.cmd_status[0] = 0;
    ev.sqlstate = [0; 8];
    if res != 0 {
        if let Some(l) = layout(cookie::layout(c)) {
            if l.res_head_fits == 0 || !read_head(res, l, ev) {
                ev.status = read::<i32>(res + l.res_status as u64).unwrap_or(-1);
                ev.ntuples = read::<i32>(res + l.res_ntups as u64).unwrap_or(0);
                let _ = unsafe {
                    bpf_probe_read_user_buf(
                        (res + l.res_cmd_status as u64) as *const u8,
                        &mut ev.cmd_status,
                    )
                };
            }
            if ev.status == PGRES_FATAL_ERROR {
                read_sqlstate(res, l, &mut ev.sqlstate);
            }
        }
    }
    entry.submit(wakeup_flags());
}

const HEAD_WORDS: usize = RES_HEAD_CAP / 4;
/// A PGresult's head, copied from the traced process in one helper call.
#[map]
static RES_HEADS: PerCpuArray<[u32; HEAD_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// Status, row count and command tag from one copy of the result's head
/// (the layout says they fit in it). False if it could not be read.
#[inline(always)]
fn read_head(res: u64, l: &LibpqLayout, ev: &mut ResultEvent) -> bool {
    let Some(h) = RES_HEADS.get_ptr_mut(0) else {
        return false;
    };
    let h = unsafe { &mut *h };
    let bytes: &mut [u8; RES_HEAD_CAP] = unsafe { &mut *(h as *mut [u32; HEAD_WORDS]).cast() };
    if unsafe { bpf_probe_read_user_buf((res + l.res_head as u64) as *const u8, bytes) }.is_err() {
        return false;
    }
    // Masked, not compared: the verifier sees the bound on the register used
    // (the layout's check already keeps them in the head).
    let at = |off: u32| (off.wrapping_sub(l.res_head) / 4) as usize;
    ev.status = h[at(l.res_status) & (HEAD_WORDS - 1)] as i32;
    ev.ntuples = h[at(l.res_ntups) & (HEAD_WORDS - 1)] as i32;
    let tag: &mut [u32; CMD_STATUS_CAP / 4] =
        unsafe { &mut *(&mut ev.cmd_status as *mut [u8; CMD_STATUS_CAP]).cast() };
    let first = at(l.res_cmd_status);
    for (k, w) in tag.iter_mut().enumerate() {
        *w = h[(first + k) & (HEAD_WORDS - 1)];
    }
    true
}

/// Walks the result's error field list (a short linked list) for code 'C'.
#[inline(always)]
fn read_sqlstate(res: u64, l: &LibpqLayout, out: &mut [u8; 8]) {
    let mut p = read::<u64>(res + l.res_err_fields as u64).unwrap_or(0);
    for _ in 0..16 {
        if p == 0 {
            return;
        }
        if read::<u8>(p + l.field_code as u64) == Some(b'C') {
            let _ = unsafe {
                bpf_probe_read_user_str_bytes((p + l.field_contents as u64) as *const u8, out)
            };
            return;
        }
        p = read::<u64>(p + l.field_next as u64).unwrap_or(0);
    }
}

/// Pipeline-mode calls entered → returned: pid_tgid → PGconn*.
#[map]
static PIPELINE_ARGS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// Entry of a pipeline-mode call. Entering and leaving pipeline mode can
/// fail (the connection is busy, results are uncollected): they are reported
/// by the return probe, with their result; a sync is reported here.
#[uprobe]
pub fn pq_pipeline(ctx: ProbeContext) -> u32 {
    if !client_selected() {
        return 0;
    }
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let conn: u64 = ctx.arg(0).unwrap_or(0);
    match cookie::func(c) {
        func::PQENTER_PIPELINE_MODE | func::PQEXIT_PIPELINE_MODE => {
            let _ = PIPELINE_ARGS.insert(bpf_get_current_pid_tgid(), conn, 0);
        }
        f => send_pipeline(f, conn, 0, 0),
    }
    0
}

#[uretprobe]
pub fn pq_pipeline_ret(ctx: RetProbeContext) -> u32 {
    if !client_selected() {
        return 0;
    }
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(conn) = (unsafe { PIPELINE_ARGS.get(pid_tgid) }).copied() else {
        bump(counter::RESULT_UNMATCHED);
        return 0;
    };
    let _ = PIPELINE_ARGS.remove(pid_tgid);
    let ret: u64 = ctx.ret();
    send_pipeline(cookie::func(c), conn, ret as i32, 1);
    0
}

#[inline(always)]
fn send_pipeline(f: u32, conn: u64, ret: i32, returned: u32) {
    let ev = PipelineEvent {
        hdr: header(Kind::Pipeline, f, conn),
        ret,
        returned,
    };
    if EVENTS.output::<PipelineEvent>(ev, wakeup_flags()).is_err() {
        bump(counter::RINGBUF_FULL);
    }
}

#[uprobe]
pub fn pq_finish(ctx: ProbeContext) -> u32 {
    if !client_selected() {
        return 0;
    }
    let conn: u64 = ctx.arg(0).unwrap_or(0);
    let _ = SEEN_CONNS.remove([bpf_get_current_pid_tgid() >> 32, conn]);
    if let Some(n) = FINISHES.get_ptr_mut(0) {
        // An atomic add (BPF_XADD): two racing finishes must both count.
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
    }
    if EVENTS
        .output::<Header>(header(Kind::Finish, func::PQFINISH, conn), wakeup_flags())
        .is_err()
    {
        bump(counter::RINGBUF_FULL);
    }
    0
}
