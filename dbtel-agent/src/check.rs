//! `dbtel-agent check`: would tracing work here? The kernel, the agent's
//! privileges, each selected target, its catalog and the OTLP endpoint, one
//! line each; a problem's line says what to do. Nothing is attached.

use std::{
    net::ToSocketAddrs,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    host::{
        privileges,
        select::{Selectors, TargetArgs},
        tracefs,
    },
    postgres::catalog::{self, Catalog, CatalogConfig},
    postgres::libpq::discover,
    postgres::server::target,
    run::hostwide,
};

/// What `check` looks at (the agent's own flags of the same names).
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// The agent's config file: its targets, endpoint and catalog settings are
    /// checked where this command line does not give them.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// OTLP endpoint base URL (default: OTEL_EXPORTER_OTLP_ENDPOINT, else localhost).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol (its default endpoint: grpc localhost:4317, http/protobuf localhost:4318).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf", value_parser = ["grpc", "http/protobuf"])]
    pub otlp_protocol: String,
    /// Catalog connection settings to try: a libpq `key=value` file for PostgreSQL, or a
    /// MySQL option file for MariaDB (the agent's --catalog-config).
    #[arg(long, value_name = "FILE")]
    pub catalog_config: Option<std::path::PathBuf>,
    /// Do not check catalog connections.
    #[arg(long)]
    pub no_catalog: bool,
    /// Skip the OTLP endpoint (e.g. with --exporter console or none).
    #[arg(long)]
    pub no_otlp: bool,
    #[command(flatten)]
    pub pg_server_probes: crate::postgres::server::target::ProbeSourceArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<(Level, String)>,
}

impl Report {
    fn ok(&mut self, m: impl Into<String>) {
        self.lines.push((Level::Ok, m.into()));
    }
    fn warn(&mut self, m: impl Into<String>) {
        self.lines.push((Level::Warn, m.into()));
    }
    fn fail(&mut self, m: impl Into<String>) {
        self.lines.push((Level::Fail, m.into()));
    }
    pub fn failed(&self) -> bool {
        self.lines.iter().any(|(l, _)| *l == Level::Fail)
    }
    pub fn print(&self) {
        for (level, m) in &self.lines {
            let tag = match level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            println!("{tag}  {m}");
        }
    }
}

/// Capabilities the agent uses: (bit, name, what for, needed to trace at all).
const CAPABILITIES: &[(u32, &str, &str, bool)] = &[
    (39, "CAP_BPF", "load the eBPF programs and maps", true),
    (38, "CAP_PERFMON", "attach uprobes and tracepoints", true),
    (
        19,
        "CAP_SYS_PTRACE",
        "read other processes' /proc/PID/maps and executables",
        true,
    ),
    (
        21,
        "CAP_SYS_ADMIN",
        "open uprobe perf events where the kernel refuses them to CAP_PERFMON, and mount tracefs when it is absent",
        false,
    ),
    (
        2,
        "CAP_DAC_READ_SEARCH",
        "read tracefs, servers' postmaster.pid and files inside containers",
        false,
    ),
];

/// The effective capability set, from a /proc/PID/status text.
pub fn effective_caps(status: &str) -> Option<u64> {
    u64::from_str_radix(
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))?
            .trim(),
        16,
    )
    .ok()
}

