//! `-- command`: starting the command held before exec, waiting for it,
//! forwarding signals, and the libpq files it may load.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};

use crate::discover;

/// Candidate libpq files a command may load, known before it runs.
pub(super) fn command_candidates(program: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = resolve_program(program).into_iter().collect();
    for p in discover::system_libpq() {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

pub(super) fn program_name(program: &str) -> String {
    Path::new(program).file_name().map_or_else(|| program.to_string(), |n| n.to_string_lossy().into_owned())
}

fn resolve_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return std::fs::canonicalize(program).ok();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// Starts `command` held just before exec, so probes are in place before it
/// runs anything; dropping the returned fd lets it go. (std's spawn cannot be
/// used: it waits for the exec to happen.)
pub(super) fn spawn_held(command: &[String]) -> anyhow::Result<(u32, OwnedFd)> {
    use std::ffi::CString;
    let args: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .context("command contains a NUL byte")?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let failed = CString::new(format!("dbtel-agent: cannot run {}\n", command[0])).expect("no NUL");
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these descriptors.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: between fork and exec the child only calls async-signal-safe
    // functions (close, read, execvp, write, _exit) on memory prepared above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        unsafe {
            libc::close(wr.as_raw_fd());
            let mut b = 0u8;
            libc::read(rd.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::execvp(argv[0], argv.as_ptr());
            libc::write(2, failed.as_ptr().cast(), failed.as_bytes().len());
            libc::_exit(127);
        }
    }
    drop(rd);
    Ok((pid as u32, wr))
}

/// Waits for our child on a blocking thread; returns its exit code (128+signal
/// if killed).
pub(super) async fn wait_child(pid: u32) -> anyhow::Result<i32> {
    tokio::task::spawn_blocking(move || loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        if r == pid as i32 {
            return Ok(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(anyhow::anyhow!("waitpid({pid}): {e}"));
        }
    })
    .await?
}

/// In `--` mode a signal goes on to the command and the agent waits for it to
/// exit (bounded); otherwise the agent stops. Returns whether to keep running.
pub(super) fn forward_signal<F>(child: &Option<(u32, F)>, sig: i32, since: &mut Option<tokio::time::Instant>) -> bool {
    match child {
        Some((pid, _)) => {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(*pid as i32, sig) };
            since.get_or_insert_with(tokio::time::Instant::now);
            true
        }
        None => false,
    }
}
