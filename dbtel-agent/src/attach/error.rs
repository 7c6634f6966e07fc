//! Why loading or attaching failed, as one line with the privileges hint last.

use aya::{programs::ProgramError, EbpfError};
use dbtel_common::{MAX_LAYOUTS, MAX_SITES};

use crate::host::privileges::{step_hint, Step};

/// One line per failure: the causes are folded into the message (with their
/// repetitions removed) because the hint about privileges must come last.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{0}")]
    Kernel(String),
    #[error("cannot load the eBPF programs: {}{}", chain(.0), step_hint(Step::Load))]
    Load(EbpfError),
    #[error("cannot load eBPF program {name}: {}{}", chain(.error), step_hint(Step::Load))]
    Program {
        name: &'static str,
        error: ProgramError,
    },
    #[error("cannot attach to {function} in {path} (process {pid}): {}{}", chain(.error), step_hint(Step::Uprobe))]
    Attach {
        pid: u32,
        path: String,
        function: &'static str,
        error: ProgramError,
    },
    /// dbtel attaches USDT probes without their semaphore (PostgreSQL's
    /// sites fire either way); the kernel refuses a probe whose semaphore
    /// setting differs from one already on the site.
    #[error("cannot attach to USDT probe {probe} in {path} (process {pid}): {}; the kernel refuses it so when another tracer (bpftrace, BCC) already probes this site with its semaphore: stop that tracer, or trace this server through its functions instead: --pg-server-probes uprobes", chain(.error))]
    SemaphoreTaken {
        pid: u32,
        path: String,
        probe: &'static str,
        error: ProgramError,
    },
    #[error("cannot enable BPF run statistics: {0}")]
    Stats(String),
    #[error("more than {MAX_LAYOUTS} distinct libpq builds")]
    TooManyLayouts,
    #[error("more than {MAX_SITES} server probe sites")]
    TooManySites,
    #[error("cannot follow {what} (tracepoint sched/{what}): {}{}", chain(.error), step_hint(Step::Tracepoint))]
    Tracepoint {
        what: &'static str,
        error: ProgramError,
    },
    #[error("cannot follow server forks: {0}")]
    Tracefs(String),
    #[error("cannot follow the host's processes: {0}")]
    HostWide(String),
    #[error("{0}")]
    Map(#[from] aya::maps::MapError),
}

/// The OS error number somewhere in an error's chain, if any.
pub(super) fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(n) = c
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(n);
        }
        cur = c.source();
    }
    None
}

/// An error and its causes as one line, skipping causes already quoted.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !out.contains(&m) {
            out = format!("{out}: {m}");
        }
        cur = c.source();
    }
    out
}
