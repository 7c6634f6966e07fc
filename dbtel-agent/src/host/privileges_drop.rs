//! Dropping capabilities in every thread of the agent. Capabilities belong
//! to threads, not processes: capset(2) and PR_CAPBSET_DROP change the
//! calling thread only, and by the time the probes are attached the agent
//! runs tokio workers, export and catalog threads. Each thread is sent a
//! signal whose handler makes the same async-signal-safe system calls (as
//! libcap's psx does), then every thread's /proc status is checked.

use std::{
    collections::HashSet,
    io,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use caps::Capability;

use super::privileges::{mask, PrivilegesError};

/// The kept set, low and high 32 bits, read by the handler.
static KEEP: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
static DONE: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The calling thread keeps only `KEEP`: bounding set first (that needs
/// CAP_SETPCAP, still effective then; without it, as a non-root agent given
/// ambient capabilities, the bounding set stays and matters only for exec,
/// which the agent never does), then ambient cleared, then capset.
/// Async-signal-safe: system calls on statics only.
fn drop_this_thread() -> bool {
    let keep =
        KEEP[0].load(Ordering::SeqCst) as u64 | (KEEP[1].load(Ordering::SeqCst) as u64) << 32;
    for cap in 0..64u64 {
        if keep & (1 << cap) == 0 {
            // SAFETY: prctl with integer arguments; EINVAL past the last capability, EPERM without CAP_SETPCAP.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: keep as u32,
            permitted: keep as u32,
            inheritable: 0,
        },
        CapData {
            effective: (keep >> 32) as u32,
            permitted: (keep >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: a v3 header and its two data words.
    unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) == 0 }
}

extern "C" fn on_signal(_: libc::c_int) {
    // SAFETY: __errno_location is the calling thread's errno; saved and restored around the handler.
    let saved = unsafe { *libc::__errno_location() };
    if drop_this_thread() {
        DONE.fetch_add(1, Ordering::SeqCst);
    } else {
        FAILED.fetch_add(1, Ordering::SeqCst);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

fn signal() -> libc::c_int {
    // glibc keeps the first real-time signals for itself; SIGRTMIN() is the first free one.
    libc::SIGRTMIN() + 7
}

/// Every thread of the agent keeps `keep` only (effective and permitted),
/// with no inheritable or ambient capability and (given CAP_SETPCAP) a
/// bounding set of `keep`. Checked in /proc/self/task afterwards.
pub fn drop_all_but(keep: &HashSet<Capability>) -> Result<(), PrivilegesError> {
    let bits = mask(keep);
    KEEP[0].store(bits as u32, Ordering::SeqCst);
    KEEP[1].store((bits >> 32) as u32, Ordering::SeqCst);
    // SAFETY: a zeroed sigaction with a handler that only makes system calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(signal(), &sa, std::ptr::null_mut()) != 0 {
            return Err(PrivilegesError::Drop {
                what: "sigaction",
                error: io::Error::last_os_error(),
            });
        }
    }
    if !drop_this_thread() {
        return Err(PrivilegesError::Drop {
            what: "capset",
            error: io::Error::last_os_error(),
        });
    }
    // SAFETY: no preconditions.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    // A thread started meanwhile by one not yet done inherits the old set:
    // rounds until every thread shows the kept one.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let behind = threads_behind(bits, me);
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline || FAILED.load(Ordering::SeqCst) > 0 {
            return Err(PrivilegesError::Threads(behind.len()));
        }
        for tid in behind {
            // SAFETY: tgkill to a thread of this process.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal()) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Threads (other than `me`) whose effective, permitted or ambient set is not `bits`.
fn threads_behind(bits: u64, me: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&tid| tid != me)
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
                .is_ok_and(|s| !shows(&s, bits))
        })
        .collect()
}

/// True when a status text's CapEff and CapPrm are `bits` and CapAmb and CapInh empty.
pub fn shows(status: &str, bits: u64) -> bool {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    field("CapEff:") == Some(bits)
        && field("CapPrm:") == Some(bits)
        && field("CapAmb:") == Some(0)
        && field("CapInh:") == Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_shows_the_kept_set_only_with_nothing_inheritable() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000280000\nCapEff:\t0000000000280000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";
        assert!(shows(s, 0x28_0000));
        assert!(!shows(s, 0xc0_0028_0000));
        let amb = s.replace("CapAmb:\t0000000000000000", "CapAmb:\t0000000000280000");
        assert!(!shows(&amb, 0x28_0000));
    }
}
