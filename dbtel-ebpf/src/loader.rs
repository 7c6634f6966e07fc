//! The dynamic loader's debugger hook (glibc's `_dl_debug_state`): library
//! loads, reported to the agent; the `--` command held until it has looked.

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_send_signal},
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
    EbpfContext,
};
use dbtel_common::{counter, loader, verdict, Header, Kind};

use crate::{bump, header, read, reg, CLIENT_PIDS, EVENTS, TRACE_ALL};

/// Processes whose loader is adding objects (RT_ADD seen, RT_CONSISTENT not
/// yet): only such a RT_CONSISTENT is a load (a dlclose ends in one too).
#[map]
static LOADING: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

const SIGSTOP: u32 = 19;
/// pt_regs.ip: at a uprobe's handler, the probed instruction's address.
const IP_OFF: u16 = 128;

/// The dynamic loader's debugger hook (`_dl_debug_state`). Once a load's
/// objects are mapped, and before their constructors run or dlopen returns,
/// the agent is told, so it can probe a libpq among them before any call;
/// a held process (the agent's `--` command) is stopped until the agent has.
#[uprobe]
pub fn dl_state(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { core::ptr::read_volatile(&TRACE_ALL) } != 0 {
        if unsafe { CLIENT_PIDS.get(&tgid) }.is_some_and(|v| *v == verdict::EXCLUDED) {
            return 0;
        }
    }
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let ip = reg(ctx.as_ptr() as u64, IP_OFF);
    let Some(state) = read::<i32>(ip.wrapping_add(loader::state_delta(c) as u64)) else {
        return 0;
    };
    match state {
        loader::RT_ADD => {
            let _ = LOADING.insert(&tgid, &1, 0);
        }
        loader::RT_CONSISTENT => {
            if LOADING.remove(&tgid).is_err() {
                return 0;
            }
            let Some(mut entry) = EVENTS.reserve::<Header>(0) else {
                bump(counter::RINGBUF_FULL);
                return 0; // never held unannounced: no one would let it go
            };
            // The whole process stops before this thread runs another instruction
            // (the signal acts on the return to user space, after the submit).
            let held = loader::hold(c) && unsafe { bpf_send_signal(SIGSTOP) } == 0;
            let func = if held { loader::HELD } else { 0 };
            unsafe { *entry.as_mut_ptr() = header(Kind::Loaded, func, 0) };
            // At once: a held process waits for the agent to read this.
            entry.submit(BPF_RB_FORCE_WAKEUP as u64);
        }
        _ => {
            let _ = LOADING.remove(&tgid);
        }
    }
    0
}
