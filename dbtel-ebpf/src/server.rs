//! Database servers (PostgreSQL, MariaDB): one program for every probe site
//! (USDT notes, function entries, and with server_site_ret function
//! returns), each described by its SiteSpec; the spec names the engine
//! whose record a hit makes. Only processes in SERVER_PIDS emit.

use super::*;
use crate::args::ArgReader;
use dbtel_common::{
    pair, repeat, site, Held, ServerEvent, ServerProc, SiteSpec, MAX_SITES, USDT_MAX_ARGS,
};

/// Per attach cookie: which probe it is and where its arguments are.
#[map]
static SITES: Array<SiteSpec> = Array::with_max_entries(MAX_SITES, 0);
#[map]
static SERVER_SCRATCH: PerCpuArray<ServerEvent> = PerCpuArray::with_max_entries(1, 0);
/// Threads with a pair open (a lock's thd_wait_begin sent, its thd_wait_end not yet).
#[map]
static PAIRS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

/// Every server probe (USDT site or function entry): reads up to six
/// arguments as the site's spec says, and one string if it names one.
#[uprobe]
pub fn server_site(ctx: ProbeContext) -> u32 {
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    site_hit(ctx.as_ptr() as u64, c)
}

/// A site at a function's return: its spec reads the return register.
#[uretprobe]
pub fn server_site_ret(ctx: RetProbeContext) -> u32 {
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    site_hit(ctx.as_ptr() as u64, c)
}

#[inline(always)]
fn site_hit(regs: u64, c: u32) -> u32 {
    if probes_only() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(proc) = SERVER_PIDS.get_ptr_mut(&tgid) else {
        return 0;
    };
    // Its own entry, written only by PostgreSQL's sites (one thread per
    // process, so one CPU at a time): the repeat head and `completed`.
    let proc = unsafe { &mut *proc };
    let owner = proc.owner;
    let Some(spec) = SITES.get(c) else { return 0 };
    // The filters that need the first argument only come first: the hits
    // they drop (errstart below ERROR, a text reported again by Bind and
    // Execute) then cost their trap and little more.
    let mut reader = ArgReader::new(regs);
    let first = reader.arg(&spec.args[0]);
    if spec.min_arg0 != 0 && (first as i64) < spec.min_arg0 as i64 {
        return 0;
    }
    let early_repeat = spec.repeat_once & repeat::ONCE != 0 && spec.text_arg == 1;
    if early_repeat {
        // Idle right after EndCommand: the agent closes the statement without it.
        if first == 0 && proc.completed != 0 {
            proc.completed = 0;
            proc.last_head = dbtel_common::ServerProc::NO_TEXT;
            return 0;
        }
        if repeated(&mut proc.last_head, first) {
            return 0;
        }
    }
    let Some(ev) = SERVER_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let ev = unsafe { &mut *ev };
    let kind = if spec.engine == dbtel_common::Engine::Mysql as u32 {
        Kind::MyServer
    } else {
        Kind::Server
    };
    ev.hdr = header_of(kind, spec.probe, owner as u64, pid_tgid);
    ev.args[0] = first;
    for i in 1..USDT_MAX_ARGS {
        ev.args[i] = reader.arg(&spec.args[i]);
    }
    if spec.mask_arg != 0 {
        let v = arg_at(&ev.args, spec.mask_arg);
        if v >= 64 || (spec.arg_mask >> v) & 1 == 0 {
            return 0;
        }
    }
    let tid = pid_tgid as u32;
    if spec.pair == pair::CLOSES {
        if PAIRS.get_ptr(&tid).is_none() {
            return 0;
        }
        let _ = PAIRS.remove(&tid);
    }
    ev.text_len = 0;
    ev.flags = 0;
    let p = arg_at(&ev.args, spec.text_arg);
    // A site without a text (p = 0) ends the repetition, as a NULL does.
    if spec.repeat_once & repeat::ONCE != 0 && !early_repeat && repeated(&mut proc.last_head, p) {
        return 0;
    }
    if spec.repeat_once & repeat::COMPLETES != 0 {
        // Held, to go with the next record (most often the next statement's
        // text). One already held (a text of several statements) goes alone.
        let held = Held {
            ts_ns: ev.hdr.ts_ns,
            args: [ev.args[0], ev.args[1]],
        };
        if proc.held.ts_ns != 0 {
            send_held(proc, pid_tgid);
        }
        proc.held = held;
        proc.completed = 1;
        return 0;
    }
    set_held(&mut ev.held, &proc.held);
    if p != 0 {
        ev.flags |= qflags::TEXT_PRESENT;
        let len = if spec.text_len_arg != 0 {
            Some(arg_at(&ev.args, spec.text_len_arg))
        } else {
            None
        };
        let (n, flags) = crate::text::copy(&mut ev.text, p, len);
        ev.text_len = n;
        ev.flags |= flags;
    }
    let len = ServerEvent::TEXT_OFFSET + ev.text_len as usize;
    let bytes: &[u8; core::mem::size_of::<ServerEvent>()] =
        unsafe { &*(ev as *const ServerEvent).cast() };
    if len <= bytes.len()
        && EVENTS
            .output::<[u8]>(&bytes[..len], wakeup_flags())
            .is_err()
    {
        bump(counter::RINGBUF_FULL);
        return 0;
    }
    if spec.pair == pair::OPENS {
        let _ = PAIRS.insert(&tid, &1, 0);
    }
    // Written only when it changes: MariaDB's threads share their process's
    // entry, and never complete, so they only read it.
    if ev.held.ts_ns != 0 {
        proc.held.ts_ns = 0;
    }
    if proc.completed != 0 {
        proc.completed = 0;
    }
    0
}

