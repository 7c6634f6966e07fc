//! The agent's main loop: attach, read the ring buffer, reconstruct, export;
//! follow traced processes until they exit or a signal arrives.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use anyhow::bail;
use aya::maps::{MapData, RingBuf};
use dbtel_common::counter;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, time::MissedTickBehavior};

use crate::{
    attach::Probes,
    engine::Engine,
    export::{Clock, Exporter, ProcessMeta},
    host::{privileges, select::Selectors},
    pipeline::dbspan::DbSpan,
    pipeline::sql::FactsCache,
    postgres::libpq::reconstruct::Reconstructor,
    postgres::server::side::{CatalogSettings, ServerSide},
    postgres::server::target::{self, ServerTarget},
    run::hostwide::HostWide,
};

mod all;
mod clients;
mod command;
mod descendants;
mod drain;
mod exit;
pub mod hostwide;
mod housekeeping;
mod loads;
mod outflow;
pub use outflow::own_of;

use clients::Found;
use command::{forward_signal, wait_child};

pub struct RunConfig {
    pub pids: Vec<u32>,
    pub command: Vec<String>,
    pub max_text: u32,
    /// Count probe hits per program (BPF run-time stats) and report them.
    pub probe_stats: bool,
    /// Attach every probe but record nothing (benchmarks: what the traps alone cost).
    pub probes_only: bool,
    /// Catalog connection for server tracing.
    pub catalog: CatalogSettings,
    /// What of query texts is exported (server spans' events too).
    pub text: crate::pipeline::sql::Text,
    /// --all, with its selectors.
    pub host_wide: Option<Selectors>,
    /// What --http-address's /healthz reports: ready once attached, stopping after the loop.
    pub health: Option<std::sync::Arc<crate::http::Health>>,
    /// Who the `--` command runs as (never with the agent's capabilities).
    pub command_user: crate::host::command_user::CommandUser,
    /// Where spans are counted into metrics (shared with /metrics).
    pub metrics: crate::metrics::Metrics,
    /// --slow-query-threshold.
    pub slow_query: Option<Duration>,
    /// --n-plus-one-threshold (0: off) and --n-plus-one-burst-gap.
    pub n_plus_one: (u32, Duration),
}

/// Everything counted on the way, reported at exit.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub decode_errors: u64,
    pub export_errors: u64,
    pub kernel: [u64; counter::COUNT as usize],
    pub unmatched_results: u64,
    pub incomplete: u64,
    /// Client state forgotten for its bounds: connections, statements' texts, queries.
    pub evicted: [u64; 3],
    /// Exit status of the command run with `--`, if any.
    pub command_status: Option<i32>,
    /// Server-side spans reconstructed.
    pub server: crate::postgres::server::backend::Counters,
    /// Probe hits and eBPF run time per program, with --probe-stats.
    pub program_runs: Vec<(&'static str, u64, Duration)>,
    /// Spans finished by the engines (all of them reach metrics).
    pub spans_made: u64,
    /// Spans the sampler dropped.
    pub sampled_out: u64,
    /// CPU seconds spent before tracing began (loading and attaching the
    /// probes, reading the targets' binaries): a one-time cost, told apart
    /// in the exit report from what tracing costs per span.
    pub attach_cpu_s: f64,
}

