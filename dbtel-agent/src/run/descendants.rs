//! `-- command`: the processes it starts are followed too. The kernel side
//! adds each fork of a followed process to FOLLOWED and reports its execs,
//! stopping the process before the new program's first instruction; here it
//! is probed (its program, its loader's hook, held at each load as the
//! command is) and let go. A child that forks without exec runs the program
//! it was forked from, whose probes are its parent's: it is not traced
//! (probes are per process) — README says so.

use super::{command::program_name, loads::Continue, Agent};
use crate::{events::Exec, export::ProcessMeta};

impl Agent {
    /// The command is followed from before its exec.
    pub(super) fn follow_command(&mut self, pid: u32) {
        self.followed.insert(pid);
        if let Err(e) = self.probes.follow_descendants(pid) {
            log::warn!(
                "processes the command starts cannot be followed ({e}): only the command itself is traced"
            );
        }
    }

    /// A followed process (the command, or one it started) ran a new program.
    pub(super) fn on_followed_exec(&mut self, e: &Exec) {
        let pid = e.at.pid;
        // Let go on every way out, once looked at.
        let _go = e.held.then(|| Continue(pid));
        if self.followed.insert(pid) {
            log::info!("process {pid}, started by the command, runs {}", e.path);
        } else {
            log::debug!("process {pid} runs {}", e.path);
        }
        if self.live.contains_key(&pid) {
            // The old program's queries end here; its probes go with it.
            self.end_queries(pid, e.at.ts_ns);
            self.flush_spans();
            self.probes.detach_pid(pid);
            self.inspected.retain(|(p, _)| *p != pid);
        } else {
            self.follow(ProcessMeta::of(pid, program_name(&e.path)));
        }
        self.rescan(pid, true);
    }

    /// The command exited: processes it started that still run are no
    /// longer traced (their spans so far are exported at exit).
    pub(super) fn let_go_of_descendants(&mut self) {
        let left: Vec<u32> = self
            .live
            .keys()
            .copied()
            .filter(|p| self.followed.contains(p))
            .collect();
        if !left.is_empty() {
            log::info!(
                "the command exited; {} process(es) it started still run and are no longer traced: {left:?}",
                left.len()
            );
        }
    }

    /// Stopping (FOLLOWED emptied, its records read): a descendant held at
    /// an exec whose record came too late is let go.
    pub(super) fn continue_descendants(&mut self) {
        let command = self.command.map(|(c, _)| c);
        for &pid in &self.followed {
            if Some(pid) != command && self.live.contains_key(&pid) {
                drop(Continue(pid));
            }
        }
    }
}
