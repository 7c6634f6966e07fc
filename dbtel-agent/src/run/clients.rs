//! Client libraries in a process, whatever their engine: libpq (whose spans
//! the main loop joins with PostgreSQL's server side) and every registered
//! [`Engine`]'s library.

use std::path::{Path, PathBuf};

use super::Agent;
use crate::{
    engine::{Engine, Plan},
    events,
    host::process::{exe_name, executable_mappings},
    pipeline::sql::Text,
    postgres::{
        libpq::discover::{self, LibpqTarget},
        server::{
            side::CatalogSettings,
            target::{self, ServerTarget},
        },
    },
};

/// Every engine besides PostgreSQL's, whose client and server halves the
/// main loop drives itself (its server spans join its client spans).
/// Adding an engine adds a line here.
pub(super) fn engines(text: Text, catalog: &CatalogSettings) -> Vec<Box<dyn Engine>> {
    // --catalog-config is a libpq key=value file, or a MySQL option file
    // (with [groups]) for MariaDB servers.
    let option_file = catalog
        .config_file
        .clone()
        .filter(|f| crate::mysql::catalog::config::is_option_file(f));
    let mysql = crate::mysql::catalog::worker::Settings {
        enabled: catalog.enabled,
        file: option_file,
    };
    vec![Box::new(crate::mysql::Client::new(text, mysql))]
}

/// A client library found in a file a process maps.
pub(super) enum Found {
    Libpq(LibpqTarget),
    /// Another engine's library, and its plan.
    Engine(Plan),
}

impl Found {
    pub(super) fn pid(&self) -> u32 {
        match self {
            Found::Libpq(t) => t.pid,
            Found::Engine(p) => p.pid,
        }
    }

    pub(super) fn path(&self) -> &str {
        match self {
            Found::Libpq(t) => &t.path,
            Found::Engine(p) => &p.path,
        }
    }

    pub(super) fn host_path(&self) -> &Path {
        match self {
            Found::Libpq(t) => &t.host_path,
            Found::Engine(p) => &p.host_path,
        }
    }
}

/// The client library in one file, if it holds one. An error names a
/// library that cannot be traced (a libpq `DiscoverError::Read` when it
/// could not be read now).
pub(super) fn claim(
    engines: &[Box<dyn Engine>],
    pid: u32,
    path: &str,
    host_path: &Path,
) -> anyhow::Result<Option<Found>> {
    if let Some(t) = discover::inspect(pid, path, host_path)? {
        return Ok(Some(Found::Libpq(t)));
    }
    for e in engines {
        if let Some(plan) = e.claim(pid, path, host_path)? {
            return Ok(Some(Found::Engine(plan)));
        }
    }
    Ok(None)
}

