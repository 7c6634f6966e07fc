//! Processes: forks of traced servers, exits, and (with --all) execs.

use super::*;

/// Field offsets in the sched_process_fork tracepoint record (read by the
/// agent from tracefs: they changed between kernel versions).
#[no_mangle]
static FORK_PARENT_OFF: u32 = 24;
#[no_mangle]
static FORK_CHILD_OFF: u32 = 44;
/// A traced server forks a backend: trace the child too, from its first instruction.
#[tracepoint]
pub fn server_fork(ctx: TracePointContext) -> u32 {
    let (po, co) = unsafe {
        (
            core::ptr::read_volatile(&FORK_PARENT_OFF),
            core::ptr::read_volatile(&FORK_CHILD_OFF),
        )
    };
    let (Ok(parent), Ok(child)) = (unsafe { ctx.read_at::<i32>(po as usize) }, unsafe {
        ctx.read_at::<i32>(co as usize)
    }) else {
        return 0;
    };
    if let Some(p) = unsafe { SERVER_PIDS.get(&(parent as u32)) } {
        // No last text: a parallel worker's report of its leader's text is its own.
        let proc = dbtel_common::ServerProc::of(p.owner);
        let _ = SERVER_PIDS.insert(&(child as u32), &proc, 0);
    }
    if unsafe { FOLLOWED.get(&(parent as u32)) }.is_some() {
        let _ = FOLLOWED.insert(&(child as u32), &1, 0);
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
        let _ = FOLLOWED.remove(&(pid_tgid as u32));
        return 0;
    }
    let _ = FOLLOWED.remove(&tgid);
    if unsafe { CLIENT_PIDS.get(&tgid) }.is_some() {
        let _ = CLIENT_PIDS.remove(&tgid);
        if EVENTS
            .output::<Header>(header(Kind::ClientExit, 0, 0), wakeup_flags())
            .is_err()
        {
            bump(counter::RINGBUF_FULL);
        }
    }
    let Some(proc) = SERVER_PIDS.get_ptr_mut(&tgid) else {
        return 0;
    };
    let proc = unsafe { &mut *proc };
    // Its last statement's completion, held for a next record that will not come.
    if proc.held.ts_ns != 0 {
        crate::server::send_held(proc, pid_tgid);
    }
    let pm = proc.owner;
    let _ = SERVER_PIDS.remove(&tgid);
    if EVENTS
        .output::<Header>(header(Kind::ServerExit, 0, pm as u64), wakeup_flags())
        .is_err()
    {
        bump(counter::RINGBUF_FULL);
    }
    0
}

/// Offset of sched_process_exec's `__data_loc char[] filename` (from tracefs).
#[no_mangle]
static EXEC_FILENAME_OFF: u32 = 8;
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

const SIGSTOP: u32 = 19;

/// Host-wide tracing: every exec is reported with its path and cgroup, so
/// the agent can choose a process (and probe a new program) before its first
/// query, and still knows what it was if it exits before being looked at.
/// `--` mode: execs of the command and its descendants, each held.
#[tracepoint]
pub fn proc_exec(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { core::ptr::read_volatile(&TRACE_ALL) } == 0 {
        if unsafe { FOLLOWED.get(&tgid) }.is_some() {
            followed_exec(&ctx);
        }
        return 0;
    }
    // A new program: the old verdict no longer holds.
    let _ = CLIENT_PIDS.remove(&tgid);
    let Some(ev) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let ev = unsafe { &mut *ev };
    ev.hdr = header(Kind::Exec, 0, 0);
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.path_len = 0;
    ev._pad = 0;
    let off = unsafe { core::ptr::read_volatile(&EXEC_FILENAME_OFF) } as usize;
    let Ok(loc) = (unsafe { ctx.read_at::<u32>(off) }) else {
        return 0;
    };
    let at = ctx.as_ptr() as u64 + (loc & 0xffff) as u64;
    if let Ok(p) = unsafe { bpf_probe_read_kernel_str_bytes(at as *const u8, &mut ev.path) } {
        ev.path_len = p.len() as u32;
    }
    let len = ExecEvent::PATH_OFFSET + ev.path_len as usize;
    let bytes: &[u8; core::mem::size_of::<ExecEvent>()] =
        unsafe { &*(ev as *const ExecEvent).cast() };
    // The reader woken at once: a new program may be a server whose first
    // backends must be traced from their first statement.
    if len <= bytes.len()
        && EVENTS
            .output::<[u8]>(&bytes[..len], BPF_RB_FORCE_WAKEUP as u64)
            .is_err()
    {
        bump(counter::RINGBUF_FULL);
    }
    0
}

/// A followed process runs a new program: stopped before its first
/// instruction (the dynamic loader's) until the agent has probed it. Reserved
/// before the signal, as the loader's hold: a process is never held unannounced.
fn followed_exec(ctx: &TracePointContext) {
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.path_len = 0;
    ev._pad = 0;
    let off = unsafe { core::ptr::read_volatile(&EXEC_FILENAME_OFF) } as usize;
    if let Ok(loc) = unsafe { ctx.read_at::<u32>(off) } {
        let at = ctx.as_ptr() as u64 + (loc & 0xffff) as u64;
        if let Ok(p) = unsafe { bpf_probe_read_kernel_str_bytes(at as *const u8, &mut ev.path) } {
            ev.path_len = p.len() as u32;
        }
    }
    let held = unsafe { aya_ebpf::helpers::bpf_send_signal(SIGSTOP) } == 0;
    let func = if held { dbtel_common::loader::HELD } else { 0 };
    ev.hdr = header(Kind::Exec, func, 0);
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
}
