//! A server process's listening endpoints, from /proc: where the catalog
//! connects by default, and what --port chooses.

use std::{collections::HashSet, net::IpAddr, path::PathBuf};

/// The traced server's listening unix socket (as the agent reaches it) and
/// TCP port: sockets among its own fds, listed in its network namespace's
/// /proc/PID/net/{unix,tcp,tcp6}.
pub fn server_listening(pid: u32) -> (Option<PathBuf>, Option<u16>) {
    let (sock, tcp) = listening(pid);
    (sock, tcp.map(|t| t.1))
}

pub fn listening(pid: u32) -> (Option<PathBuf>, Option<(IpAddr, u16)>) {
    let read = |p: &str| std::fs::read_to_string(format!("/proc/{pid}/{p}")).unwrap_or_default();
    let inodes: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| socket_inode(std::fs::read_link(e.path()).ok()?.to_str()?))
        .collect();
    if inodes.is_empty() {
        log::debug!("MySQL catalog: no sockets seen for server pid {pid}");
    }
    let sock = listening_unix(&read("net/unix"), &inodes)
        .into_iter()
        .next()
        .map(|p| reachable(pid, &p));
    let mut tcp = listening_tcp(&read("net/tcp"), &inodes);
    tcp.extend(listening_tcp(&read("net/tcp6"), &inodes));
    let pick = tcp
        .iter()
        .find(|(ip, _)| ip.is_loopback() || ip.is_unspecified())
        .or(tcp.first())
        .copied();
    (sock, pick)
}

/// `path` as the agent reaches it: as is in the same mount namespace and
/// root, else through /proc/PID/root.
fn reachable(pid: u32, path: &str) -> PathBuf {
    let same = |l: &str| {
        std::fs::read_link(format!("/proc/{pid}/{l}")).ok()
            == std::fs::read_link(format!("/proc/self/{l}")).ok()
    };
    if same("ns/mnt") && same("root") {
        PathBuf::from(path)
    } else {
        PathBuf::from(format!("/proc/{pid}/root{path}"))
    }
}

/// The inode of an fd link `socket:[INODE]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Paths of the listening unix stream sockets (state 01, flag __SO_ACCEPTCON)
/// in /proc/net/unix text whose inode is in `inodes`; abstract and unbound
/// ones skipped.
pub fn listening_unix(text: &str, inodes: &HashSet<u64>) -> Vec<String> {
    let mut out = Vec::new();
    // Num RefCount Protocol Flags Type St Inode [Path]
    for line in text.lines().skip(1) {
        let mut rest = line;
        let mut f = [""; 7];
        for slot in &mut f {
            rest = rest.trim_start();
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            (*slot, rest) = rest.split_at(end);
        }
        let path = rest.trim_start();
        let flags = u32::from_str_radix(f[3], 16).unwrap_or(0);
        let listening = flags & 0x10000 != 0 && f[4] == "0001" && f[5] == "01";
        let ours = f[6].parse().is_ok_and(|i: u64| inodes.contains(&i));
        if listening && ours && path.starts_with('/') {
            out.push(path.to_string());
        }
    }
    out
}

/// Addresses of the listening sockets (state 0A) in /proc/net/tcp or tcp6
/// text whose inode is in `inodes`.
pub fn listening_tcp(text: &str, inodes: &HashSet<u64>) -> Vec<(IpAddr, u16)> {
    let mut out = Vec::new();
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" || !f[9].parse().is_ok_and(|i: u64| inodes.contains(&i)) {
            continue;
        }
        let Some((addr, port)) = f[1].split_once(':') else {
            continue;
        };
        if let (Some(ip), Ok(port)) = (hex_ip(addr), u16::from_str_radix(port, 16)) {
            out.push((ip, port));
        }
    }
    out
}

/// The kernel prints an address as 32-bit words in host byte order.
fn hex_ip(s: &str) -> Option<IpAddr> {
    let mut bytes = Vec::with_capacity(16);
    for i in (0..s.len()).step_by(8) {
        let w = u32::from_str_radix(s.get(i..i + 8)?, 16).ok()?;
        bytes.extend(w.to_ne_bytes());
    }
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}
