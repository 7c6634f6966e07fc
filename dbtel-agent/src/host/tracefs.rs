//! tracefs, where tracepoint ids and record formats live. A fresh host often
//! has it unmounted; the agent mounts it (as `perf` and `bpftrace` do) when it
//! may, and otherwise says in one line how to.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

/// Where the kernel documents tracefs, and the debugfs location older setups use.
/// aya's tracepoint attach looks at the same two, in this order.
const MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted and the agent could not mount it at {}: {error}; mount it first: `mount -t tracefs tracefs /sys/kernel/tracing`", MOUNTS[0])]
    Mount { error: io::Error },
    /// Mounted, but its root (mode 0700) is closed to a non-root agent.
    #[error("cannot read tracefs at {}: {error}{}", MOUNTS[0], super::privileges::denied_hint(.error, false))]
    Unreadable { error: io::Error },
}

/// Where tracefs is mounted, mounting it at /sys/kernel/tracing if it is nowhere.
pub fn ensure() -> Result<PathBuf, TracefsError> {
    if let Some(p) = mounted() {
        return Ok(p);
    }
    if let Err(error) = std::fs::read_dir(MOUNTS[0]) {
        if error.kind() == io::ErrorKind::PermissionDenied {
            return Err(TracefsError::Unreadable { error });
        }
    }
    mount(Path::new(MOUNTS[0])).map_err(|error| TracefsError::Mount { error })?;
    log::info!("mounted tracefs at {} (it was not mounted)", MOUNTS[0]);
    mounted().ok_or_else(|| TracefsError::Mount {
        error: io::Error::other("mounted, yet still empty"),
    })
}

/// A tracefs mount is a directory with entries; its bare mount point is empty.
fn mounted() -> Option<PathBuf> {
    MOUNTS
        .iter()
        .map(Path::new)
        .find(|p| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some()))
        .map(Path::to_path_buf)
}

fn mount(at: &Path) -> io::Result<()> {
    let target = CString::new(at.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let fs = c"tracefs";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_says_what_to_do_in_one_line() {
        let e = TracefsError::Mount {
            error: io::Error::from_raw_os_error(libc::EPERM),
        };
        let m = e.to_string();
        assert!(!m.contains('\n'), "{m}");
        assert!(
            m.contains("mount -t tracefs tracefs /sys/kernel/tracing"),
            "{m}"
        );
        assert!(m.contains("Operation not permitted"), "{m}");
    }
}