struct Agent {
    probes: Probes,
    /// Out (None) only while a drain reads it, so that a record goes to its
    /// engine straight from the ring (copying MySQL's records out first took
    /// ~7 % of the agent's CPU with a MySQL client traced).
    ring: Option<AsyncFd<RingBuf<MapData>>>,
    recon: Reconstructor,
    exporter: Exporter,
    /// Query texts' facts (obfuscated text, operation, table), client and server side.
    facts: FactsCache,
    /// Traced processes still alive, and their pidfds.
    live: BTreeMap<u32, ProcessMeta>,
    liveness: crate::host::pidfd::Liveness,
    /// Mapped files already looked at, per process (to spot libpq loaded later).
    inspected: HashSet<(u32, String)>,
    /// Each process's address-space size at its last look (see `rescan`).
    mapped_pages: crate::FastMap<u32, u64>,
    summary: Summary,
    spans: Vec<crate::postgres::libpq::reconstruct::ClientSpan>,
    server: ServerSide,
    /// --all's state; None when tracing by PID or command.
    host: Option<HostWide>,
    /// `-- command`: its PID, and whether it (or a descendant) made a client library call.
    command: Option<(u32, bool)>,
    /// `-- command`: the command and the descendants that ran a program of their own.
    followed: HashSet<u32>,
    /// How long the `--` command was held at its library loads.
    holds: loads::Holds,
    /// Engines besides PostgreSQL (see clients::engines), and the spans they finished.
    engines: Vec<Box<dyn Engine>>,
    engine_spans: Vec<DbSpan>,
    /// The outflow's stage buffers, reused (see outflow::Stages).
    stages: outflow::Stages,
    /// Servers traced through an engine's plan (in `live` too): a `--`
    /// command's exit ends the run whether or not they still run.
    engine_servers: HashSet<u32>,
    metrics: crate::metrics::Metrics,
    slow_query_ns: Option<u64>,
    n_plus_one: crate::detect::nplusone::NPlusOne,
    gate: crate::pipeline::gate::TraceGate,
    retracer: crate::pipeline::retrace::Retracer,
}

impl Agent {
    /// Traces a PostgreSQL server (once per postmaster).
    async fn trace_server(&mut self, t: ServerTarget) -> anyhow::Result<Option<String>> {
        if self.server.servers.contains_key(&t.postmaster) {
            return Ok(None);
        }
        for w in &t.warnings {
            log::warn!("{w}");
        }
        // The catalog connects first, so its own backend is never traced.
        self.server.add_server(t.clone()).await?;
        let n = self.probes.attach_server(&t)?;
        for pid in self.server.own_backends_on_host() {
            self.probes.untrace_backend(pid);
        }
        let exe = crate::host::process::exe_name(t.postmaster);
        self.exporter
            .register_process(ProcessMeta::of(t.postmaster, exe.clone()));
        let backends = target::processes_of(t.postmaster).len() - 1;
        Ok(Some(format!(
            "PostgreSQL server {} ({exe}, {backends} processes): {n} probe sites on {}, {}",
            t.postmaster,
            t.exe,
            t.source()
        )))
    }

    fn follow(&mut self, meta: ProcessMeta) {
        self.exporter.register_process(meta.clone());
        if self.host.is_none() {
            // Host-wide, exits come from the kernel (and hundreds of fds would be held).
            self.liveness.watch(meta.pid);
        }
        self.live.insert(meta.pid, meta);
    }