/// The `--pid` targets: client libraries found, servers, and a refusal for
/// each other one (saying why: no such process, a missing capability, ...).
pub(super) fn inspect_pids(
    engines: &[Box<dyn Engine>],
    pids: &[u32],
) -> (Vec<Found>, Vec<ServerTarget>, Vec<anyhow::Error>) {
    let (mut targets, mut servers, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for &pid in pids {
        if let Err(e) = crate::host::privileges::check_process(pid) {
            refused.push(anyhow::Error::msg(e));
            continue;
        }
        match target::inspect(pid) {
            Ok(Some(t)) => servers.push(t),
            // Unreadable: find_clients says why (no such process, permissions).
            Ok(None) | Err(target::ServerError::Read { .. }) => match find_clients(engines, pid) {
                Ok(t) => targets.extend(t),
                Err(e) => refused.push(e),
            },
            Err(e) => refused.push(e.into()),
        }
    }
    (targets, servers, refused)
}

/// Every client library `pid` maps; an error if there is none.
pub(super) fn find_clients(engines: &[Box<dyn Engine>], pid: u32) -> anyhow::Result<Vec<Found>> {
    let mut found = Vec::new();
    for path in executable_mappings(pid)? {
        let host_path = PathBuf::from(format!("/proc/{pid}/root{path}"));
        found.extend(claim(engines, pid, &path, &host_path)?);
    }
    if found.is_empty() {
        return Err(anyhow::anyhow!(crate::engine::no_client_library(pid)));
    }
    Ok(found)
}

impl Agent {
    pub(super) fn claim(
        &self,
        pid: u32,
        path: &str,
        host_path: &Path,
    ) -> anyhow::Result<Option<Found>> {
        claim(&self.engines, pid, path, host_path)
    }

    /// Probes a client library found in a process. Returns the probes placed.
    pub(super) fn trace_found(&mut self, f: &Found) -> anyhow::Result<usize> {
        match f {
            Found::Libpq(t) => self.trace(t),
            Found::Engine(plan) => {
                for w in &plan.warnings {
                    log::warn!("{w}");
                }
                let n = self.probes.attach_plan(plan)?;
                if let Some(e) = self.engines.iter_mut().find(|e| e.id() == plan.engine) {
                    e.attached(plan);
                }
                if matches!(plan.layout, crate::engine::Layout::Sites(_)) {
                    self.engine_servers.insert(plan.pid);
                }
                if self.host.is_none() && !self.live.contains_key(&plan.pid) {
                    self.follow(crate::export::ProcessMeta::of(plan.pid, exe_name(plan.pid)));
                }
                self.inspected.insert((plan.pid, plan.path.clone()));
                Ok(n)
            }
        }
    }

    /// A record of an engine other than PostgreSQL's, for that engine.
    pub(super) fn on_engine_record(&mut self, data: &[u8]) {
        let Some(pid) = events::header(data).ok().map(|(_, at)| at.pid) else {
            self.summary.decode_errors += 1;
            return;
        };
        if let Some((c, used)) = &mut self.command {
            *used |= *c == pid;
        }
        if self.host.is_some() && !self.choose_client(pid) {
            return;
        }
        let id = events::engine_of(data);
        let Some(engine) = self.engines.iter_mut().find(|e| Some(e.id()) == id) else {
            self.summary.decode_errors += 1;
            return;
        };
        if let Err(e) = engine.on_record(data, &mut self.engine_spans) {
            self.summary.decode_errors += 1;
            log::warn!("undecodable {} event: {e}", engine.name());
        }
    }

    /// Probes a libpq found in a process.
    pub(super) fn trace(&mut self, t: &LibpqTarget) -> anyhow::Result<usize> {
        let plan = crate::postgres::libpq::plan::plan(t);
        for w in &plan.warnings {
            log::warn!("{w}");
        }
        let n = self.probes.attach_plan(&plan)?;
        match &t.result_points {
            Ok(points) => {
                for p in points {
                    log::debug!("PQgetResult: result probe at +{:#x} on `{}` ({:?} = result, {:?} = connection)", p.offset, p.instruction, p.res, p.conn);
                }
            }
            Err(why) => log::info!(
                "{}: PQgetResult's result point not found ({why}): entry and return probes instead (3 more traps per query)",
                t.path
            ),
        }
        let fast = t.result_points.is_ok();
        for (function, p) in &t.placements {
            // Entering and leaving pipeline mode: once per pipeline, whatever the probe costs.
            if (fast && *function == "PQgetResult")
                || matches!(*function, "PQenterPipelineMode" | "PQexitPipelineMode")
            {
                continue;
            }
            if !p.emulated {
                log::warn!(
                    "{function} in {}: probe on `{}`, which the kernel single-steps (~10 µs a call)",
                    t.path,
                    p.instruction
                );
            } else if p.offset != 0 {
                log::debug!(
                    "{function}: probe at +{} on `{}` (emulated)",
                    p.offset,
                    p.instruction
                );
            }
        }
        // Host-wide, a process is followed once it is chosen, at its first event.
        if self.host.is_none() && !self.live.contains_key(&t.pid) {
            self.follow(crate::export::ProcessMeta::of(t.pid, exe_name(t.pid)));
        }
        self.inspected.insert((t.pid, t.path.clone()));
        Ok(n)
    }
}
