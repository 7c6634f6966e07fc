//! `-- command`: starting the command held before exec, waiting for it,
//! forwarding signals.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};

use super::Agent;
use crate::{export::ProcessMeta, host::command_user::CommandUser, postgres::libpq::discover};

pub(super) fn program_name(program: &str) -> String {
    Path::new(program)
        .file_name()
        .map_or_else(|| program.to_string(), |n| n.to_string_lossy().into_owned())
}

impl Agent {
    /// Starts the command held before its exec, with its probes in place:
    /// on its program if libpq is linked in, on its loader's hook (held at
    /// each load) or else on the system's libpq. Returns its PID, what lets
    /// it go, and its part of the `dbtel: tracing` line.
    pub(super) fn start_command(
        &mut self,
        command: &[String],
        user: &CommandUser,
    ) -> anyhow::Result<(u32, OwnedFd, String)> {
        let (pid, release) = spawn_held(command, user)?;
        // Still the agent's own fork until it execs: name it after the command.
        self.follow(ProcessMeta::of(pid, program_name(&command[0])));
        if self.host.is_none() {
            self.follow_command(pid);
        }
        log::info!(
            "{} runs as {} (uid {}) with no capability",
            command[0],
            user.name,
            user.uid()
        );
        let mut line = format!("pid {pid} ({})", command[0]);
        // Its program itself may have libpq linked in.
        let program = resolve_program(&command[0]);
        if let Some(path) = &program {
            let p = path.to_string_lossy().into_owned();
            if let Some(t) = self.claim(pid, &p, path)? {
                let n = self.trace_found(&t)?;
                self.inspected.insert((pid, p.clone()));
                line.push_str(&format!(": {n} probes on {p}"));
            }
        }
        if self.host.is_some() {
            // --all probes every libpq for every process already.
        } else if let Err(why) = self.watch_command(pid, program.as_deref()) {
            // Without the loader's hook, the libpq it is likeliest to load is made ready.
            log::warn!("{}: its library loads cannot be watched ({why}): a client library other than the system's libpq is found within 250 ms of its load", command[0]);
            for path in discover::system_libpq() {
                let p = path.to_string_lossy().into_owned();
                if let Some(t) = discover::inspect(pid, &p, &path)? {
                    let n = self.trace(&t)?;
                    self.inspected.insert((pid, p.clone()));
                    line.push_str(&format!(": {n} probes ready on {p}, should it load it"));
                }
            }
        } else {
            line.push_str(
                ": from its start, each client library it loads is probed before its first call",
            );
        }
        Ok((pid, release, line))
    }
}

/// The file `program` runs, as execvp will find it.
pub(super) fn resolve_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return std::fs::canonicalize(program).ok();
    }
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// Starts `command` held just before exec, so probes are in place before it
/// runs anything; dropping the returned fd lets it go. (std's spawn cannot be
/// used: it waits for the exec to happen.)
///
/// Should the agent die without continuing it (SIGKILL) while the kernel
/// side holds it stopped at a library load, the kernel sends it SIGCONT: its
/// parent-death signal, kept across exec (called from the main thread, which
/// lives as long as the agent: the signal follows the forking thread).
///
/// Once let go, it takes `user`'s credentials (no capability) before exec.
pub(super) fn spawn_held(command: &[String], user: &CommandUser) -> anyhow::Result<(u32, OwnedFd)> {
    use std::ffi::CString;
    let args: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .context("command contains a NUL byte")?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let failed = CString::new(format!("dbtel-agent: cannot run {}\n", command[0])).expect("no NUL");
    let as_user = CString::new(format!(
        "dbtel-agent: cannot run {} as {}: ",
        command[0], user.name
    ))
    .context("user name contains a NUL byte")?;
    let env = user.environment();
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: getpid has no preconditions.
    let agent = unsafe { libc::getpid() };
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these descriptors.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: between fork and exec the child only calls async-signal-safe
    // functions (close, read, prctl, set*id, capset, signal, execvpe, write, _exit)
    // on memory prepared above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGCONT as libc::c_ulong);
            if libc::getppid() != agent {
                libc::_exit(127); // the agent is already gone: nothing would trace it
            }
            libc::close(wr.as_raw_fd());
            let mut b = 0u8;
            libc::read(rd.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            if let Err(what) = user.apply_in_child() {
                libc::write(2, as_user.as_ptr().cast(), as_user.as_bytes().len());
                libc::write(2, what.as_ptr().cast(), what.to_bytes().len());
                libc::write(2, c"\n".as_ptr().cast(), 1);
                libc::_exit(126);
            }
            // Changing credentials cleared the parent-death signal.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGCONT as libc::c_ulong);
            if libc::getppid() != agent {
                libc::_exit(127);
            }
            // The signals the agent forwards must act: an agent started with
            // them ignored (a background job of a script) would pass that on.
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            libc::execvpe(argv[0], argv.as_ptr(), envp.as_ptr());
            libc::write(2, failed.as_ptr().cast(), failed.as_bytes().len());
            libc::_exit(127);
        }
    }
    drop(rd);
    Ok((pid as u32, wr))
}

