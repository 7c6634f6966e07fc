//! The agent's capabilities: which ones tracing needs on this kernel, naming
//! a missing one in errors, and keeping only what later attaching needs once
//! the first probes are in place (see README, "Privileges").
//!
//! Measured on Linux 6.18 (unprivileged_bpf_disabled=2, perf_event_paranoid=2):
//! loading needs CAP_BPF (or CAP_SYS_ADMIN); a uprobe perf event needs
//! CAP_SYS_ADMIN (CAP_PERFMON alone gets EACCES from perf_event_open), which is
//! why it is probed at run time ([`uprobes_allowed`]) rather than assumed.

use std::{collections::HashSet, io};

use caps::{CapSet, Capability};

pub use caps::Capability as Cap;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegesError {
    #[error("cannot read the agent's capabilities: {0}")]
    Read(#[from] caps::errors::CapsError),
    #[error("cannot drop capabilities: {what}: {error}")]
    Drop {
        what: &'static str,
        error: io::Error,
    },
    #[error("cannot drop capabilities in every thread: {0} thread(s) kept theirs")]
    Threads(usize),
}

/// The effective set of the calling thread (empty if unreadable).
pub fn effective() -> HashSet<Capability> {
    caps::read(None, CapSet::Effective).unwrap_or_default()
}

/// CAP_SYS_ADMIN still covers CAP_BPF and CAP_PERFMON (the kernel's bpf_capable / perfmon_capable).
pub fn holds(cap: Capability) -> bool {
    let eff = effective();
    eff.contains(&cap)
        || (matches!(cap, Capability::CAP_BPF | Capability::CAP_PERFMON)
            && eff.contains(&Capability::CAP_SYS_ADMIN))
}

/// `caps` as one bit mask (the `CapEff:` form of /proc/PID/status).
pub fn mask(caps: &HashSet<Capability>) -> u64 {
    caps.iter().fold(0, |m, c| m | c.bitmask())
}

/// `CAP_A, CAP_B` in bit order.
pub fn names(caps: &HashSet<Capability>) -> String {
    let mut v: Vec<_> = caps.iter().collect();
    v.sort_by_key(|c| c.index());
    v.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

/// Appended to an error reading a file: which capability its refusal
/// means ("" when it is no refusal). `via_proc`: read through /proc/PID
/// (maps, exe, root/...), where the kernel's ptrace check decides first.
pub fn denied_hint(e: &io::Error, via_proc: bool) -> String {
    if !is_denied(e) {
        return String::new();
    }
    let missing = if via_proc && !holds(Capability::CAP_SYS_PTRACE) {
        Capability::CAP_SYS_PTRACE
    } else if !holds(Capability::CAP_DAC_READ_SEARCH) {
        Capability::CAP_DAC_READ_SEARCH
    } else if via_proc {
        return " (refused even with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: the process is out of the agent's reach, in another user namespace or guarded by a security module)".into();
    } else {
        return String::new();
    };
    format!(" (missing {missing}: {})", why(missing))
}

/// What a failed load or attach is missing, for its error (already on one line).
#[derive(Clone, Copy, Debug)]
pub enum Step {
    Load,
    Uprobe,
    Tracepoint,
}

/// The first capability `step` needs that the agent lacks, as a hint.
pub fn step_hint(step: Step) -> String {
    let missing = match step {
        Step::Load => (!holds(Capability::CAP_BPF)).then_some(Capability::CAP_BPF),
        Step::Uprobe if !holds(Capability::CAP_PERFMON) => Some(Capability::CAP_PERFMON),
        Step::Uprobe => {
            (!effective().contains(&Capability::CAP_SYS_ADMIN)).then_some(Capability::CAP_SYS_ADMIN)
        }
        Step::Tracepoint if !holds(Capability::CAP_PERFMON) => Some(Capability::CAP_PERFMON),
        Step::Tracepoint => {
            (!holds(Capability::CAP_DAC_READ_SEARCH)).then_some(Capability::CAP_DAC_READ_SEARCH)
        }
    };
    match missing {
        Some(c) => format!(" (missing {c}: {})", why(c)),
        None => String::new(),
    }
}

fn why(c: Capability) -> &'static str {
    match c {
        Capability::CAP_BPF => "needed to load the eBPF programs and maps",
        Capability::CAP_PERFMON => "needed to attach uprobes and tracepoints",
        Capability::CAP_SYS_ADMIN => {
            "this kernel opens uprobe perf events only with it (CAP_PERFMON is not enough)"
        }
        Capability::CAP_SYS_PTRACE => "needed to read another user's processes",
        Capability::CAP_DAC_READ_SEARCH => {
            "needed to read files other users own (tracefs, servers' postmaster.pid)"
        }
        _ => "needed",
    }
}

/// Checked before anything is loaded, so that a missing capability is one
/// line naming it rather than whatever the kernel's refusal reads like.
pub fn preflight() -> Result<(), String> {
    if !holds(Capability::CAP_BPF) {
        return Err(format!("missing CAP_BPF: {}", why(Capability::CAP_BPF)));
    }
    if !holds(Capability::CAP_PERFMON) {
        return Err(format!(
            "missing CAP_PERFMON: {}",
            why(Capability::CAP_PERFMON)
        ));
    }
    match uprobes_allowed() {
        Ok(false) if !effective().contains(&Capability::CAP_SYS_ADMIN) => Err(format!(
            "missing CAP_SYS_ADMIN: {}",
            why(Capability::CAP_SYS_ADMIN)
        )),
        Ok(false) => Err(
            "the kernel refuses uprobe perf events even with CAP_SYS_ADMIN (a security module?)"
                .into(),
        ),
        // Not known: the attach will say.
        Ok(true) | Err(_) => Ok(()),
    }
}

/// The uid owning process `pid` (real), from /proc/PID/status (readable by anyone).
pub fn process_uid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Refuses, naming CAP_SYS_PTRACE, a process of another user that the agent could not read.
pub fn check_process(pid: u32) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match process_uid(pid) {
        Some(uid) if uid != me && !holds(Capability::CAP_SYS_PTRACE) => Err(format!(
            "process {pid} ({}) belongs to uid {uid}: missing CAP_SYS_PTRACE: {}",
            super::process::exe_name(pid),
            why(Capability::CAP_SYS_PTRACE)
        )),
        _ => Ok(()),
    }
}