/// Sends a process's held completion as a record of its own (EndCommand's,
/// as it was hit): before a second one, or at the process's exit.
#[inline(always)]
pub(crate) fn send_held(proc: &mut ServerProc, pid_tgid: u64) {
    let Some(ev) = SERVER_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let ev = unsafe { &mut *ev };
    // At the time it was hit, not now.
    ev.hdr = header_of(
        Kind::Server,
        site::COMMAND_DONE,
        proc.owner as u64,
        pid_tgid,
    );
    ev.hdr.ts_ns = proc.held.ts_ns;
    let mut args = [0; USDT_MAX_ARGS];
    args[0] = proc.held.args[0];
    args[1] = proc.held.args[1];
    set_words(&mut ev.args, &args);
    set_held(&mut ev.held, &Held::default());
    ev.text_len = 0;
    ev.flags = 0;
    let bytes: &[u8; core::mem::size_of::<ServerEvent>()] =
        unsafe { &*(ev as *const ServerEvent).cast() };
    if EVENTS
        .output::<[u8]>(&bytes[..ServerEvent::TEXT_OFFSET], wakeup_flags())
        .is_err()
    {
        bump(counter::RINGBUF_FULL);
        return;
    }
    proc.held.ts_ns = 0;
}

/// `*dst = *src`, without the byte-at-a-time memcpy LLVM would call.
#[inline(always)]
fn set_held(dst: &mut Held, src: &Held) {
    unsafe {
        core::ptr::write_volatile(&mut dst.ts_ns, src.ts_ns);
        core::ptr::write_volatile(&mut dst.args[0], src.args[0]);
        core::ptr::write_volatile(&mut dst.args[1], src.args[1]);
    }
}

/// Argument `n` (index + 1; 0 or out of range: 0). A constant index per arm:
/// the verifier cannot follow a bounds check on a value the compiler re-derives.
#[inline(always)]
fn arg_at(args: &[u64; USDT_MAX_ARGS], n: u32) -> u64 {
    match n {
        1 => args[0],
        2 => args[1],
        3 => args[2],
        4 => args[3],
        5 => args[4],
        6 => args[5],
        7 => args[6],
        8 => args[7],
        9 => args[8],
        10 => args[9],
        _ => 0,
    }
}

/// True if `p`'s text begins as the last one this process reported (its
/// first 31 bytes): the same statement reported again. A NULL resets.
#[inline(always)]
fn repeated(last: &mut [u64; 4], p: u64) -> bool {
    if p == 0 {
        set_words(last, &dbtel_common::ServerProc::NO_TEXT);
        return false;
    }
    // Compared as words: there is no memcmp in BPF.
    // Zeroed in place, and used in place: a move of it would be a memset.
    let mut head = core::mem::MaybeUninit::<[u64; 4]>::uninit();
    let words = head.as_mut_ptr() as *mut u64;
    for i in 0..4 {
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    let head = unsafe { head.assume_init_mut() };
    let bytes: &mut [u8; 32] = unsafe { &mut *(head as *mut [u64; 4]).cast() };
    let _ = unsafe { bpf_probe_read_user_str_bytes(p as *const u8, bytes) };
    if last[0] == head[0] && last[1] == head[1] && last[2] == head[2] && last[3] == head[3] {
        return true;
    }
    set_words(last, head);
    false
}

/// Word by word, as volatile stores: LLVM would merge plain ones into a
/// call of a byte-at-a-time memset or memcpy (hundreds of instructions).
#[inline(always)]
fn set_words<const N: usize>(dst: &mut [u64; N], src: &[u64; N]) {
    for i in 0..N {
        unsafe { core::ptr::write_volatile(&mut dst[i], src[i]) };
    }
}
