//! Processes followed in the kernel: the sched tracepoints (forks, exits,
//! execs), their record layouts read from tracefs, and the `--` command's
//! descendants (FOLLOWED).

use std::path::Path;

use aya::programs::TracePoint;

use super::{AttachError, Probes};

pub(super) const TRACEPOINTS: &[(&str, &str)] = &[
    ("server_fork", "sched_process_fork"),
    ("proc_exit", "sched_process_exit"),
];
/// Host-wide tracing only: every exec, so new processes are known before their first query.
pub(super) const EXEC_TRACEPOINT: (&str, &str) = ("proc_exec", "sched_process_exec");

/// Where sched_process_fork's parent_pid and child_pid are in this kernel's
/// tracepoint record (the layout changed in 6.x: comm became __data_loc).
pub(super) fn fork_offsets(tracefs: &Path) -> Option<(u32, u32)> {
    Some((
        tracepoint_field(tracefs, "sched_process_fork", "parent_pid")?,
        tracepoint_field(tracefs, "sched_process_fork", "child_pid")?,
    ))
}

/// A field's offset in a sched tracepoint's record, from its tracefs format.
pub(super) fn tracepoint_field(tracefs: &Path, event: &str, name: &str) -> Option<u32> {
    let format =
        std::fs::read_to_string(tracefs.join(format!("events/sched/{event}/format"))).ok()?;
    // "\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;"
    format
        .lines()
        .find(|l| {
            l.split(';')
                .next()
                .is_some_and(|f| f.ends_with(&format!(" {name}")))
        })
        .and_then(|l| {
            l.split(';')
                .find_map(|p| p.trim().strip_prefix("offset:"))
                .and_then(|o| o.parse().ok())
        })
}

impl Probes {
    /// Forks and exits (and with --all, execs) followed in the kernel.
    pub(super) fn follow_processes(&mut self) -> Result<(), AttachError> {
        if self.tracepoints_on {
            return Ok(());
        }
        if let Err(e) = &self.tracefs {
            return Err(AttachError::Tracefs(e.clone()));
        }
        for &(name, event) in TRACEPOINTS {
            self.attach_sched(name, event)?;
        }
        self.tracepoints_on = true;
        if self.host_wide {
            self.follow_execs()?;
        }
        Ok(())
    }

    fn follow_execs(&mut self) -> Result<(), AttachError> {
        if self.exec_on {
            return Ok(());
        }
        let (name, event) = EXEC_TRACEPOINT;
        self.attach_sched(name, event)?;
        self.exec_on = true;
        Ok(())
    }

    /// One of the loaded tracepoint programs on sched:`event`.
    fn attach_sched(&mut self, name: &str, event: &'static str) -> Result<(), AttachError> {
        let p: &mut TracePoint = self
            .ebpf
            .program_mut(name)
            .expect("loaded")
            .try_into()
            .expect("tracepoint");
        p.attach("sched", event)
            .map_err(|error| AttachError::Tracepoint { what: event, error })?;
        Ok(())
    }

    /// `--` mode: the command's descendants (forks, then execs, each held
    /// until looked at) are reported from now on. Call before it runs.
    pub fn follow_descendants(&mut self, pid: u32) -> Result<(), AttachError> {
        self.follow_processes()?;
        self.follow_execs()?;
        let mut followed: aya::maps::HashMap<_, u32, u8> =
            aya::maps::HashMap::try_from(self.ebpf.map_mut("FOLLOWED").expect("FOLLOWED map"))?;
        followed.insert(pid, 1, 0)?;
        Ok(())
    }

    /// Stopping: no exec is held any more (the held are let go by the caller).
    pub fn stop_following(&mut self) {
        if let Some(map) = self.ebpf.map_mut("FOLLOWED") {
            if let Ok(mut followed) = aya::maps::HashMap::<_, u32, u8>::try_from(map) {
                let pids: Vec<u32> = followed.keys().filter_map(Result::ok).collect();
                for pid in pids {
                    let _ = followed.remove(&pid);
                }
            }
        }
    }

    /// --all: from now on every exec, fork and exit is followed; call before
    /// looking at the processes already running, so none slips between.
    pub fn start_host_wide(&mut self) -> Result<(), AttachError> {
        debug_assert!(self.host_wide);
        self.follow_processes().map_err(|e| match e {
            AttachError::Tracefs(why) => AttachError::HostWide(why),
            e => e,
        })
    }
}
