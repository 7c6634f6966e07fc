//! Kernel side: uprobes on libpq, and USDT probes / uprobes on the PostgreSQL
//! server. Copies raw facts (pointers, bounded strings, argument values,
//! timestamps) into one ring buffer; userspace interprets them.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_get_current_cgroup_id, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_buf,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext,
};
use dbtel_common::{
    argkind, cookie, counter, func, kind, qflags, verdict, ArgSpec, ConnEvent, ExecEvent, Header, LibpqLayout,
    PipelineEvent, QueryEvent, ResultEvent, ServerEvent, SiteSpec, MAX_LAYOUTS, MAX_SITES, NO_INDEX, TEXT_CAP,
    USDT_MAX_ARGS,
};

mod loader;

/// Longest query text to copy, set by the agent at load time.
#[no_mangle]
static MAX_TEXT: u32 = 4096;
/// Wake the reader only once this much is waiting: a wake-up per record costs
/// far more than the record itself. The reader also polls on a short timer.
#[no_mangle]
static WAKEUP_BYTES: u64 = 256 * 1024;

/// Set by the agent's --probes-only: every probe returns at once, so a
/// benchmark can measure what the traps alone cost.
#[no_mangle]
static PROBES_ONLY: u32 = 0;

#[inline(always)]
fn probes_only() -> bool {
    unsafe { core::ptr::read_volatile(&PROBES_ONLY) != 0 }
}

/// Set by the agent's --all: client probes sit on library files for every
/// process, and CLIENT_PIDS says which processes emit.
#[no_mangle]
static TRACE_ALL: u32 = 0;

/// Host-wide tracing: the agent's verdict per client process (see
/// dbtel_common::verdict). A process not yet in it is traced from its first
/// probe hit, so no query is lost while the agent decides.
#[map]
static CLIENT_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);