/// True while the command has not exec'd yet (it runs the agent's executable).
pub(super) fn still_the_agent(pid: u32) -> bool {
    let exe = |p: &str| crate::host::process::file_id(Path::new(p));
    exe(&format!("/proc/{pid}/exe")) == exe("/proc/self/exe")
}

/// Waits for our child on a blocking thread; returns its exit code (128+signal
/// if killed). A stop (the kernel side holding it at a library load) is no
/// exit: waitpid without WUNTRACED does not report it, and a status that is
/// neither an exit nor a kill is waited past.
pub(super) async fn wait_child(pid: u32) -> anyhow::Result<i32> {
    tokio::task::spawn_blocking(move || loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        if r == pid as i32 {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(128 + libc::WTERMSIG(status));
            }
            continue;
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
pub(super) fn forward_signal<F>(
    child: &Option<(u32, F)>,
    sig: i32,
    since: &mut Option<tokio::time::Instant>,
) -> bool {
    match child {
        Some((pid, _)) => {
            // Continued too, as shells do for a stopped job: a command held
            // at a load or an exec must get the signal now, not after the
            // agent has looked (it is stopping anyway).
            // SAFETY: plain kill(2) on our own child.
            unsafe {
                libc::kill(*pid as i32, sig);
                libc::kill(*pid as i32, libc::SIGCONT);
            }
            since.get_or_insert_with(tokio::time::Instant::now);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by wait_child, the code under test
    fn a_stopped_child_is_not_an_exited_one() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let child = std::process::Command::new("sh")
            .args(["-c", "kill -STOP $$; exit 7"])
            .spawn()
            .unwrap();
        let pid = child.id();
        rt.block_on(async {
            let mut wait = Box::pin(wait_child(pid));
            let stopped = || {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") T"))
            };
            while !stopped() {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            let early =
                tokio::time::timeout(std::time::Duration::from_millis(200), &mut wait).await;
            assert!(early.is_err(), "the stop was taken for an exit: {early:?}");
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            assert_eq!(wait.await.unwrap(), 7);
        });
    }

    #[test]
    fn the_command_gets_sigcont_when_the_agent_dies() {
        // A process of its own starts a command with spawn_held and exits
        // while the command is stopped (see the helper below).
        let mark = std::env::temp_dir().join(format!("dbtel-pdeath-{}", std::process::id()));
        let _ = std::fs::remove_file(&mark);
        let script = format!("kill -STOP $$; echo continued > {}", mark.display());
        let forked = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "run::command::tests::spawn_held_child_of_a_dying_parent",
                "--ignored",
                "--quiet",
            ])
            .env("DBTEL_PDEATH_SCRIPT", &script)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(forked.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&mark)
            .map(|s| s.trim().to_string())
            .ok()
            .as_deref()
            != Some("continued")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the command stayed stopped after its parent died"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&mark);
    }

    /// Helper run by the test above in a process of its own: starts a command
    /// with spawn_held, lets it stop itself, then exits without continuing it.
    #[test]
    #[ignore]
    fn spawn_held_child_of_a_dying_parent() {
        let Ok(script) = std::env::var("DBTEL_PDEATH_SCRIPT") else {
            return;
        };
        let user = CommandUser::choose(None, None, None).unwrap();
        let (pid, release) = spawn_held(&["sh".into(), "-c".into(), script], &user).unwrap();
        drop(release);
        while !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") T"))
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // Exits now, its child still stopped.
    }
}
