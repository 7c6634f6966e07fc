//! Library loads seen by the loader's hook (see crate::host::loader): a process
//! mapped new objects, and a libpq among them is probed before the program
//! can call it. The `--` command is held stopped meanwhile (the kernel side
//! sends it SIGSTOP) and always continued; other processes are only looked
//! at at once, without a hold.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::Agent;
use crate::{events::Origin, export::clock::Clock, host::loader};

/// Sends SIGCONT when dropped: a held process is let go on every way out of
/// its handling (an error, a panic unwinding).
pub(super) struct Continue(pub(super) u32);

impl Drop for Continue {
    fn drop(&mut self) {
        // SAFETY: kill(2). The process cannot exit while stopped (but for
        // SIGKILL), so its PID is not yet anyone else's.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// How long held processes waited, from the load to their SIGCONT.
#[derive(Debug, Default)]
pub(super) struct Holds {
    pub count: u64,
    pub total: Duration,
    pub longest: Duration,
}

impl Holds {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.total += d;
        self.longest = self.longest.max(d);
    }

    /// One line for the exit log, if anything was held.
    pub fn report(&self, program: &str) -> Option<String> {
        (self.count > 0).then(|| {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            format!(
                "held {program} at {} library loads until its libraries were looked at: {:.2} ms each on average, {:.2} ms at most",
                self.count,
                ms(self.total) / self.count as f64,
                ms(self.longest)
            )
        })
    }
}

impl Agent {
    /// The loader finished a load in `at.pid`: its new objects are looked at
    /// (and a libpq among them probed) before it goes on.
    pub(super) fn on_loaded(&mut self, at: Origin, held: bool) {
        // Lazily: a Continue made and dropped at once would send SIGCONT anyway.
        let _go_on = held.then(|| Continue(at.pid));
        let seen = Clock::monotonic_now_ns();
        self.rescan(at.pid, true);
        if held {
            let now = Clock::monotonic_now_ns();
            log::debug!(
                "process {}: load seen after {} µs, looked at in {} µs",
                at.pid,
                seen.saturating_sub(at.ts_ns) / 1000,
                (now - seen) / 1000
            );
            self.holds
                .add(Duration::from_nanos(now.saturating_sub(at.ts_ns)));
        }
    }

    /// Probes the hook of the loaders a command will run under, before it
    /// runs, holding it at each load. Err: none could be probed (why).
    pub(super) fn watch_command(&mut self, pid: u32, program: Option<&Path>) -> Result<(), String> {
        let mut why = Vec::new();
        let mut hooked = 0;
        for path in loader::for_command(program) {
            let p = path.to_string_lossy().into_owned();
            match self.hook_loader(pid, &p, &path, true) {
                Ok(true) => hooked += 1,
                Ok(false) => why.push(format!("{p} has no debugger hook")),
                Err(e) => why.push(e),
            }
        }
        if hooked == 0 {
            return Err(if why.is_empty() {
                "no dynamic loader found".into()
            } else {
                why.join("; ")
            });
        }
        Ok(())
    }

    /// Probes the hook of every loader a traced process maps (--pid: no hold).
    pub(super) fn watch_loads(&mut self, pid: u32) {
        let Ok(paths) = crate::host::process::executable_mappings(pid) else {
            return;
        };
        for path in paths.into_iter().filter(|p| loader::looks_like_loader(p)) {
            let host = PathBuf::from(format!("/proc/{pid}/root{path}"));
            if let Err(e) = self.hook_loader(pid, &path, &host, false) {
                log::warn!("process {pid}: {e}: a client library it loads later is found within 250 ms, not at once");
            }
        }
    }

    /// Probes one loader's hook for `pid` (host-wide: for every process).
    /// Ok(false): the file is not a loader with the hook.
    pub(super) fn hook_loader(
        &mut self,
        pid: u32,
        path: &str,
        host_path: &Path,
        hold: bool,
    ) -> Result<bool, String> {
        if crate::host::process::file_id(host_path)
            .is_some_and(|id| self.probes.has_loader(pid, id))
        {
            return Ok(true); // the one hooked before its exec, say
        }
        let ld = match loader::inspect(path, host_path) {
            Ok(Some(ld)) => ld,
            Ok(None) => return Ok(false),
            Err(e) => return Err(e.to_string()),
        };
        match self.probes.attach_loader(pid, &ld, hold) {
            Ok(new) => {
                if new {
                    log::debug!(
                        "{path}: library loads watched at +{:#x} (process {pid}, hold: {hold})",
                        ld.offset
                    );
                }
                Ok(true)
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_reported_in_milliseconds() {
        let mut h = Holds::default();
        assert_eq!(h.report("python3"), None);
        h.add(Duration::from_micros(500));
        h.add(Duration::from_micros(1500));
        assert_eq!(
            h.report("python3").unwrap(),
            "held python3 at 2 library loads until its libraries were looked at: 1.00 ms each on average, 1.50 ms at most"
        );
    }

    #[test]
    fn continue_resumes_a_stopped_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let state = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap()
                .rsplit_once(") ")
                .unwrap()
                .1
                .chars()
                .next()
                .unwrap()
        };
        while state() != 'T' {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(Continue(pid));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while state() == 'T' {
            assert!(std::time::Instant::now() < deadline, "still stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