/// Whether a client probe hit should be recorded: always in --pid mode (the
/// perf event's PID filter already chose the process), else unless excluded.
#[inline(always)]
fn client_selected() -> bool {
    if probes_only() {
        return false;
    }
    if unsafe { core::ptr::read_volatile(&TRACE_ALL) } == 0 {
        return true;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match unsafe { CLIENT_PIDS.get(&tgid) } {
        Some(v) => *v != verdict::EXCLUDED,
        None => {
            // Known from now on: its exit is reported (see proc_exit).
            let _ = CLIENT_PIDS.insert(&tgid, &verdict::TRACED, 0);
            true
        }
    }
}

/// 8 MiB: over 100 ms of events at full pgbench rate with client and server
/// traced; the reader wakes at 256 KiB. (Mapped twice: it counts double in RSS.)
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);
#[map]
static SCRATCH: PerCpuArray<QueryEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static LAYOUTS: Array<LibpqLayout> = Array::with_max_entries(MAX_LAYOUTS, 0);
/// (tgid, PGconn*) seen already: connection details are sent once per connection.
#[map]
static SEEN_CONNS: LruHashMap<[u64; 2], u8> = LruHashMap::with_max_entries(16384, 0);
/// PQgetResult entry → return: pid_tgid → PGconn* (bcc dbslower's pattern).
#[map]
static GETRESULT_ARGS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);
/// Server processes to trace: tgid → postmaster PID. A server probe sits on the
/// postgres executable for every process running it; only these emit.
#[map]
static SERVER_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);
/// Per attach cookie: which probe it is and where its arguments are.
#[map]
static SITES: Array<SiteSpec> = Array::with_max_entries(MAX_SITES, 0);
/// The head of the last text each process reported, for sites that report
/// a text once until a NULL.
#[map]
static LAST_TEXT: LruHashMap<u32, [u64; 4]> = LruHashMap::with_max_entries(16384, 0);
#[map]
static SERVER_SCRATCH: PerCpuArray<ServerEvent> = PerCpuArray::with_max_entries(1, 0);
/// Field offsets in the sched_process_fork tracepoint record (read by the
/// agent from tracefs: they changed between kernel versions).
#[no_mangle]
static FORK_PARENT_OFF: u32 = 24;
#[no_mangle]
static FORK_CHILD_OFF: u32 = 44;
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
fn bump(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn wakeup_flags() -> u64 {
    let waiting = EVENTS.query(aya_ebpf::bindings::BPF_RB_AVAIL_DATA as u64);
    let threshold = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    if waiting >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn header(kind: u32, func: u32, conn: u64) -> Header {
    let pid_tgid = bpf_get_current_pid_tgid();
    Header {
        kind,
        func,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        conn,
    }
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

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
    let Some(ev) = SCRATCH.get_ptr_mut(0) else { return 0 };
    let ev = unsafe { &mut *ev };
    ev.hdr = header(kind::QUERY, cookie::func(c), conn);
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
        let p = arg(text_arg);
        // Read one byte past the limit (plus NUL) to tell "exactly the limit" from "cut".
        let limit = unsafe { core::ptr::read_volatile(&MAX_TEXT) } as usize;
        let limit = if limit > TEXT_CAP - 2 { TEXT_CAP - 2 } else { limit };
        let size = limit + 2;
        match unsafe { bpf_probe_read_user_str_bytes(p as *const u8, &mut ev.text[..size]) } {
            Ok(s) => {
                let n = s.len();
                if n > limit {
                    ev.flags |= qflags::TRUNCATED;
                    ev.text_len = limit as u32;
                } else {
                    ev.text_len = n as u32;
                }
            }
            Err(_) => ev.flags |= qflags::TEXT_FAULT,
        }
    }
    let len = QueryEvent::TEXT_OFFSET + ev.text_len as usize;
    let bytes: &[u8; core::mem::size_of::<QueryEvent>()] = unsafe { &*(ev as *const QueryEvent).cast() };
    if len <= bytes.len() && EVENTS.output::<[u8]>(&bytes[..len], wakeup_flags()).is_err() {
        bump(counter::RINGBUF_FULL);
    }
    0
}

/// Sends the connection's database, host, port and backend PID the first time
/// this process uses the connection object.
#[inline(always)]
fn note_conn(conn: u64, layout_idx: u32) {
    let key = [bpf_get_current_pid_tgid() >> 32, conn];
    if conn == 0 || SEEN_CONNS.get_ptr(key).is_some() {
        return;
    }
    let _ = SEEN_CONNS.insert(key, 1, 0);
    let Some(l) = layout(layout_idx).filter(|l| l.conn_valid != 0) else { return };
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.hdr = header(kind::CONN, 0, conn);
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
    ev.hdr = header(kind::RESULT, cookie::func(c), conn);
    ev.result = res;
    ev.status = -1;
    ev.ntuples = 0;
    ev.cmd_status[0] = 0;
    ev.sqlstate = [0; 8];
    if res != 0 {
        if let Some(l) = layout(cookie::layout(c)) {
            ev.status = read::<i32>(res + l.res_status as u64).unwrap_or(-1);
            ev.ntuples = read::<i32>(res + l.res_ntups as u64).unwrap_or(0);
            let _ = unsafe {
                bpf_probe_read_user_buf((res + l.res_cmd_status as u64) as *const u8, &mut ev.cmd_status)
            };
            if ev.status == PGRES_FATAL_ERROR {
                read_sqlstate(res, l, &mut ev.sqlstate);
            }
        }
    }
    entry.submit(wakeup_flags());
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
            let _ = unsafe { bpf_probe_read_user_str_bytes((p + l.field_contents as u64) as *const u8, out) };
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
    let ev = PipelineEvent { hdr: header(kind::PIPELINE, f, conn), ret, returned };
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
    if EVENTS.output::<Header>(header(kind::FINISH, func::PQFINISH, conn), wakeup_flags()).is_err() {
        bump(counter::RINGBUF_FULL);
    }
    0
}

/// Every server probe (USDT site or function entry): reads up to six
/// arguments as the site's spec says, and one string if it names one.
#[uprobe]
pub fn pg_server(ctx: ProbeContext) -> u32 {
    if probes_only() {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(postmaster) = (unsafe { SERVER_PIDS.get(&tgid) }).copied() else { return 0 };
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some(spec) = SITES.get(c) else { return 0 };
    let Some(ev) = SERVER_SCRATCH.get_ptr_mut(0) else { return 0 };
    let ev = unsafe { &mut *ev };
    ev.hdr = header(kind::SERVER, spec.probe, postmaster as u64);
    let regs = ctx.as_ptr() as u64;
    for i in 0..USDT_MAX_ARGS {
        ev.args[i] = read_arg(regs, &spec.args[i]);
    }
    if spec.min_arg0 != 0 && (ev.args[0] as i64) < spec.min_arg0 as i64 {
        return 0;
    }
    ev.text_len = 0;
    ev.flags = 0;
    // A constant index per arm: the verifier cannot follow a bounds check on
    // a value the compiler re-derives.
    let p = match spec.text_arg {
        1 => ev.args[0],
        2 => ev.args[1],
        3 => ev.args[2],
        4 => ev.args[3],
        5 => ev.args[4],
        6 => ev.args[5],
        _ => 0,
    };
    // A site without a text (p = 0) ends the repetition, as a NULL does.
    if spec.repeat_once != 0 && repeated(tgid, p) {
        return 0;
    }
    {
        if p != 0 {
            ev.flags |= qflags::TEXT_PRESENT;
            let limit = unsafe { core::ptr::read_volatile(&MAX_TEXT) } as usize;
            let limit = if limit > TEXT_CAP - 2 { TEXT_CAP - 2 } else { limit };
            match unsafe { bpf_probe_read_user_str_bytes(p as *const u8, &mut ev.text[..limit + 2]) } {
                Ok(s) if s.len() > limit => {
                    ev.flags |= qflags::TRUNCATED;
                    ev.text_len = limit as u32;
                }
                Ok(s) => ev.text_len = s.len() as u32,
                Err(_) => ev.flags |= qflags::TEXT_FAULT,
            }
        }
    }
    let len = ServerEvent::TEXT_OFFSET + ev.text_len as usize;
    let bytes: &[u8; core::mem::size_of::<ServerEvent>()] = unsafe { &*(ev as *const ServerEvent).cast() };
    if len <= bytes.len() && EVENTS.output::<[u8]>(&bytes[..len], wakeup_flags()).is_err() {
        bump(counter::RINGBUF_FULL);
    }
    0
}

/// True if `p`'s text begins as the last one this process reported (its
/// first 31 bytes): the same statement reported again. A NULL resets.
#[inline(always)]
fn repeated(tgid: u32, p: u64) -> bool {
    // Updated in place once the process has an entry: an LRU insert or
    // delete on every statement costs more than the compare.
    let last = LAST_TEXT.get_ptr_mut(&tgid);
    if p == 0 {
        // Byte 31 of a head read from a string is always its NUL or before
        // it: no text matches this.
        if let Some(last) = last {
            unsafe { *last = [0, 0, 0, 0xff << 56] };
        }
        return false;
    }
    // Compared as words: there is no memcmp in BPF.
    let mut head = [0u64; 4];
    let bytes: &mut [u8; 32] = unsafe { &mut *(&mut head as *mut [u64; 4]).cast() };
    let _ = unsafe { bpf_probe_read_user_str_bytes(p as *const u8, bytes) };
    match last {
        Some(last) => {
            let last = unsafe { &mut *last };
            if last[0] == head[0] && last[1] == head[1] && last[2] == head[2] && last[3] == head[3] {
                return true;
            }
            *last = head;
        }
        None => {
            let _ = LAST_TEXT.insert(&tgid, &head, 0);
        }
    }
    false
}

/// A register slot of the probed task's pt_regs. The slot is chosen at attach
/// time, and the verifier refuses a direct load at a run-time context offset,
/// hence the helper (as libbpf's usdt.bpf.h does).
#[inline(always)]
fn reg(regs: u64, off: u16) -> u64 {
    if off as usize > 160 {
        return 0;
    }
    unsafe { bpf_probe_read_kernel((regs + off as u64) as *const u64) }.unwrap_or(0)
}

#[inline(always)]
fn read_arg(regs: u64, a: &ArgSpec) -> u64 {
    let raw = match a.kind {
        argkind::IMMEDIATE => return a.value as u64,
        argkind::REGISTER => {
            let v = reg(regs, a.reg_off);
            if a.high_byte != 0 { v >> 8 } else { v }
        }
        argkind::MEMORY => {
            let mut addr = reg(regs, a.reg_off).wrapping_add(a.value as u64);
            if a.index_off != NO_INDEX {
                addr = addr.wrapping_add(reg(regs, a.index_off).wrapping_mul(a.scale as u64));
            }
            match a.size {
                1 => read::<u8>(addr).unwrap_or(0) as u64,
                2 => read::<u16>(addr).unwrap_or(0) as u64,
                4 => read::<u32>(addr).unwrap_or(0) as u64,
                _ => read::<u64>(addr).unwrap_or(0),
            }
        }
        _ => return 0,
    };
    extend(raw, a.size, a.signed != 0)
}

/// Keeps the argument's `size` bytes, sign-extended if it is signed.
#[inline(always)]
fn extend(v: u64, size: u8, signed: bool) -> u64 {
    if size >= 8 || size == 0 {
        return v;
    }
    let shift = 64 - 8 * size as u32;
    if signed {
        (((v << shift) as i64) >> shift) as u64
    } else {
        (v << shift) >> shift
    }
}

/// A traced server forks a backend: trace the child too, from its first instruction.
#[tracepoint]
pub fn server_fork(ctx: TracePointContext) -> u32 {
    let (po, co) = unsafe { (core::ptr::read_volatile(&FORK_PARENT_OFF), core::ptr::read_volatile(&FORK_CHILD_OFF)) };
    let (Ok(parent), Ok(child)) = (unsafe { ctx.read_at::<i32>(po as usize) }, unsafe { ctx.read_at::<i32>(co as usize) })
    else {
        return 0;
    };
    if let Some(pm) = unsafe { SERVER_PIDS.get(&(parent as u32)) }.copied() {
        let _ = SERVER_PIDS.insert(&(child as u32), &pm, 0);
    }
    0
}

/// A traced process exits (a server's, or with --all a client that hit a
/// probe): forget it (PIDs are reused) and tell the agent, which closes
/// whatever it had open.
#[tracepoint]
pub fn proc_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid != pid_tgid as u32 {
        // A thread (an extension's): the fork tracepoint added its id too.
        let _ = SERVER_PIDS.remove(&(pid_tgid as u32));
        return 0;
    }
    if unsafe { CLIENT_PIDS.get(&tgid) }.is_some() {
        let _ = CLIENT_PIDS.remove(&tgid);
        if EVENTS.output::<Header>(header(kind::CLIENT_EXIT, 0, 0), wakeup_flags()).is_err() {
            bump(counter::RINGBUF_FULL);
        }
    }
    let Some(pm) = unsafe { SERVER_PIDS.get(&tgid) }.copied() else { return 0 };
    let _ = SERVER_PIDS.remove(&tgid);
    let _ = LAST_TEXT.remove(&tgid);
    if EVENTS.output::<Header>(header(kind::SERVER_EXIT, 0, pm as u64), wakeup_flags()).is_err() {
        bump(counter::RINGBUF_FULL);
    }
    0
}

/// Offset of sched_process_exec's `__data_loc char[] filename` (from tracefs).
#[no_mangle]
static EXEC_FILENAME_OFF: u32 = 8;
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// Host-wide tracing: every exec is reported with its path and cgroup, so
/// the agent can choose a process (and probe a new program) before its first
/// query, and still knows what it was if it exits before being looked at.
#[tracepoint]
pub fn proc_exec(ctx: TracePointContext) -> u32 {
    if unsafe { core::ptr::read_volatile(&TRACE_ALL) } == 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // A new program: the old verdict no longer holds.
    let _ = CLIENT_PIDS.remove(&tgid);
    let Some(ev) = EXEC_SCRATCH.get_ptr_mut(0) else { return 0 };
    let ev = unsafe { &mut *ev };
    ev.hdr = header(kind::EXEC, 0, 0);
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.path_len = 0;
    ev._pad = 0;
    let off = unsafe { core::ptr::read_volatile(&EXEC_FILENAME_OFF) } as usize;
    let Ok(loc) = (unsafe { ctx.read_at::<u32>(off) }) else { return 0 };
    let at = ctx.as_ptr() as u64 + (loc & 0xffff) as u64;
    if let Ok(p) = unsafe { bpf_probe_read_kernel_str_bytes(at as *const u8, &mut ev.path) } {
        ev.path_len = p.len() as u32;
    }
    let len = ExecEvent::PATH_OFFSET + ev.path_len as usize;
    let bytes: &[u8; core::mem::size_of::<ExecEvent>()] = unsafe { &*(ev as *const ExecEvent).cast() };
    if len <= bytes.len() && EVENTS.output::<[u8]>(&bytes[..len], wakeup_flags()).is_err() {
        bump(counter::RINGBUF_FULL);
    }
    0
}



#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
