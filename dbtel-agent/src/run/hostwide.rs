//! --all: every PostgreSQL server and libpq client on the host, now and later.
//!
//! Probes sit on files, for every process that maps them: each libpq (and
//! each executable with libpq linked in) and each server executable seen. The
//! kernel decides per process: a client emits from its first probe hit unless
//! the agent excluded it (CLIENT_PIDS), a server process only once its
//! postmaster is in SERVER_PIDS, which an exec of a server binary puts it in
//! before it can fork a backend (installed server executables are read at the
//! start, so that no read of the file comes first). An exec tracepoint
//! reports every new program (path and cgroup), so a process is chosen by what
//! it runs even if it exits before the agent looks at it, and new binaries are
//! probed as they appear.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    events::Exec,
    host::select::{facts, ProcessFacts, Selectors},
    postgres::server::target,
};

/// Exec'd paths remembered (a process that exits before its first event is
/// looked at is still known by what it ran): bounded, oldest forgotten first.
const EXEC_MEMORY: usize = 16_384;
/// Files judged (libpq or not, server or not), so no file is read twice.
const FILE_MEMORY: usize = 65_536;
/// Server executables whose probe sites are kept (a host has a few).
const SERVER_FILE_MEMORY: usize = 64;
/// A new process's mappings are looked at this long after its exec (the
/// loader maps its libraries; a program may load libpq a little later).
/// The loader's hook reports loads at once; these catch what it cannot see
/// (a static program, a loader without the hook).
const RESCAN_AT: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_secs(4),
];

/// What a file turned out to be. A program is judged twice, apart: as a
/// server executable (judge_exe) and as a file a client library may be in
/// (probe_file: the `mariadb` CLI has Connector/C linked in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Server,
    /// A client library of some engine (or a program with one linked in).
    Client,
    /// A dynamic loader whose hook reports library loads.
    Loader,
    Neither,
}

pub struct HostWide {
    pub selectors: Selectors,
    execs: HashMap<u32, facts::Exec>,
    /// cgroup ids resolved to paths (each a walk of the hierarchy, so kept).
    cgroups: HashMap<u64, Option<String>>,
    exec_order: VecDeque<u32>,
    /// Mapped files judged as client libraries or loaders.
    pub files: HashMap<(u64, u64), FileKind>,
    /// Executables judged as servers (Server) or not (Neither).
    pub exes: HashMap<(u64, u64), FileKind>,
    /// Server executables read (their probe sites), for the next process
    /// that runs one: placing its probes then takes no read of the file.
    pub server_files: HashMap<(u64, u64), target::ServerTarget>,
    /// Client processes the selectors left out (the kernel knows too).
    pub excluded: HashSet<u32>,
    /// Recently exec'd processes and how many of their rescans are done.
    young: Vec<(u32, Instant, usize)>,
    /// Processes that exec'd a server binary, not yet a running postmaster.
    pub pending_servers: Vec<u32>,
    /// With --port: whether each client connection's spans are exported.
    pub conn_selected: HashMap<(u32, u64), bool>,
}

impl HostWide {
    pub fn new(selectors: Selectors) -> Self {
        HostWide {
            selectors,
            execs: HashMap::new(),
            cgroups: HashMap::new(),
            exec_order: VecDeque::new(),
            files: HashMap::new(),
            exes: HashMap::new(),
            server_files: HashMap::new(),
            excluded: HashSet::new(),
            young: Vec::new(),
            pending_servers: Vec::new(),
            conn_selected: HashMap::new(),
        }
    }

    /// Remembers an exec; the process is looked at again shortly.
    pub fn on_exec(&mut self, e: &Exec, now: Instant) {
        let pid = e.at.pid;
        let cgroup = self.cgroup_path(e.cgroup_id);
        if self
            .execs
            .insert(
                pid,
                facts::Exec {
                    path: e.path.clone(),
                    cgroup,
                },
            )
            .is_none()
        {
            self.exec_order.push_back(pid);
            while self.exec_order.len() > EXEC_MEMORY {
                if let Some(old) = self.exec_order.pop_front() {
                    self.execs.remove(&old);
                }
            }
        }
        self.excluded.remove(&pid);
        self.young.retain(|(p, _, _)| *p != pid);
        self.young.push((pid, now, 0));
    }

