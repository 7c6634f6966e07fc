//! The main loop's part of --all (see crate::run::hostwide): the first look at the
//! host, choosing processes, new programs, new servers.

use std::{path::Path, time::Instant};

use super::{Agent, Found};
use crate::{
    events::Exec,
    export::ProcessMeta,
    host::loader,
    host::select::container_id,
    postgres::libpq::discover,
    postgres::libpq::reconstruct::ClientSpan,
    postgres::server::{installed, target},
    run::hostwide::{self, FileKind},
};

impl Agent {
    fn host(&mut self) -> &mut hostwide::HostWide {
        self.host.as_mut().expect("host-wide tracing")
    }

    /// The first look: every running server (chosen ones traced) and every
    /// libpq file mapped anywhere (probed for all processes). Returns one
    /// line per server and per file for the `dbtel: tracing` line.
    pub(super) async fn scan_host(&mut self) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        let pids = hostwide::all_pids();
        let postmasters =
            hostwide::postmasters(&pids, |pid| self.judge_exe(pid) == FileKind::Server);
        for pm in postmasters {
            if let Some(line) = self.consider_server(pm).await? {
                lines.push(line);
            }
        }
        self.read_installed_servers();
        // The system's loader (its hook reports every load at once: a libpq
        // loaded later is probed without waiting for a rescan), the system's
        // libpq (what a program started later will load), then every mapped one.
        for path in loader::system_loader()
            .into_iter()
            .chain(discover::system_libpq())
        {
            let p = path.to_string_lossy().into_owned();
            lines.extend(self.probe_file(std::process::id(), &p, &path));
        }
        for pid in pids {
            lines.extend(self.probe_mappings(pid));
        }
        Ok(lines)
    }

    /// The host's installed server executables, read before they run (see
    /// postgres::server::installed): one started later is traced at its exec.
    fn read_installed_servers(&mut self) {
        let path = std::env::var_os("PATH");
        for exe in installed::installed_servers(Path::new("/"), path.as_deref()) {
            let Some(id) = crate::host::process::file_id(&exe) else {
                continue;
            };
            if self.host().exes.contains_key(&id) {
                continue;
            }
            let name = exe.to_string_lossy().into_owned();
            match target::inspect_file(name.clone(), exe) {
                Ok(Some(t)) => {
                    log::debug!("{name}: {} probe sites, placed when it runs", t.sites.len());
                    self.host().read_server(t);
                }
                // Judged again (and any warning given) when a process runs it.
                Ok(None) => log::debug!("{name}: not a PostgreSQL server dbtel knows"),
                Err(e) => log::debug!("{e}"),
            }
        }
    }

    /// Kind of a process's executable, judged once per file.
    fn judge_exe(&mut self, pid: u32) -> FileKind {
        let Some(id) = crate::host::process::file_id(&hostwide::exe_host_path(pid)) else {
            return FileKind::Neither;
        };
        if let Some(k) = self.host().exes.get(&id) {
            return *k;
        }
        let kind = match target::inspect(pid) {
            Ok(Some(t)) => {
                self.host().read_server(t);
                return FileKind::Server;
            }
            Ok(None) => FileKind::Neither,
            Err(e @ target::ServerError::Read { .. }) => {
                // Not kept: the process may have gone before its file was read (pg_ctl's
                // `postgres -V`), and the next one running this file must be judged.
                log::debug!("process {pid}: {e}");
                return FileKind::Neither;
            }
            // A server build dbtel cannot trace (said once per file).
            Err(e) => {
                log::warn!("{e}");
                FileKind::Neither
            }
        };
        self.host().judged_exe(id, kind);
        kind
    }

    /// A server process's target: its file's probe sites as read when the
    /// file was judged (or at the start, if installed), else read now.
    fn server_target(
        &mut self,
        pid: u32,
    ) -> Result<Option<target::ServerTarget>, target::ServerError> {
        let read = crate::host::process::file_id(&hostwide::exe_host_path(pid))
            .and_then(|id| self.host().server_files.get(&id).cloned());
        match read {
            Some(file) => target::run_by(pid, file).map(Some),
            None => target::inspect(pid),
        }
    }

    /// Traces a running postmaster if the selectors choose it.
    async fn consider_server(&mut self, pm: u32) -> anyhow::Result<Option<String>> {
        let facts = hostwide::server_facts(pm);
        if !self.host().selectors.chooses(&facts) {
            log::info!("PostgreSQL server {pm} ({}) not selected", facts.exe);
            self.probes.untrace_server(pm);
            return Ok(None);
        }
        match self.server_target(pm) {
            Ok(Some(t)) => self.trace_server(t).await,
            Ok(None) => Ok(None),
            Err(e) => {
                log::warn!("PostgreSQL server {pm}: {e}");
                Ok(None)
            }
        }
    }

    /// Probes the libpq files `pid` maps that no one has looked at yet.
    pub(super) fn probe_mappings(&mut self, pid: u32) -> Vec<String> {
        let files = hostwide::new_mappings(self.host(), pid);
        files
            .into_iter()
            .flat_map(|(path, host_path, _)| self.probe_file(pid, &path, &host_path))
            .collect()
    }

    /// Probes one file for every process if it is (or has) libpq.
    fn probe_file(&mut self, pid: u32, path: &str, host_path: &Path) -> Option<String> {
        let id = crate::host::process::file_id(host_path)?;
        match self.host().files.get(&id).copied() {
            // A server executable already probed: this process is another server.
            Some(FileKind::Server) if !self.engine_servers.contains(&pid) => {
                return self.another_server(pid, path, host_path)
            }
            Some(_) => return None,
            None => {}
        }
        if loader::looks_like_loader(path) {
            let kind = match self.hook_loader(pid, path, host_path, false) {
                Ok(true) => FileKind::Loader,
                Ok(false) => FileKind::Neither,
                Err(e) => {
                    log::warn!("{e}: libpq loaded through {path} is found by rescans only");
                    FileKind::Neither
                }
            };
            self.host().judged(id, kind);
            return None;
        }
        let kind = match self.claim(pid, path, host_path) {
            Ok(Some(t)) => match self.trace_found(&t) {
                Ok(n) => {
                    let server = matches!(&t, Found::Engine(p) if matches!(p.layout, crate::engine::Layout::Sites(_)));
                    self.host().judged(
                        id,
                        if server {
                            FileKind::Server
                        } else {
                            FileKind::Client
                        },
                    );
                    return Some(format!("{n} probes on {path} (all processes)"));
                }
                // Its process went away meanwhile (the file was reached through
                // /proc/PID/root): judged again when the next process maps it.
                Err(e) if !Path::new(&format!("/proc/{pid}")).exists() => {
                    log::debug!("process {pid} exited before {path} was probed: {e:#}");
                    return None;
                }
                Err(e) => {
                    log::warn!("{path}: {e:#}");
                    FileKind::Neither
                }
            },
            Ok(None) => FileKind::Neither,
            // Unreadable now (its process went away): judged when next seen.
            Err(e) if matches!(e.downcast_ref(), Some(discover::DiscoverError::Read { .. })) => {
                log::debug!("process {pid}: {e}");
                return None;
            }
            Err(e) => {
                log::warn!("process {pid}: {e:#}");
                FileKind::Neither
            }
        };
        self.host().judged(id, kind);
        None
    }

    /// A second process running a server executable whose probes are placed
    /// (host-wide, on the file): it joins the traced servers.
    fn another_server(&mut self, pid: u32, path: &str, host_path: &Path) -> Option<String> {
        match self.claim(pid, path, host_path) {
            Ok(Some(t)) => {
                if let Err(e) = self.trace_found(&t) {
                    log::warn!("process {pid}: {e:#}");
                }
            }
            Ok(None) => {}
            Err(e) => log::debug!("process {pid}: {e:#}"),
        }
        None
    }

    /// A process's first event: trace it, or tell the kernel to leave it out.
    pub(super) fn choose_client(&mut self, pid: u32) -> bool {
        if self.live.contains_key(&pid) {
            return true;
        }
        if self.host().excluded.contains(&pid) {
            return false;
        }
        let mut facts = self.host().client_facts(pid);
        if self.engine_servers.contains(&pid) {
            // A server is chosen by the port it listens on.
            facts.listening = Some(
                crate::host::listening::server_listening(pid)
                    .1
                    .into_iter()
                    .collect(),
            );
        }
        if !self.host().selectors.chooses(&facts) {
            self.probes.exclude_client(pid);
            self.host().excluded.insert(pid);
            log::debug!("process {pid} ({}) not selected", facts.exe);
            return false;
        }
        let executable = Path::new(&facts.exe).file_name().map_or_else(
            || crate::host::process::exe_name(pid),
            |n| n.to_string_lossy().into_owned(),
        );
        let container = facts.cgroup.as_deref().and_then(container_id);
        log::info!("tracing process {pid} ({executable})");
        self.follow(ProcessMeta {
            pid,
            executable,
            container_id: container,
        });
        true
    }

    /// A new program: a server binary is traced before it can fork a backend.
    pub(super) fn on_exec(&mut self, e: &Exec) {
        let Some(host) = &mut self.host else { return };
        host.on_exec(e, Instant::now());
        let pid = e.at.pid;
        if self.judge_exe(pid) != FileKind::Server
            || !hostwide::cmdline(pid).is_some_and(|a| hostwide::starts_postmaster(&a))
        {
            return;
        }
        let facts = self.host().client_facts(pid);
        // The port is known once it runs (consider_server).
        let mut without_port = facts.clone();
        without_port.listening = None;
        if !self.host().selectors.chooses(&without_port) {
            return;
        }
        // Traced before its probes are placed: the fork tracepoint follows it
        // from now on, and probes placed on a file reach the backends already
        // forked. It accepts connections some 100 ms after its exec.
        if let Err(e) = self.probes.trace_server_process(pid) {
            log::warn!("process {pid}: {e}");
            return;
        }
        // Its probe sites on this file, if no other server had it.
        let probed = crate::host::process::file_id(&hostwide::exe_host_path(pid))
            .is_some_and(|id| self.probes.has_server_file(id));
        if !probed {
            match self.server_target(pid) {
                Ok(Some(t)) => {
                    if let Err(e) = self.probes.attach_server_file(&t) {
                        log::warn!("{}: {e}", t.exe);
                        return self.probes.untrace_server(pid);
                    }
                }
                // It exec'd something else, or is gone.
                _ => return self.probes.untrace_server(pid),
            }
        }
        self.host().pending_servers.push(pid);
    }

    /// New processes' libraries; exec'd servers that now run.
    pub(super) async fn host_housekeeping(&mut self) {
        if self.host.is_none() {
            return;
        }
        for pid in self.host().due_rescans(Instant::now()) {
            self.rescan(pid, true);
        }
        let pending = std::mem::take(&mut self.host().pending_servers);
        for pid in pending {
            if !crate::host::process::process_exists(pid) {
                self.probes.untrace_server(pid);
            } else if !hostwide::is_running_postmaster(pid) {
                self.host().pending_servers.push(pid);
            } else {
                match self.consider_server(pid).await {
                    Ok(Some(line)) => log::info!("new {line}"),
                    Ok(None) => {}
                    Err(e) => log::warn!("PostgreSQL server {pid}: {e:#}"),
                }
            }
        }
    }

    /// With --port, spans of connections to other ports are left out.
    pub(super) fn port_selected(&mut self, s: &ClientSpan) -> bool {
        let Some(host) = &mut self.host else {
            return true;
        };
        if !host.selectors.by_port() {
            return true;
        }
        match s {
            ClientSpan::Query(q) => {
                let ok = q
                    .conn_info
                    .as_ref()
                    .is_some_and(|c| host.selectors.port_selected(&c.port));
                host.conn_selected.insert((q.pid, q.conn), ok);
                ok
            }
            ClientSpan::Txn(t, _) => host
                .conn_selected
                .get(&(t.pid, t.conn))
                .copied()
                .unwrap_or(false),
        }
    }
}