    /// Looks for libpq mapped since the last look (dlopen, exec), and for a
    /// loader whose hook is not yet probed (exec). `full`: read the maps
    /// whatever the size of the address space (see below).
    fn rescan(&mut self, pid: u32, full: bool) {
        if self.host.is_some() {
            // Host-wide, each file is judged once for all processes.
            for line in self.probe_mappings(pid) {
                log::info!("process {pid} mapped a new client library: {line}");
            }
            return;
        }
        // A library mapped since the last look changed the address space's
        // size: the maps (a path written per mapping, most of an idle
        // agent's CPU read 4 times a second) are read only then, and every
        // 5 s in case a mapping replaced another of the same size.
        if let Some(pages) = crate::host::process::mapped_pages(pid) {
            let before = self.mapped_pages.insert(pid, pages);
            if before == Some(pages) && !full {
                return;
            }
        }
        let Ok(paths) = crate::host::process::executable_mappings(pid) else {
            return;
        };
        for path in paths {
            if !self.inspected.insert((pid, path.clone())) {
                continue;
            }
            let host = PathBuf::from(format!("/proc/{pid}/root{path}"));
            if crate::host::loader::looks_like_loader(&path) {
                let hold = self.followed.contains(&pid);
                if let Err(e) = self.hook_loader(pid, &path, &host, hold) {
                    log::warn!("process {pid}: {e}: a client library it loads later is found within 250 ms, not at once");
                }
                continue;
            }
            match self.claim(pid, &path, &host) {
                Ok(Some(t)) if !self.probes.is_attached(pid, t.host_path()) => {
                    match self.trace_found(&t) {
                        Ok(n) => {
                            log::debug!("process {pid}: {n} probes on {path}");
                            eprintln!(
                                "dbtel: tracing {pid} ({}) {path}",
                                crate::host::process::exe_name(pid)
                            );
                        }
                        Err(e) => log::warn!("process {pid} loaded {path}: {e:#}"),
                    }
                }
                Ok(_) => {}
                Err(e) => log::warn!("process {pid}: {e:#}"),
            }
        }
        // The executable may have changed (exec): refresh the resource name.
        if let Some(m) = self.live.get_mut(&pid) {
            let exe = crate::host::process::exe_name(pid);
            if exe != m.executable && exe != "?" {
                m.executable = exe;
                self.exporter.register_process(m.clone());
            }
        }
    }

    fn process_gone(&mut self, pid: u32) {
        self.drain_written();
        self.end_queries(pid, Clock::monotonic_now_ns());
        self.flush_spans();
        self.forget_process(pid);
    }

    /// Lets go of a process whose queries are already ended.
    fn forget_process(&mut self, pid: u32) {
        self.probes.detach_pid(pid);
        self.release_held(pid);
        self.exporter.process_gone(pid);
        self.live.remove(&pid);
        self.liveness.forget(pid);
        self.engine_servers.remove(&pid);
        self.followed.remove(&pid);
        self.inspected.retain(|(p, _)| *p != pid);
        self.mapped_pages.remove(&pid);
        if let Some(h) = &mut self.host {
            h.forget(pid);
        }
        log::info!("process {pid} exited");
    }
}

