//! --all's selectors: which of the host's processes are traced. Pure: the
//! facts about a process are gathered elsewhere (see [`facts`]).

use glob::{MatchOptions, Pattern};

#[derive(Debug, thiserror::Error)]
#[error("bad {flag} glob `{glob}`: {error}")]
pub struct SelectError {
    flag: &'static str,
    glob: String,
    error: glob::PatternError,
}

/// What to trace: processes by PID, or the whole host narrowed by selectors.
/// The agent's and `check`'s flags (and the config file's keys of the same names).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Trace this process (repeatable): a client of libpq, libmariadb or libmysqlclient
    /// (found through /proc/PID/maps), a PostgreSQL server's postmaster or any of its
    /// backends (the whole server is traced), or a MariaDB server (mariadbd).
    #[arg(short, long = "pid", value_name = "PID", conflicts_with = "all")]
    pub pids: Vec<u32>,

    /// Trace every PostgreSQL and MariaDB server and every libpq and MySQL/MariaDB client
    /// on the host, and every one started later, until stopped (with `-- COMMAND`: until
    /// the command exits). Narrowed by --exe, --exclude-exe, --port and --cgroup.
    #[arg(long)]
    pub all: bool,

    /// With --all: only processes whose executable matches this glob (full path, or the
    /// file name when the glob has no `/`; repeatable).
    #[arg(long = "exe", value_name = "GLOB", requires = "all")]
    pub exe: Vec<String>,

    /// With --all: never processes whose executable matches this glob (repeatable).
    #[arg(long = "exclude-exe", value_name = "GLOB", requires = "all")]
    pub exclude_exe: Vec<String>,

    /// With --all: only servers listening on this TCP port and client connections to it (repeatable).
    #[arg(long = "port", value_name = "PORT", requires = "all")]
    pub port: Vec<u16>,

    /// With --all: only processes whose cgroup path or container id matches this glob (repeatable).
    #[arg(long = "cgroup", value_name = "GLOB", requires = "all")]
    pub cgroup: Vec<String>,
}

impl TargetArgs {
    pub fn selectors(&self) -> Result<Selectors, SelectError> {
        Selectors::new(&self.exe, &self.exclude_exe, &self.port, &self.cgroup)
    }
}

/// Empty lists select everything; exclusions win.
#[derive(Debug, Default, Clone)]
pub struct Selectors {
    exe: Vec<Pattern>,
    exclude_exe: Vec<Pattern>,
    ports: Vec<u16>,
    cgroups: Vec<Pattern>,
}

/// What is known of a process when it is chosen.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcessFacts {
    /// Full path of its executable (or as exec'd, if it is gone).
    pub exe: String,
    /// Its cgroup v2 path (`/system.slice/x.service`), if known.
    pub cgroup: Option<String>,
    /// A server's listening TCP ports; `None` for a client, whose connections
    /// are chosen one by one ([`Selectors::port_selected`]).
    pub listening: Option<Vec<u16>>,
}

fn compile(flag: &'static str, globs: &[String]) -> Result<Vec<Pattern>, SelectError> {
    globs
        .iter()
        .map(|g| {
            Pattern::new(g).map_err(|error| SelectError {
                flag,
                glob: g.clone(),
                error,
            })
        })
        .collect()
}

/// `*` stays within one path component, as in a shell.
const OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// A glob with a `/` matches the whole path; one without, the file name.
fn path_matches(p: &Pattern, path: &str) -> bool {
    if p.as_str().contains('/') {
        p.matches_with(path, OPTIONS)
    } else {
        p.matches_with(path.rsplit('/').next().unwrap_or(path), OPTIONS)
    }
}

impl Selectors {
    pub fn new(
        exe: &[String],
        exclude_exe: &[String],
        ports: &[u16],
        cgroups: &[String],
    ) -> Result<Self, SelectError> {
        Ok(Selectors {
            exe: compile("--exe", exe)?,
            exclude_exe: compile("--exclude-exe", exclude_exe)?,
            ports: ports.to_vec(),
            cgroups: compile("--cgroup", cgroups)?,
        })
    }