pub fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut r = Report::default();
    let t = &args.targets;
    // Each target's executable read once.
    let inspected: Vec<_> = t.pids.iter().map(|&p| (p, target::inspect(p))).collect();
    let servers_needed = t.all
        || inspected
            .iter()
            .any(|(_, found)| matches!(found, Ok(Some(_))));
    check_kernel(&mut r, servers_needed);
    check_caps(&mut r, servers_needed);
    // The real test of kernel and privileges: the verifier accepts every program.
    match crate::attach::Probes::load(crate::EBPF_OBJECT, 4096, false, t.all)
        .and_then(|mut p| p.load_server_programs())
    {
        Ok(_) => r.ok("eBPF programs load (every program verified, maps created)"),
        Err(e) => r.fail(e.to_string()),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut servers, mut mariadb) = (Vec::new(), Vec::new());
    for (pid, found) in inspected {
        check_pid(&mut r, pid, found, &mut servers, &mut mariadb);
    }
    if t.all {
        let sel = t.selectors()?;
        check_host(&mut r, &sel, &mut servers);
        check_host_mysql(&mut r, &sel, &hostwide::all_pids(), &mut mariadb);
    }
    if !args.no_catalog {
        for pm in servers {
            check_catalog(&mut r, &rt, pm, args.catalog_config.as_deref());
        }
        for pid in mariadb {
            let file = args
                .catalog_config
                .as_deref()
                .filter(|f| crate::mysql::catalog::config::is_option_file(f));
            match rt.block_on(crate::mysql::catalog::worker::check(pid, file)) {
                Ok(line) => r.ok(format!("MariaDB server {pid}: {line}")),
                Err(e) => r.warn(format!("MariaDB server {pid}: {e}: lock waits will not name their blockers, statements their user and database")),
            }
        }
    }
    if !args.no_otlp {
        check_otlp(
            &mut r,
            args.otlp_endpoint.as_deref(),
            args.otlp_protocol == "grpc",
        );
    }
    r.print();
    println!(
        "{} in {:.2} s",
        if r.failed() {
            "tracing would fail"
        } else {
            "ready to trace"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(!r.failed())
}

fn check_kernel(r: &mut Report, servers_needed: bool) {
    let release = crate::host::kernel::release();
    let mut have = Vec::new();
    match crate::host::kernel::too_old(&release) {
        None => have.push("ring buffer, BPF cookies"),
        Some(why) => r.fail(why),
    }
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        have.push("BTF");
    } else {
        r.warn("kernel without BTF (/sys/kernel/btf/vmlinux): fine for dbtel's programs, but CONFIG_DEBUG_INFO_BTF is usual and expected");
    }
    if Path::new("/sys/bus/event_source/devices/uprobe/type").exists() {
        have.push("uprobes");
    } else {
        r.fail("kernel without uprobes (no /sys/bus/event_source/devices/uprobe): build it with CONFIG_UPROBE_EVENTS");
    }
    r.ok(format!("kernel {release}: {}", have.join(", ")));
    match tracefs::ensure() {
        Ok(p) => r.ok(format!("tracefs at {}", p.display())),
        Err(e) if servers_needed => r.fail(e.to_string()),
        Err(e) => r.warn(format!("{e} (needed for servers and --all)")),
    }
}

fn check_caps(r: &mut Report, servers_needed: bool) {
    let Some(eff) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_caps(&s))
    else {
        r.fail("cannot read this process's capabilities (/proc/self/status)");
        return;
    };
    let mut held = Vec::new();
    for &(bit, name, why, needed) in CAPABILITIES {
        if eff & (1 << bit) != 0 {
            held.push(name);
        } else if (bit == 39 || bit == 38) && eff & (1 << 21) != 0 {
            // Before 5.8 CAP_SYS_ADMIN was the capability for both; it still covers them.
            held.push(if bit == 39 {
                "CAP_BPF (as CAP_SYS_ADMIN)"
            } else {
                "CAP_PERFMON (as CAP_SYS_ADMIN)"
            });
        } else if needed
            || (bit == 21 && servers_needed && tracefs_missing())
            || (bit == 21 && matches!(privileges::uprobes_allowed(), Ok(false)))
        {
            r.fail(format!("missing {name}: needed to {why}; run as root or grant it (systemd AmbientCapabilities=, Kubernetes securityContext.capabilities.add)"));
        } else {
            r.warn(format!("missing {name}: needed to {why}"));
        }
    }
    if !held.is_empty() {
        r.ok(format!("capabilities held: {}", held.join(", ")));
        let kept = privileges::kept_after_attach(privileges::Later {
            servers_or_host: servers_needed,
            signals_to_other_user: false,
        });
        r.ok(format!(
            "capabilities kept once attached: {}",
            privileges::names(&kept)
        ));
    }
}

