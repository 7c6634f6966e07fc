//! PostgreSQL servers: probe sites on their executables, and the set of
//! server processes (SERVER_PIDS) the kernel side emits for.

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData},
    programs::uprobe::{UProbeAttachPoint, UProbeScope},
};
use dbtel_common::{ServerProc, SiteSpec, MAX_SITES};

use super::{AttachError, Probes};
use crate::postgres::server::target::ServerTarget;

impl Probes {
    /// Traces a PostgreSQL server: every process of its postmaster, including
    /// backends forked later, and no other process running the same binary.
    ///
    /// The probes sit on the executable for all processes (a pid-filtered
    /// uprobe follows one address space, and every backend is a new one); the
    /// program emits only for PIDs in SERVER_PIDS, which a fork tracepoint
    /// extends in the kernel, so a backend is traced from its first
    /// instruction. Other servers on the same binary pay a trap per probe hit
    /// but emit nothing. Returns the number of probe sites placed (0 if the
    /// executable was already probed).
    pub fn attach_server(&mut self, t: &ServerTarget) -> Result<usize, AttachError> {
        let placed = self.attach_server_file(t)?;
        // The postmaster first, then its children: a fork in between is caught
        // by the tracepoint, which is already on.
        let mut pids = self.server_pids()?;
        pids.insert(t.postmaster, ServerProc::of(t.postmaster), 0)?;
        for pid in crate::postgres::server::target::processes_of(t.postmaster) {
            pids.insert(pid, ServerProc::of(t.postmaster), 0)?;
            // Exited between the scan and the insert: its exit went by unseen.
            if !crate::host::process::process_exists(pid) {
                let _ = pids.remove(&pid);
            }
        }
        Ok(placed)
    }

    /// True if this server executable's probe sites are placed.
    pub fn has_server_file(&self, id: (u64, u64)) -> bool {
        self.server_files.contains_key(&id)
    }

    /// Places the probe sites on a server executable, once per file (no
    /// process emits until it is in SERVER_PIDS). Returns the sites placed.
    pub fn attach_server_file(&mut self, t: &ServerTarget) -> Result<usize, AttachError> {
        self.follow_processes()?;
        let mut placed = 0;
        if !self.server_files.contains_key(&t.file_id) {
            if self.sites + t.sites.len() as u32 > MAX_SITES {
                return Err(AttachError::TooManySites);
            }
            let mut specs: Array<_, SiteSpec> =
                Array::try_from(self.ebpf.map_mut("SITES").expect("SITES map"))?;
            let first = self.sites;
            for (i, s) in t.sites.iter().enumerate() {
                specs.set(first + i as u32, s.spec, 0)?;
            }
            for (i, s) in t.sites.iter().enumerate() {
                let program = if s.at_return {
                    "server_site_ret"
                } else {
                    "server_site"
                };
                let p = self.uprobe(program)?;
                let point = UProbeAttachPoint {
                    location: s.offset.into(),
                    cookie: Some((first + i as u32) as u64),
                };
                p.attach(point, &t.host_path, UProbeScope::AllProcesses)
                    .map_err(|error| {
                        // The kernel's answer to a second ref_ctr_offset on one site.
                        if s.semaphore && super::error::os_error(&error) == Some(libc::EINVAL) {
                            AttachError::SemaphoreTaken {
                                pid: t.postmaster,
                                path: t.exe.clone(),
                                probe: s.name,
                                error,
                            }
                        } else {
                            AttachError::Attach {
                                pid: t.postmaster,
                                path: t.exe.clone(),
                                function: s.name,
                                error,
                            }
                        }
                    })?;
            }
            self.sites += t.sites.len() as u32;
            self.server_files.insert(t.file_id, t.sites.len());
            placed = t.sites.len();
        }
        Ok(placed)
    }

    /// --all: a process exec'd a PostgreSQL server binary; trace it and,
    /// through the fork tracepoint, every process it forks from now on.
    pub fn trace_server_process(&mut self, pid: u32) -> Result<(), AttachError> {
        self.server_pids()?.insert(pid, ServerProc::of(pid), 0)?;
        Ok(())
    }

    /// Stops emitting for one server process (the agent's own catalog sessions).
    pub fn untrace_backend(&mut self, pid: u32) {
        if let Ok(mut pids) = self.server_pids() {
            let _ = pids.remove(&pid);
        }
    }

    /// Stops emitting for a postmaster's processes (its probes stay on the file).
    pub fn untrace_server(&mut self, postmaster: u32) {
        if let Ok(mut pids) = self.server_pids() {
            let gone: Vec<u32> = pids
                .iter()
                .flatten()
                .filter(|(_, p)| p.owner == postmaster)
                .map(|(k, _)| k)
                .collect();
            for k in gone {
                let _ = pids.remove(&k);
            }
        }
    }

    /// The completion the kernel side holds for a server process, if any
    /// (see dbtel_common::Held).
    pub fn held_completion(&mut self, pid: u32) -> Option<dbtel_common::Held> {
        let proc = self.server_pids().ok()?.get(&pid, 0).ok()?;
        (proc.held.ts_ns != 0).then_some(proc.held)
    }

    /// The traced server processes (tgid → postmaster), as the kernel side filters by them.
    pub(super) fn server_pids(
        &mut self,
    ) -> Result<BpfHashMap<&mut MapData, u32, ServerProc>, aya::maps::MapError> {
        BpfHashMap::try_from(self.ebpf.map_mut("SERVER_PIDS").expect("SERVER_PIDS map"))
    }
}
