//! Kernel side: uprobes on libpq (libpq.rs) and the MySQL client library
//! (mysql.rs), USDT probes / uprobes on the
//! database servers (server.rs), process lifecycle tracepoints
//! (process.rs), the dynamic loader's hook (loader.rs). Copies raw facts
//! (pointers, bounded strings, argument values, timestamps) into one ring
//! buffer; userspace interprets them. Here: what they share.
#![no_std]
#![no_main]
// atomic_xadd: the BPF target has no AtomicU64::fetch_add.
#![feature(core_intrinsics)]
// asm!: pt_regs loads at constant offsets (args.rs).
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
        bpf_probe_read_user_buf, bpf_probe_read_user_str_bytes,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext,
};
use dbtel_common::{
    argkind, cookie, counter, func, qflags, verdict, ArgSpec, ConnEvent, ExecEvent, Header, Kind,
    LibpqLayout, PipelineEvent, QueryEvent, ResultEvent, CMD_STATUS_CAP, MAX_LAYOUTS, NO_INDEX,
    RES_HEAD_CAP, TEXT_CAP,
};

mod args;
mod libpq;
mod loader;
mod mysql;
mod process;
mod server;
mod text;

use args::reg;

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

/// `--` mode: the command and its descendants (process and thread ids,
/// added at fork). An exec among them is reported and the process held
/// (SIGSTOP) until the agent has looked at its new program.
#[map]
static FOLLOWED: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// 8 MiB: over 100 ms of events at full pgbench rate with client and server
/// traced; the reader wakes at 256 KiB. (Mapped twice: it counts double in RSS.)
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(dbtel_common::RING_BYTES, 0);
/// Server processes to trace: tgid → postmaster PID. A server probe sits on the
/// postgres executable for every process running it; only these emit.
#[map]
static SERVER_PIDS: HashMap<u32, dbtel_common::ServerProc> = HashMap::with_max_entries(16384, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
fn bump(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *c += 1 };
    }
}

/// Records since the last wake-up check, per CPU.
#[map]
static WAKE_TICKS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Whether to wake the reader: asked for one record in 32 on each CPU. The
/// query reads both ends of the ring, written from other CPUs (a cache miss
/// each: ~14 % of these programs' cost when asked per record); 32 records
/// are far less than the room left above WAKEUP_BYTES. (A per-CPU count, not
/// a random draw: a helper call less per record.)
#[inline(always)]
fn wakeup_flags() -> u64 {
    let Some(t) = WAKE_TICKS.get_ptr_mut(0) else {
        return BPF_RB_NO_WAKEUP as u64;
    };
    let n = unsafe { *t }.wrapping_add(1);
    unsafe { *t = n };
    if n & 31 != 0 {
        return BPF_RB_NO_WAKEUP as u64;
    }
    let waiting = EVENTS.query(aya_ebpf::bindings::BPF_RB_AVAIL_DATA as u64);
    let threshold = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    if waiting >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn header(kind: Kind, func: u32, conn: u64) -> Header {
    header_of(kind, func, conn, bpf_get_current_pid_tgid())
}

/// The header, for a program that asked for the thread already (a helper
/// call LLVM cannot merge with the first).
#[inline(always)]
fn header_of(kind: Kind, func: u32, conn: u64, pid_tgid: u64) -> Header {
    Header {
        kind: kind as u16,
        engine: kind.engine() as u16,
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