/// A function never called: the site of the uprobe that [`uprobes_allowed`] opens and closes.
#[inline(never)]
#[no_mangle]
pub extern "C" fn dbtel_uprobe_permission_site() -> u64 {
    std::hint::black_box(0)
}

/// The first fields of `struct perf_event_attr` (PERF_ATTR_SIZE_VER1: up to config2).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
}

/// Whether the kernel lets this thread open a uprobe perf event (the step
/// every uprobe attach takes), tried on a function of the agent's own that
/// nothing calls, disabled, closed at once.
pub fn uprobes_allowed() -> io::Result<bool> {
    let kind: u32 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")?
        .trim()
        .parse()
        .map_err(io::Error::other)?;
    let addr = dbtel_uprobe_permission_site as *const () as u64;
    let offset = file_offset(addr)?;
    let path = c"/proc/self/exe";
    let attr = PerfEventAttr {
        kind,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        sample_period: 1,
        flags: 1, // disabled
        config1: path.as_ptr() as u64,
        config2: offset,
        ..Default::default()
    };
    // SAFETY: a valid attr of the size it states; the path outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            0,
            -1,
            -1,
            8u64, // PERF_FLAG_FD_CLOEXEC
        )
    };
    if fd >= 0 {
        // SAFETY: the descriptor just opened.
        unsafe { libc::close(fd as i32) };
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if is_denied(&e) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Offset in the agent's executable of its code at `addr`, from /proc/self/maps.
fn file_offset(addr: u64) -> io::Result<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    maps.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (lo, hi) = f.next()?.split_once('-')?;
            let (lo, hi) = (
                u64::from_str_radix(lo, 16).ok()?,
                u64::from_str_radix(hi, 16).ok()?,
            );
            let off = u64::from_str_radix(f.nth(1)?, 16).ok()?;
            (lo..hi).contains(&addr).then_some(addr - lo + off)
        })
        .ok_or_else(|| io::Error::other("the agent's own code is not in /proc/self/maps"))
}

/// What later attaching may need, beside the probes already placed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Later {
    /// Servers traced or --all: tracefs, data directories, files in containers.
    pub servers_or_host: bool,
    /// A `--` command running as another user: SIGINT/SIGTERM are forwarded to it.
    pub signals_to_other_user: bool,
}

/// The set kept after the first attach: what attaching a uprobe later takes
/// (a library loaded later, a new process with --all), reading the traced
/// processes, and what `later` says; of those, only what is held.
pub fn kept_after_attach(later: Later) -> HashSet<Capability> {
    let held = caps::read(None, CapSet::Permitted).unwrap_or_default();
    let mut keep: HashSet<Capability> = [
        Capability::CAP_BPF,
        Capability::CAP_PERFMON,
        Capability::CAP_SYS_PTRACE,
    ]
    .into();
    if held.contains(&Capability::CAP_SYS_ADMIN) && uprobes_need_sys_admin() {
        keep.insert(Capability::CAP_SYS_ADMIN);
    }
    if later.servers_or_host {
        keep.insert(Capability::CAP_DAC_READ_SEARCH);
    }
    if later.signals_to_other_user {
        keep.insert(Capability::CAP_KILL);
    }
    keep.retain(|c| held.contains(c));
    keep
}

/// Whether a uprobe attach needs CAP_SYS_ADMIN on this kernel: tried with
/// it lowered from the effective set for a moment (CAP_PERFMON raised).
fn uprobes_need_sys_admin() -> bool {
    let before = effective();
    let _ = caps::raise(None, CapSet::Effective, Capability::CAP_PERFMON);
    if caps::drop(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).is_err() {
        return true;
    }
    let allowed = uprobes_allowed();
    let _ = caps::set(None, CapSet::Effective, &before);
    // Unknown counts as needed: losing later attaches costs more than keeping it.
    !matches!(allowed, Ok(true))
}

/// After the first attach: every thread keeps only [`kept_after_attach`]
/// (effective and permitted), nothing inheritable or ambient. Returns the
/// kept set.
pub fn drop_after_attach(later: Later) -> Result<HashSet<Capability>, PrivilegesError> {
    let keep = kept_after_attach(later);
    super::privileges_drop::drop_all_but(&keep)?;
    log::info!(
        "capabilities kept after attach: {} (CapEff {:016x})",
        if keep.is_empty() {
            "none".into()
        } else {
            names(&keep)
        },
        mask(&keep)
    );
    Ok(keep)
}