fn tracefs_missing() -> bool {
    ![
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}

/// `found`: what target::inspect made of it.
fn check_pid(
    r: &mut Report,
    pid: u32,
    found: Result<Option<target::ServerTarget>, target::ServerError>,
    servers: &mut Vec<u32>,
    mariadb: &mut Vec<u32>,
) {
    if !crate::host::process::process_exists(pid) {
        r.fail(format!("no process with PID {pid}"));
        return;
    }
    match found {
        Ok(Some(t)) => {
            server_line(r, &t);
            servers.push(t.postmaster);
            return;
        }
        Ok(None) | Err(target::ServerError::Read { .. }) => {}
        Err(e) => {
            r.fail(e.to_string());
            return;
        }
    }
    let who = format!("PID {pid} ({})", crate::host::process::exe_name(pid));
    match discover::find_libpq(pid) {
        Ok(targets) => {
            for t in targets {
                libpq_line(r, &who, &t);
            }
        }
        Err(discover::DiscoverError::NoLibpq { .. }) => mysql_lines(r, pid, &who, mariadb),
        Err(e) => r.fail(e.to_string()),
    }
}

/// A process without libpq: a MariaDB server or MySQL client libraries, or why there is nothing to trace.
fn mysql_lines(r: &mut Report, pid: u32, who: &str, mariadb: &mut Vec<u32>) {
    let mut found = 0;
    for path in crate::host::process::executable_mappings(pid).unwrap_or_default() {
        if mysql_file(r, pid, &path, who, mariadb, &|_| true) != MyFile::Neither {
            found += 1;
        }
    }
    if found == 0 {
        r.fail(crate::engine::no_client_library(pid));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MyFile {
    Server,
    /// A client library (or a program with one linked in), or one that failed.
    Client,
    Neither,
}

/// One mapped file of `pid`: a MariaDB server executable or a MySQL client
/// library gets its line (a server's PID goes to `mariadb` if `chosen`).
fn mysql_file(
    r: &mut Report,
    pid: u32,
    path: &str,
    who: &str,
    mariadb: &mut Vec<u32>,
    chosen: &dyn Fn(u32) -> bool,
) -> MyFile {
    let host = std::path::PathBuf::from(format!("/proc/{pid}/root{path}"));
    if let Ok(Some(plan)) = crate::mysql::server::target::claim(pid, path, &host) {
        if !chosen(pid) {
            r.ok(format!("{who}: MariaDB server {}: not selected", plan.path));
            return MyFile::Server;
        }
        mariadb.push(pid);
        r.ok(format!(
            "{who}: MariaDB server {}: {} probe sites, THD layout decoded",
            plan.path,
            plan.points.len()
        ));
        return MyFile::Server;
    }
    match crate::mysql::discover::claim(pid, path, &host) {
        Ok(Some(plan)) => {
            r.ok(format!(
                "{who}: MySQL client library {}: {} probes, struct layout decoded",
                plan.path,
                plan.points.len()
            ));
            for w in plan.warnings {
                r.warn(w);
            }
            MyFile::Client
        }
        Ok(None) => MyFile::Neither,
        Err(e) => {
            r.fail(e.to_string());
            MyFile::Client
        }
    }
}

/// What --all would trace of MySQL/MariaDB: every running MariaDB server the
/// selectors choose (as the agent does: by its executable, cgroup and the
/// port it listens on), and each client library file any process maps, once.
fn check_host_mysql(r: &mut Report, sel: &Selectors, pids: &[u32], mariadb: &mut Vec<u32>) {
    let chosen = |pid: u32| {
        let port = crate::host::listening::server_listening(pid).1;
        sel.chooses(&crate::host::select::facts::of(
            pid,
            None,
            Some(port.into_iter().collect()),
        ))
    };
    let mut judged: std::collections::HashMap<(u64, u64), MyFile> = Default::default();
    for &pid in pids {
        for path in crate::host::process::executable_mappings(pid).unwrap_or_default() {
            if path.contains("libpq") {
                continue;
            }
            let host = std::path::PathBuf::from(format!("/proc/{pid}/root{path}"));
            let Some(id) = crate::host::process::file_id(&host) else {
                continue;
            };
            let who = format!("PID {pid} ({})", crate::host::process::exe_name(pid));
            let kind = match judged.get(&id) {
                // Each process running a server executable is a server of its own.
                Some(MyFile::Server) | None => mysql_file(r, pid, &path, &who, mariadb, &chosen),
                Some(_) => continue,
            };
            judged.insert(id, kind);
        }
    }
}

fn server_line(r: &mut Report, t: &target::ServerTarget) {
    r.ok(format!(
        "PostgreSQL server {} ({}): {} probe sites, {}",
        t.postmaster,
        t.exe,
        t.sites.len(),
        t.source()
    ));
    for w in &t.warnings {
        r.warn(w.clone());
    }
}

fn libpq_line(r: &mut Report, who: &str, t: &discover::LibpqTarget) {
    let pipeline = discover::PIPELINE_CALLS
        .iter()
        .filter(|(f, _)| t.offsets.contains_key(f))
        .count();
    let mut m = format!(
        "{who}: libpq {}: {} functions found",
        t.path,
        t.offsets.len() - pipeline
    );
    if pipeline > 0 {
        m.push_str(&format!(", {pipeline} of pipeline mode"));
    }
    match &t.result_points {
        Ok(p) => m.push_str(&format!(
            ", results read at {} point(s) inside PQgetResult",
            p.len()
        )),
        Err(why) => r.warn(format!(
            "{}: PQgetResult's result point not found ({why}): entry and return probes instead",
            t.path
        )),
    }
    match &t.conn_layout_error {
        None => m.push_str(", connection layout decoded"),
        Some(e) => r.warn(format!(
            "{}: connection layout not decoded ({e}): spans will lack db.namespace and server.*",
            t.path
        )),
    }
    r.ok(m);
}

/// What --all would trace: chosen running servers, and every libpq mapped
/// (or the system's, which programs started later load).
fn check_host(r: &mut Report, sel: &Selectors, servers: &mut Vec<u32>) {
    let pids = hostwide::all_pids();
    // Each executable read once, however many processes run it (the 2 s budget).
    let mut judged: std::collections::HashMap<(u64, u64), bool> = Default::default();
    let postmasters = hostwide::postmasters(&pids, |p| {
        let Some(id) = crate::host::process::file_id(&hostwide::exe_host_path(p)) else {
            return false;
        };
        *judged
            .entry(id)
            .or_insert_with(|| matches!(target::inspect(p), Ok(Some(_))))
    });
    for pm in postmasters {
        let f = hostwide::server_facts(pm);
        if !sel.chooses(&f) {
            r.ok(format!("PostgreSQL server {pm} ({}): not selected", f.exe));
            continue;
        }
        match target::inspect(pm) {
            Ok(Some(t)) => {
                server_line(r, &t);
                servers.push(pm);
            }
            Ok(None) => {}
            Err(e) => r.fail(e.to_string()),
        }
    }
    let mut seen = std::collections::HashSet::new();
    let me = std::process::id();
    let system = discover::system_libpq()
        .into_iter()
        .map(|p| (me, p.to_string_lossy().into_owned(), p));
    let mapped = pids.iter().flat_map(|&pid| {
        crate::host::process::executable_mappings(pid)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.contains("libpq"))
            .map(move |p| (pid, p.clone(), format!("/proc/{pid}/root{p}").into()))
    });
    for (pid, path, host_path) in system.chain(mapped) {
        let host_path: std::path::PathBuf = host_path;
        let Some(id) = crate::host::process::file_id(&host_path) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        match discover::inspect(pid, &path, &host_path) {
            Ok(Some(t)) => libpq_line(r, "host", &t),
            Ok(None) => {}
            Err(e) => r.fail(e.to_string()),
        }
    }
}

fn check_catalog(r: &mut Report, rt: &tokio::runtime::Runtime, pm: u32, file: Option<&Path>) {
    let cfg = match CatalogConfig::load(file, catalog::server_defaults(pm)) {
        Ok(c) => c,
        Err(e) => {
            r.fail(format!("server {pm}: catalog settings: {e}"));
            return;
        }
    };
    let cat = Catalog::new(cfg);
    match rt.block_on(async { tokio::time::timeout(Duration::from_millis(1500), cat.check()).await }) {
        Ok(Ok(())) => r.ok(format!("server {pm}: catalog reachable")),
        Ok(Err(e)) => r.warn(format!(
            "server {pm}: catalog unreachable ({e}): lock waits will lack relation names and blockers; set PGHOST/PGUSER/PGPASSWORD or --catalog-config"
        )),
        Err(_) => r.warn(format!("server {pm}: catalog did not answer within 1.5 s")),
    }
}

/// The OTLP endpoint's host and port, as the exporter would reach them.
pub fn otlp_address(endpoint: Option<&str>, grpc: bool) -> Option<(String, u16)> {
    let url = match endpoint {
        Some(e) => e.to_string(),
        None if grpc => std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .unwrap_or_else(|_| "http://localhost:4317".into()),
        None => crate::export::otlp::traces_url(None),
    };
    let url = reqwest::Url::parse(&url).ok()?;
    Some((
        url.host_str()?.trim_matches(['[', ']']).to_string(),
        url.port_or_known_default()?,
    ))
}

fn check_otlp(r: &mut Report, endpoint: Option<&str>, grpc: bool) {
    let Some((host, port)) = otlp_address(endpoint, grpc) else {
        r.fail(format!(
            "OTLP endpoint {:?} is not a URL: give --otlp-endpoint http://host:port (or --no-otlp)",
            endpoint.unwrap_or("(from the environment)")
        ));
        return;
    };
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    if addrs.is_empty() {
        r.fail(format!(
            "OTLP endpoint {host}:{port}: cannot resolve {host}"
        ));
        return;
    }
    let reached = addrs
        .iter()
        .any(|a| std::net::TcpStream::connect_timeout(a, Duration::from_millis(500)).is_ok());
    if reached {
        r.ok(format!("OTLP endpoint {host}:{port} reachable"));
    } else {
        r.fail(format!(
            "OTLP endpoint {host}:{port} unreachable: spans would be lost; start the collector or set --otlp-endpoint / OTEL_EXPORTER_OTLP_ENDPOINT"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_from_status() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        let eff = effective_caps(root).unwrap();
        assert!(CAPABILITIES.iter().all(|(bit, ..)| eff & (1 << bit) != 0));
        let no_bpf = effective_caps("CapEff:\t000000c000280004\n").unwrap();
        assert_eq!(no_bpf & (1 << 39), 1 << 39);
        assert_eq!(effective_caps("CapEff:\t0000000000000000\n"), Some(0));
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }

    #[test]
    fn otlp_addresses() {
        assert_eq!(
            otlp_address(Some("http://collector:4318"), false),
            Some(("collector".into(), 4318))
        );
        assert_eq!(
            otlp_address(Some("https://otel.example.com"), false),
            Some(("otel.example.com".into(), 443))
        );
        assert_eq!(
            otlp_address(Some("http://[::1]:4317"), true),
            Some(("::1".into(), 4317))
        );
        assert_eq!(otlp_address(Some("not a url"), false), None);
    }
}
