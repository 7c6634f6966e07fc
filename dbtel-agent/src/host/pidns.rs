//! PIDs across PID namespaces. The kernel side sees host PIDs; a server in
//! a container knows its processes by its own namespace's PIDs, and so do
//! its clients (libpq's backend PID) and its catalog (pg_stat_activity).
//! Learnt once per process from /proc/PID/status (`NSpid:` lists the PID in
//! each namespace from the host's inward), forgotten when it exits.

use std::collections::HashMap;

use crate::FastMap;

/// The PID a process has in its innermost namespace, from a status text.
pub fn parse_nspid(status: &str) -> Option<i32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Host PID <-> namespace PID of the processes of each server (keyed by its
/// host PID: two containers can both have a PID 7).
#[derive(Debug, Default)]
pub struct PidNamespaces {
    /// Looked up for every server probe hit.
    inner: FastMap<u32, i32>,
    host: HashMap<(u32, i32), u32>,
}

impl PidNamespaces {
    /// Looks a process up at first sight.
    pub fn learn(&mut self, host: u32, server: u32) {
        if self.inner.contains_key(&host) {
            return;
        }
        let ns = std::fs::read_to_string(format!("/proc/{host}/status"))
            .ok()
            .and_then(|s| parse_nspid(&s));
        self.insert(host, server, ns.unwrap_or(host as i32));
    }

    pub fn insert(&mut self, host: u32, server: u32, ns: i32) {
        self.inner.insert(host, ns);
        self.host.insert((server, ns), host);
    }

    /// The PID the server and its clients know `host` by (itself if unknown).
    pub fn ns(&self, host: u32) -> i32 {
        self.inner.get(&host).copied().unwrap_or(host as i32)
    }

    /// The host PID of a server's process known by `ns` (itself if unknown).
    pub fn host(&self, server: u32, ns: i32) -> u32 {
        self.host.get(&(server, ns)).copied().unwrap_or(ns as u32)
    }

    pub fn knows(&self, server: u32, ns: i32) -> bool {
        self.host.contains_key(&(server, ns))
    }

    pub fn forget(&mut self, host: u32) {
        if let Some(ns) = self.inner.remove(&host) {
            self.host.retain(|&(_, n), h| !(n == ns && *h == host));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn innermost_pid_from_status() {
        assert_eq!(
            parse_nspid("Name:\tpostgres\nNSpid:\t48211\t7\nPPid:\t1\n"),
            Some(7)
        );
        assert_eq!(parse_nspid("NSpid:\t48211\n"), Some(48211));
        assert_eq!(parse_nspid("Name:\tx\n"), None);
    }

    #[test]
    fn both_ways_per_server_and_forgotten() {
        let mut p = PidNamespaces::default();
        p.insert(48211, 48100, 7);
        p.insert(50000, 49000, 7);
        assert_eq!(p.ns(48211), 7);
        assert_eq!(p.host(48100, 7), 48211);
        assert_eq!(p.host(49000, 7), 50000, "another container's 7");
        assert_eq!(p.ns(123), 123, "unknown: the same PID");
        p.forget(48211);
        assert_eq!(p.ns(48211), 48211);
        assert_eq!(p.host(48100, 7), 7);
        assert_eq!(p.host(49000, 7), 50000);
    }

    #[test]
    fn this_process_is_in_the_hosts_namespace_or_told_apart() {
        let me = std::process::id();
        let mut p = PidNamespaces::default();
        p.learn(me, me);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(p.ns(me), parse_nspid(&status).unwrap());
    }
}
