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
    globs.iter().map(|g| Pattern::new(g).map_err(|error| SelectError { flag, glob: g.clone(), error })).collect()
}

/// `*` stays within one path component, as in a shell.
const OPTIONS: MatchOptions = MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };

/// A glob with a `/` matches the whole path; one without, the file name.
fn path_matches(p: &Pattern, path: &str) -> bool {
    if p.as_str().contains('/') {
        p.matches_with(path, OPTIONS)
    } else {
        p.matches_with(path.rsplit('/').next().unwrap_or(path), OPTIONS)
    }
}

impl Selectors {
    pub fn new(exe: &[String], exclude_exe: &[String], ports: &[u16], cgroups: &[String]) -> Result<Self, SelectError> {
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
            let hit = |g: &Pattern| g.matches_with(cg, OPTIONS) || id.as_deref().is_some_and(|id| g.matches(id));
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
        let port = if port.is_empty() { 5432 } else { port.parse().unwrap_or(0) };
        self.ports.is_empty() || self.ports.contains(&port)
    }

    pub fn by_port(&self) -> bool {
        !self.ports.is_empty()
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
        let paths: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once(':')?.1.split_once(':')).collect();
        let v2 = paths.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| *p);
        let deeper = |p: &&str| *p != "/";
        v2.filter(deeper)
            .or_else(|| paths.iter().find(|(c, p)| *c == "name=systemd" && deeper(p)).map(|(_, p)| *p))
            .or_else(|| paths.iter().map(|(_, p)| *p).find(deeper))
            .or(v2)
            .map(str::to_string)
    }

    pub fn cgroup_of(pid: u32) -> Option<String> {
        parse_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
    }

    /// A running process's facts; `exec_path` stands in for its executable
    /// once it is gone.
    pub fn of(pid: u32, exec_path: Option<&str>, listening: Option<Vec<u16>>) -> ProcessFacts {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .ok()
            .filter(|p| !p.ends_with(" (deleted)"))
            .or_else(|| exec_path.map(str::to_string))
            .unwrap_or_default();
        ProcessFacts { exe, cgroup: cgroup_of(pid), listening }
    }
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