    pub fn chooses(&self, p: &ProcessFacts) -> bool {
        if self.exclude_exe.iter().any(|g| path_matches(g, &p.exe)) {
            return false;
        }
        if !self.exe.is_empty() && !self.exe.iter().any(|g| path_matches(g, &p.exe)) {
            return false;
        }
        if !self.cgroups.is_empty() {
            let Some(cg) = &p.cgroup else { return false };
            let id = container_id(cg);
            let hit = |g: &Pattern| {
                g.matches_with(cg, OPTIONS) || id.as_deref().is_some_and(|id| g.matches(id))
            };
            if !self.cgroups.iter().any(hit) {
                return false;
            }
        }
        match &p.listening {
            Some(ports) if !self.ports.is_empty() => ports.iter().any(|p| self.ports.contains(p)),
            _ => true,
        }
    }

    /// A client connection to this server port (libpq's port; unknown: the default 5432).
    pub fn port_selected(&self, port: &str) -> bool {
        let port = if port.is_empty() {
            5432
        } else {
            port.parse().unwrap_or(0)
        };
        self.ports.is_empty() || self.ports.contains(&port)
    }

    pub fn by_port(&self) -> bool {
        !self.ports.is_empty()
    }

    pub fn by_cgroup(&self) -> bool {
        !self.cgroups.is_empty()
    }
}

/// The container a cgroup path names, as runtimes write it: a 64-hex-digit
/// id as the last component, or inside it (`docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>`, `libpod-<id>.scope`).
pub fn container_id(cgroup: &str) -> Option<String> {
    let last = cgroup.trim_end_matches('/').rsplit('/').next()?;
    let last = last.strip_suffix(".scope").unwrap_or(last);
    let id = last.rsplit(['-', ':']).next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// Gathering [`ProcessFacts`] from /proc.
pub mod facts {
    use super::ProcessFacts;

    /// The process's cgroup path from a /proc/PID/cgroup text: the v2 one
    /// (`0::/path`), unless it is the root and a v1 hierarchy (a hybrid host,
    /// where runtimes name containers in v1 paths) says more; systemd's first.
    pub fn parse_cgroup(text: &str) -> Option<String> {
        let paths: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.split_once(':')?.1.split_once(':'))
            .collect();
        let v2 = paths.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| *p);
        let deeper = |p: &&str| *p != "/";
        v2.filter(deeper)
            .or_else(|| {
                paths
                    .iter()
                    .find(|(c, p)| *c == "name=systemd" && deeper(p))
                    .map(|(_, p)| *p)
            })
            .or_else(|| paths.iter().map(|(_, p)| *p).find(deeper))
            .or(v2)
            .map(str::to_string)
    }

    pub fn cgroup_of(pid: u32) -> Option<String> {
        parse_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
    }

    /// What its exec said of a process, for when it is gone before it is looked at.
    #[derive(Debug, Clone, Default)]
    pub struct Exec {
        pub path: String,
        /// cgroup v2 path (resolved from the id the kernel gave).
        pub cgroup: Option<String>,
    }

    /// A process's facts, from /proc while it runs, else from its exec.
    pub fn of(pid: u32, exec: Option<&Exec>, listening: Option<Vec<u16>>) -> ProcessFacts {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .ok()
            .filter(|p| !p.ends_with(" (deleted)"))
            .or_else(|| exec.map(|e| e.path.clone()))
            .unwrap_or_default();
        let cgroup = cgroup_of(pid).or_else(|| exec.and_then(|e| e.cgroup.clone()));
        ProcessFacts {
            exe,
            cgroup,
            listening,
        }
    }

    /// The cgroup v2 hierarchy's mount point.
    pub fn cgroup2_root() -> Option<std::path::PathBuf> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        mounts
            .lines()
            .find(|l| l.split(' ').nth(2) == Some("cgroup2"))
            .and_then(|l| l.split(' ').nth(1))
            .map(Into::into)
    }

    /// The path of the cgroup whose id (its directory's inode) is `id`,
    /// relative to the hierarchy's root, as /proc/PID/cgroup writes it.
    pub fn cgroup_path(root: &std::path::Path, id: u64) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if std::fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
                let rel = dir.strip_prefix(root).ok()?.to_string_lossy().into_owned();
                return Some(format!("/{rel}"));
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        None
    }
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