    /// The facts the selectors judge a client process by.
    pub fn client_facts(&self, pid: u32) -> ProcessFacts {
        facts::of(pid, self.execs.get(&pid), None)
    }

    /// Only with --cgroup: otherwise no one asks, and the walk is not free.
    fn cgroup_path(&mut self, id: u64) -> Option<String> {
        if !self.selectors.by_cgroup() || id == 0 {
            return None;
        }
        if self.cgroups.len() >= EXEC_MEMORY {
            self.cgroups.clear();
        }
        self.cgroups
            .entry(id)
            .or_insert_with(|| facts::cgroup_path(&facts::cgroup2_root()?, id))
            .clone()
    }

    /// Young processes due for a look at their mappings.
    pub fn due_rescans(&mut self, now: Instant) -> Vec<u32> {
        let mut due = Vec::new();
        for (pid, since, done) in &mut self.young {
            if *done < RESCAN_AT.len() && now.duration_since(*since) >= RESCAN_AT[*done] {
                *done += 1;
                due.push(*pid);
            }
        }
        self.young.retain(|(_, _, done)| *done < RESCAN_AT.len());
        due
    }

    pub fn forget(&mut self, pid: u32) {
        self.excluded.remove(&pid);
        self.conn_selected.retain(|(p, _), _| *p != pid);
    }

    /// Records a judgement on a mapped file, keeping the memory bounded.
    pub fn judged(&mut self, id: (u64, u64), kind: FileKind) {
        remember(&mut self.files, id, kind);
    }

    /// Records whether an executable is a server, keeping the memory bounded.
    pub fn judged_exe(&mut self, id: (u64, u64), kind: FileKind) {
        remember(&mut self.exes, id, kind);
    }

    /// Records a server executable and its probe sites.
    pub fn read_server(&mut self, t: target::ServerTarget) {
        self.judged_exe(t.file_id, FileKind::Server);
        if self.server_files.len() >= SERVER_FILE_MEMORY {
            // Read again when next run: only its exec's first moments are slower.
            self.server_files.clear();
        }
        self.server_files.insert(t.file_id, t);
    }
}

fn remember(m: &mut HashMap<(u64, u64), FileKind>, id: (u64, u64), kind: FileKind) {
    if m.len() >= FILE_MEMORY {
        // Forget what is cheap to learn again (neither a client library nor a server).
        m.retain(|_, k| *k != FileKind::Neither);
    }
    m.insert(id, kind);
}

/// Every process on the host but the agent, by PID.
pub fn all_pids() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p| *p != me)
        .collect();
    pids.sort_unstable();
    pids
}

/// A process's executable as the agent reaches it.
pub fn exe_host_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/exe"))
}

/// A running postmaster's facts: its executable, cgroup and port.
pub fn server_facts(postmaster: u32) -> ProcessFacts {
    let port = crate::postgres::catalog::server_defaults(postmaster).map(|(_, port)| port);
    facts::of(postmaster, None, Some(port.into_iter().collect()))
}

/// True once `pid` is a running postmaster: its data directory's
/// postmaster.pid names it (written before it accepts connections).
pub fn is_running_postmaster(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cwd/postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
        == Some(pid)
}

/// Whether a server binary's arguments start a postmaster (not `--single`,
/// initdb's `--boot`, or pg_ctl's `-V` / `-C name` queries).
pub fn starts_postmaster(args: &[String]) -> bool {
    !args.iter().skip(1).any(|a| {
        matches!(
            a.as_str(),
            "--single" | "--boot" | "--check" | "-C" | "-V" | "--version" | "--describe-config"
        ) || a.starts_with("--forkchild")
    })
}

pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The postmasters among `pids` (a backend leads to its postmaster).
pub fn postmasters(pids: &[u32], mut is_server_exe: impl FnMut(u32) -> bool) -> Vec<u32> {
    let mut out: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| is_server_exe(*p))
        .map(target::postmaster_of)
        .collect();
    out.sort_unstable();
    out.dedup();
    out.retain(|pm| is_running_postmaster(*pm));
    out
}

/// Files in a process's mappings not yet judged as client libraries.
/// The files `pid` maps executable that are to be looked at.
pub fn new_mappings(host: &HostWide, pid: u32) -> Vec<(String, PathBuf, (u64, u64))> {
    let Ok(paths) = crate::host::process::executable_mappings(pid) else {
        return Vec::new();
    };
    paths
        .into_iter()
        .filter_map(|path| {
            let host_path = PathBuf::from(format!("/proc/{pid}/root{path}"));
            let id = crate::host::process::file_id(&host_path)?;
            // Unjudged files, and server executables (each process running
            // one is a server of its own).
            let look = matches!(host.files.get(&id), None | Some(FileKind::Server));
            look.then_some((path, host_path, id))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Origin;

    fn exec(pid: u32, path: &str) -> Exec {
        Exec {
            at: Origin {
                pid,
                tid: pid,
                ts_ns: 0,
                conn: 0,
            },
            cgroup_id: 0,
            path: path.into(),
            held: false,
        }
    }

    #[test]
    fn exec_memory_is_bounded_and_keeps_the_newest() {
        let mut h = HostWide::new(Selectors::default());
        let t = Instant::now();
        for pid in 1..=(EXEC_MEMORY as u32 + 10) {
            h.on_exec(&exec(pid, "/bin/x"), t);
        }
        assert_eq!(h.execs.len(), EXEC_MEMORY);
        assert!(!h.execs.contains_key(&1));
        assert_eq!(
            h.execs
                .get(&(EXEC_MEMORY as u32 + 10))
                .map(|e| e.path.as_str()),
            Some("/bin/x")
        );
    }

    #[test]
    fn a_new_process_is_rescanned_three_times_then_dropped() {
        let mut h = HostWide::new(Selectors::default());
        let t = Instant::now();
        h.on_exec(&exec(7, "/usr/bin/psql"), t);
        assert!(h.due_rescans(t).is_empty());
        assert_eq!(h.due_rescans(t + Duration::from_millis(150)), vec![7]);
        assert!(h.due_rescans(t + Duration::from_millis(200)).is_empty());
        assert_eq!(h.due_rescans(t + Duration::from_secs(2)), vec![7]);
        assert_eq!(h.due_rescans(t + Duration::from_secs(5)), vec![7]);
        assert!(h.due_rescans(t + Duration::from_secs(9)).is_empty());
        assert!(h.young.is_empty());
    }

    #[test]
    fn an_exec_lifts_an_exclusion() {
        let mut h = HostWide::new(Selectors::default());
        h.excluded.insert(9);
        h.on_exec(&exec(9, "/usr/bin/psql"), Instant::now());
        assert!(!h.excluded.contains(&9));
    }

    #[test]
    fn postmasters_are_told_from_other_uses_of_the_binary() {
        let args = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert!(starts_postmaster(&args("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main -c config_file=/etc/x")));
        assert!(starts_postmaster(&args("postgres")));
        for other in [
            "postgres --single -D d postgres",
            "postgres --boot -X 1048576",
            "postgres -V",
            "postgres -C data_directory -D d",
            "postgres --check -D d",
        ] {
            assert!(!starts_postmaster(&args(other)), "{other}");
        }
    }

    #[test]
    fn file_memory_is_bounded() {
        let mut h = HostWide::new(Selectors::default());
        h.judged((0, 0), FileKind::Client);
        for i in 1..=FILE_MEMORY as u64 {
            h.judged((0, i), FileKind::Neither);
        }
        assert!(h.files.len() <= FILE_MEMORY);
        assert_eq!(h.files.get(&(0, 0)), Some(&FileKind::Client));
    }
}