pub async fn run(cfg: RunConfig, exporter: Exporter) -> anyhow::Result<(Summary, Exporter)> {
    if cfg.pids.is_empty() && cfg.command.is_empty() && cfg.host_wide.is_none() {
        bail!("nothing to trace: give --pid <PID>, --all or -- <command>");
    }
    privileges::preflight().map_err(anyhow::Error::msg)?;
    // Everything that can be refused is checked before loading anything. Of
    // several targets, those that can be traced are; each other says why.
    let engines = clients::engines(cfg.text, &cfg.catalog);
    let (targets, server_targets, mut refused) = clients::inspect_pids(&engines, &cfg.pids);
    let nothing_else = targets.is_empty()
        && server_targets.is_empty()
        && cfg.command.is_empty()
        && cfg.host_wide.is_none();
    if nothing_else && !refused.is_empty() {
        let last = refused.pop().expect("not empty");
        for e in refused {
            eprintln!("dbtel-agent: {e:#}");
        }
        return Err(last);
    }
    for e in refused {
        eprintln!("dbtel-agent: not traced: {e:#}");
    }
    let _stats = cfg
        .probe_stats
        .then(crate::attach::enable_run_stats)
        .transpose()?;
    let mut probes = Probes::load(
        crate::EBPF_OBJECT,
        cfg.max_text,
        cfg.probes_only,
        cfg.host_wide.is_some(),
    )?;
    if cfg.host_wide.is_some() {
        // Execs, forks and exits are followed before the first look at the host.
        probes.start_host_wide()?;
    }
    // SAFETY: the ring buffer owns its fd and lives as long as the AsyncFd.
    let ring = unsafe { AsyncFd::register(probes.ring_buffer()) }
        .map_err(|e| anyhow::anyhow!("ring buffer fd: {e}"))?;
    let mut agent = Agent {
        probes,
        ring: Some(ring),
        recon: Reconstructor::new(),
        exporter,
        facts: FactsCache::new(cfg.text, 10_000),
        live: BTreeMap::new(),
        liveness: Default::default(),
        inspected: HashSet::new(),
        mapped_pages: Default::default(),
        summary: Summary::default(),
        spans: Vec::new(),
        server: ServerSide::new(cfg.catalog.clone(), cfg.text),
        host: cfg.host_wide.clone().map(HostWide::new),
        command: None,
        followed: HashSet::new(),
        holds: loads::Holds::default(),
        engines,
        engine_spans: Vec::new(),
        stages: Default::default(),
        engine_servers: HashSet::new(),
        metrics: cfg.metrics,
        slow_query_ns: cfg.slow_query.map(|d| d.as_nanos() as u64),
        n_plus_one: crate::detect::nplusone::NPlusOne::new(cfg.n_plus_one.0, cfg.n_plus_one.1),
        gate: crate::pipeline::gate::TraceGate::from_env(),
        retracer: Default::default(),
    };
    let mut attached_lines = Vec::new();
    if agent.host.is_some() {
        let lines = agent.scan_host().await?;
        attached_lines.push(format!(
            "the host (--all, new processes too): {}",
            if lines.is_empty() {
                "nothing yet".into()
            } else {
                lines.join("; ")
            }
        ));
    }
    for t in server_targets {
        if let Some(line) = agent.trace_server(t).await? {
            attached_lines.push(line);
        }
    }
    for t in &targets {
        let n = agent.trace_found(t)?;
        attached_lines.push(format!(
            "pid {} ({}): {} probes on {}",
            t.pid(),
            crate::host::process::exe_name(t.pid()),
            n,
            t.path()
        ));
    }
    // A client library they load later is seen at its load.
    let client_pids: HashSet<u32> = targets.iter().map(|t| t.pid()).collect();
    if agent.host.is_none() {
        for pid in client_pids {
            agent.watch_loads(pid);
        }
    }

    let mut child = None;
    if !cfg.command.is_empty() {
        let (pid, release, line) = agent.start_command(&cfg.command, &cfg.command_user)?;
        attached_lines.push(line);
        drop(release); // the child proceeds to exec
        agent.command = Some((pid, false));
        child = Some((pid, Box::pin(wait_child(pid))));
    }
    privileges::drop_after_attach(privileges::Later {
        servers_or_host: agent.host.is_some()
            || !agent.server.servers.is_empty()
            || !agent.engine_servers.is_empty(),
        signals_to_other_user: child.is_some() && cfg.command_user.other_than_agent(),
    })?;
    // Caught before the line: whoever reads it may interrupt at once (an
    // interrupt in between killed the agent without its report: a CI run
    // saw exit by SIGINT right after the line).
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    // Ready before the line: whoever reads it finds /healthz answering 200.
    if let Some(h) = &cfg.health {
        h.set_ready();
    }
    agent.summary.attach_cpu_s = crate::metrics::own::cpu_seconds();
    eprintln!("dbtel: tracing {}", attached_lines.join("; "));

    // The ring is read at least this often (it wakes the loop itself past
    // WAKEUP_BYTES, and at once for the records someone waits on: a held
    // exec or library load, a host-wide exec). Every wake-up of the loop costs
    // a context switch and a cold cache: 10 ms made 100 of them a second (25
    // ms: -2 to -3 % agent CPU per span at full rate); at 10k queries/s, 25
    // -> 100 ms took the agent's CPU per span from 1.7-1.9 to 1.4 us.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(Duration::from_millis(250));
    housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_counters = [0u64; counter::COUNT as usize];
    let mut drops_warned_at = None;
    let mut stopping_since: Option<tokio::time::Instant> = None;
    let mut ticks: u32 = 0;
    let replies = agent.server.replies_waiting();

    loop {
        tokio::select! {
            r = agent.ring.as_mut().expect("out only during a drain").readable_mut() => {
                let mut guard = r?;
                guard.clear_ready();
                drop(guard);
                // A drain that left records behind is a flood: its losses are
                // said now, not at the next housekeeping (a flood's long
                // drains could put that after the program's exit).
                if agent.drain() {
                    agent.warn_on_new_drops(&mut last_counters, &mut drops_warned_at);
                }
            }
            // A lock wait's lookup, due or answered: taken now.
            _ = replies.notified() => agent.server.take_replies(&agent.recon),
            _ = tick.tick() => {
                if agent.drain() {
                    agent.warn_on_new_drops(&mut last_counters, &mut drops_warned_at);
                }
            }
            _ = housekeeping.tick() => {
                // Host-wide, exits and execs come from the kernel and new processes are
                // looked at after their exec: every traced process is looked at every 5 s
                // only (hundreds of them would cost /proc reads every 250 ms).
                ticks = ticks.wrapping_add(1);
                let full = ticks.is_multiple_of(20);
                let look = agent.host.is_none() || full;
                let pids: Vec<u32> = if look { agent.live.keys().copied().collect() } else { Vec::new() };
                for pid in pids {
                    if child.as_ref().is_some_and(|(c, _)| *c == pid) {
                        // Before its exec it is the agent's own fork: nothing of it to read.
                        if !command::still_the_agent(pid) {
                            agent.rescan(pid, full);
                        }
                        continue; // its exit comes from wait()
                    }
                    if agent.liveness.alive(pid) {
                        agent.rescan(pid, full);
                    } else {
                        agent.process_gone(pid);
                    }
                }
                agent.servers_housekeeping();
                agent.host_housekeeping().await;
                // Answered queries on connections gone quiet have had all their results.
                let now = Clock::monotonic_now_ns();
                agent.recon.complete_quiet(now, &mut agent.spans);
                for e in &mut agent.engines {
                    e.tick(now, &mut agent.engine_spans);
                }
                agent.warn_on_new_drops(&mut last_counters, &mut drops_warned_at);
                agent.detectors_tick(now);
                if ticks.is_multiple_of(4) {
                    agent.publish_metrics();
                }
                if child.is_none() && agent.host.is_none() && agent.live.is_empty() && agent.server.servers.is_empty() {
                    log::info!("no traced process left");
                    break;
                }
                if stopping_since.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
                    log::warn!("command did not exit after the signal; stopping anyway");
                    break;
                }
            }
            status = async { (&mut child.as_mut().unwrap().1).await }, if child.is_some() => {
                let (pid, _) = child.take().unwrap();
                agent.summary.command_status = Some(status?);
                agent.process_gone(pid);
                if agent.command.is_some_and(|(_, used)| !used) {
                    eprintln!(
                        "dbtel: {} made no call into a database client library (libpq, libmariadb, libmysqlclient): nothing of it was traced (a driver written in its program's own language, such as asyncpg, node-postgres or PyMySQL, is seen only from the server: PostgreSQL's --pid POSTMASTER)",
                        cfg.command[0]
                    );
                }
                // `--` mode ends with its command, even while a server is traced
                // beside it or a descendant still runs (let go, said in the log).
                if agent.live.keys().all(|p| agent.engine_servers.contains(p) || agent.followed.contains(p)) {
                    agent.let_go_of_descendants();
                    break;
                }
            }
            _ = sigint.recv() => {
                if !forward_signal(&child, libc::SIGINT, &mut stopping_since) { break; }
            }
            _ = sigterm.recv() => {
                if !forward_signal(&child, libc::SIGTERM, &mut stopping_since) { break; }
            }
        }
    }
    if let Some(h) = &cfg.health {
        h.set_stopping();
    }

    let child_pid = child.as_ref().map(|(pid, _)| *pid);
    Ok(agent.finish(&cfg.command, child_pid, cfg.probe_stats))
}
