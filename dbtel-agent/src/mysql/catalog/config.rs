//! Where and as whom the MariaDB/MySQL catalog connection connects: the
//! traced server's own listening socket or port, the MYSQL_* environment
//! variables, a MySQL option file (--catalog-config, else ~/.my.cnf).

use std::{
    collections::HashSet,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

const DEFAULT_PORT: u16 = 3306;
/// Option file groups read, as the mariadb client reads them.
const GROUPS: [&str; 3] = ["client", "client-server", "client-mariadb"];
/// MySQL's own limit on nesting `!include`.
const MAX_INCLUDE_DEPTH: u8 = 10;
/// The server's maximum: a long statement text in a processlist row is never refused.
const MAX_PACKET: usize = 1 << 30;
/// The server default; set so that mysql_async does not ask for it at connect.
const WAIT_TIMEOUT: usize = 28800;
const FROM_DEFAULT: &str = "default";
const FROM_SERVER_SOCKET: &str = "the traced server's socket";
const FROM_SERVER_TCP: &str = "the traced server's TCP listener";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read MySQL option file {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("MySQL option file {}, line {line}: {msg}", file.display())]
    Line {
        file: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("environment variable {var}: {msg}")]
    Env { var: &'static str, msg: String },
}

/// Where and as whom the catalog connection connects. Exactly one of
/// `socket` and `host` is set once resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlCatalogConfig {
    /// Unix socket path as the agent reaches it (through /proc/PID/root when
    /// the server is in another mount namespace), if connecting by socket.
    pub socket: Option<PathBuf>,
    /// Host name or IP address, if connecting by TCP.
    pub host: Option<String>,
    pub port: u16,
    pub user: String,
    password: Option<String>,
    /// mysql_async has none: the caller bounds `Conn::new` with it.
    pub connect_timeout: Duration,
    origins: Origins,
}

/// Where each setting came from, for [`MysqlCatalogConfig::describe`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origins {
    socket: String,
    host: String,
    port: String,
    user: String,
    password: String,
}

impl fmt::Debug for MysqlCatalogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlCatalogConfig")
            .field("socket", &self.socket)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("origins", &self.origins)
            .finish()
    }
}

impl MysqlCatalogConfig {
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Precedence, lowest first (MySQL's own: environment below option files):
    /// the traced server's listening unix socket (else its TCP listener, else
    /// 127.0.0.1:3306), MYSQL_UNIX_PORT / MYSQL_TCP_PORT / MYSQL_HOST, the
    /// option file (`file`, else `<home>/.my.cnf` when it exists). As in
    /// MySQL, no host or `localhost` means the socket when one is known;
    /// any other host means TCP. Paths from the environment or a file are
    /// taken as the agent sees them.
    pub fn resolve(
        server_pid: u32,
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let (sock, tcp) = listening(server_pid);
        Self::from_sources(sock, tcp, file, env, home)
    }

    /// [`resolve`](Self::resolve) with the server's endpoints given.
    fn from_sources(
        server_socket: Option<PathBuf>,
        server_tcp: Option<(IpAddr, u16)>,
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let d = FROM_DEFAULT.to_string();
        let mut c = MysqlCatalogConfig {
            socket: None,
            host: None,
            port: DEFAULT_PORT,
            user: "root".into(),
            password: None,
            connect_timeout: Duration::from_secs(5),
            origins: Origins {
                socket: d.clone(),
                host: d.clone(),
                port: d.clone(),
                user: d.clone(),
                password: d.clone(),
            },
        };
        if let Some(s) = server_socket {
            c.socket = Some(s);
            c.origins.socket = FROM_SERVER_SOCKET.into();
        }
        // Where "no host" goes by TCP when no socket is known.
        let mut tcp_host = ("127.0.0.1".to_string(), d);
        if let Some((ip, port)) = server_tcp {
            c.port = port;
            c.origins.port = FROM_SERVER_TCP.into();
            tcp_host = (connect_address(ip), FROM_SERVER_TCP.into());
        }
        for (var, key) in [
            ("MYSQL_UNIX_PORT", "socket"),
            ("MYSQL_TCP_PORT", "port"),
            ("MYSQL_HOST", "host"),
        ] {
            if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                c.set(key, Some(&v), var)
                    .map_err(|msg| ConfigError::Env { var, msg })?;
            }
        }
        let path = match file {
            Some(p) => Some(p.to_path_buf()),
            None => home.map(|h| h.join(".my.cnf")).filter(|p| p.exists()),
        };
        if let Some(path) = path {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                file: path.clone(),
                source,
            })?;
            let mut found = Vec::new();
            read_options(&path, &text, 0, &mut found)?;
            for s in found {
                let origin = format!("{} [{}]", s.file.display(), s.group);
                c.set(&s.key, s.value.as_deref(), &origin)
                    .map_err(|msg| ConfigError::Line {
                        file: s.file,
                        line: s.line,
                        msg,
                    })?;
            }
        }
        match c.host.as_deref() {
            Some(h) if h != "localhost" => c.socket = None,
            _ if c.socket.is_some() => c.host = None,
            Some(_) => c.host = Some("127.0.0.1".into()),
            None => (c.host, c.origins.host) = (Some(tcp_host.0), tcp_host.1),
        }
        Ok(c)
    }

    /// Applies one setting. Messages never hold a value (it may be a password).
    fn set(&mut self, key: &str, value: Option<&str>, origin: &str) -> Result<(), String> {
        let Some(v) = value else {
            if key == "password" {
                return Err(
                    "a bare `password` asks for one at a prompt, which the agent cannot \
                     show: write password=... (or remove the line)"
                        .into(),
                );
            }
            return Ok(());
        };
        let o = origin.to_string();
        match key {
            "host" if !v.is_empty() => (self.host, self.origins.host) = (Some(v.into()), o),
            "socket" if !v.is_empty() => {
                (self.socket, self.origins.socket) = (Some(PathBuf::from(v)), o)
            }
            "user" if !v.is_empty() => (self.user, self.origins.user) = (v.into(), o),
            "password" => (self.password, self.origins.password) = (Some(v.into()), o),
            "port" => {
                let p: u16 = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("port: not a port number: {v:?}"))?;
                (self.port, self.origins.port) = (p, o);
            }
            "connect-timeout" => {
                let s: u64 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("connect-timeout: not a number of seconds: {v:?}"))?;
                // 0 means no timeout to mysql; keep the catalog from hanging anyway.
                self.connect_timeout = Duration::from_secs(if s == 0 { 30 } else { s });
            }
            // my.cnf files hold many other client options.
            _ => {}
        }
        Ok(())
    }

    /// mysql_async options: socket or host and port, user, password. Nothing
    /// runs at connect: max_allowed_packet and wait_timeout are given (else
    /// mysql_async asks the server for them) and the server's socket is not
    /// looked up (prefer_socket).
    pub fn opts(&self) -> mysql_async::Opts {
        let b = mysql_async::OptsBuilder::default()
            .user(Some(self.user.clone()))
            .pass(self.password.clone())
            .prefer_socket(false)
            .stmt_cache_size(0)
            .max_allowed_packet(Some(MAX_PACKET))
            .wait_timeout(Some(WAIT_TIMEOUT));
        match (&self.socket, &self.host) {
            (Some(s), _) => b.socket(Some(s.to_string_lossy())),
            (None, h) => b
                .ip_or_hostname(h.as_deref().unwrap_or("127.0.0.1"))
                .tcp_port(self.port),
        }
        .into()
    }

    /// e.g. "unix socket /run/mysqld/mysqld.sock as root (the traced server's
    /// socket)"; never the password.
    pub fn describe(&self) -> String {
        let o = &self.origins;
        let (target, mut why) = match &self.socket {
            Some(s) => (
                format!("unix socket {}", s.display()),
                vec![o.socket.clone()],
            ),
            None => {
                let h = self.host.as_deref().unwrap_or("127.0.0.1");
                let why = if o.host == o.port {
                    o.host.clone()
                } else {
                    format!("host from {}, port from {}", o.host, o.port)
                };
                let target = match h.parse::<IpAddr>() {
                    Ok(IpAddr::V6(_)) => format!("TCP [{h}]:{}", self.port),
                    _ => format!("TCP {h}:{}", self.port),
                };
                (target, vec![why])
            }
        };
        if o.user != FROM_DEFAULT {
            why.push(format!("user from {}", o.user));
        }
        if self.password.is_some() {
            why.push(format!("password from {}", o.password));
        }
        format!("{target} as {} ({})", self.user, why.join("; "))
    }
}

/// The address to connect to for a server listening on `ip`.
fn connect_address(ip: IpAddr) -> String {
    let ip = ip.to_canonical();
    if ip.is_unspecified() {
        "127.0.0.1".into()
    } else {
        ip.to_string()
    }
}

/// One setting of an option file that matters here (`value` None: the key alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionLine {
    Setting {
        line: usize,
        group: String,
        key: String,
        value: Option<String>,
    },
    Include {
        line: usize,
        path: String,
    },
}

/// Parses a MySQL option file as my_load_defaults does: `[group]` headers
/// (case-insensitive), `key[=value]` lines, values trimmed, stripped of
/// matching quotes and unescaped (`\n \t \r \b \s \\ \" \'`), `#` or `;`
/// comment lines and `#` comments after values outside quotes. Keys: `_`
/// and `-` alike, `loose-` prefix dropped. Settings only of [`GROUPS`],
/// in file order (the last one wins).
pub fn parse_option_file(text: &str, file: &Path) -> Result<Vec<OptionLine>, ConfigError> {
    let err = |line: usize, msg: &str| ConfigError::Line {
        file: file.to_path_buf(),
        line,
        msg: msg.to_string(),
    };
    let mut out = Vec::new();
    let mut group: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(rest) = t.strip_prefix('!') {
            let word = rest.split_whitespace().next().unwrap_or("");
            let arg = rest[word.len()..].trim();
            match word {
                "include" if arg.is_empty() => return Err(err(line, "!include without a file")),
                "include" => out.push(OptionLine::Include {
                    line,
                    path: arg.to_string(),
                }),
                _ => log::debug!("{}:{line}: !{word} ignored", file.display()),
            }
            continue;
        }
        if let Some(rest) = t.strip_prefix('[') {
            let Some(end) = rest.find(']') else {
                return Err(err(line, "group header without a closing ]"));
            };
            group = Some(rest[..end].trim().to_ascii_lowercase());
            continue;
        }
        let Some(g) = &group else {
            return Err(err(line, "option before any [group]"));
        };
        if !GROUPS.contains(&g.as_str()) {
            continue;
        }
        let t = strip_end_comment(t).trim();
        let (key, value) = match t.split_once('=') {
            Some((k, v)) => (k.trim(), Some(unquote(v.trim()))),
            None => (t, None),
        };
        let key = key.to_ascii_lowercase().replace('_', "-");
        let key = key.strip_prefix("loose-").unwrap_or(&key).to_string();
        out.push(OptionLine::Setting {
            line,
            group: g.clone(),
            key,
            value,
        });
    }
    Ok(out)
}

/// Cuts a `#` comment outside quotes (mysys' remove_end_comment).
fn strip_end_comment(s: &str) -> &str {
    let (mut quote, mut escape) = (None, false);
    for (i, c) in s.char_indices() {
        if (c == '\'' || c == '"') && !escape {
            quote = match quote {
                None => Some(c),
                Some(q) if q == c => None,
                q => q,
            };
        }
        if quote.is_none() && c == '#' {
            return &s[..i];
        }
        escape = quote.is_some() && c == '\\' && !escape;
    }
    s
}

fn unquote(v: &str) -> String {
    let v = if v.len() >= 2
        && ((v.starts_with('\'') && v.ends_with('\'')) || (v.starts_with('"') && v.ends_with('"')))
    {
        &v[1..v.len() - 1]
    } else {
        v
    };
    let mut out = String::with_capacity(v.len());
    let mut it = v.chars().peekable();
    while let Some(c) = it.next() {
        match (c, it.peek().copied()) {
            ('\\', Some(n)) => {
                it.next();
                match n {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'b' => out.push('\u{8}'),
                    's' => out.push(' '),
                    '"' | '\'' | '\\' => out.push(n),
                    _ => out.extend([c, n]),
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// A setting read from an option file, with where it was.
struct Found {
    file: PathBuf,
    line: usize,
    group: String,
    key: String,
    value: Option<String>,
}

/// Settings of `text` (the content of `path`) and of the files it includes,
/// in order. A missing include is skipped with a warning, as mysql does.
fn read_options(
    path: &Path,
    text: &str,
    depth: u8,
    out: &mut Vec<Found>,
) -> Result<(), ConfigError> {
    let mut has_password = false;
    for l in parse_option_file(text, path)? {
        match l {
            OptionLine::Setting {
                line,
                group,
                key,
                value,
            } => {
                has_password |= key == "password";
                out.push(Found {
                    file: path.to_path_buf(),
                    line,
                    group,
                    key,
                    value,
                });
            }
            OptionLine::Include { line, path: inc } => {
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(ConfigError::Line {
                        file: path.to_path_buf(),
                        line,
                        msg: format!("!include nested more than {MAX_INCLUDE_DEPTH} deep"),
                    });
                }
                let inc = path.parent().unwrap_or(Path::new("/")).join(inc);
                match std::fs::read_to_string(&inc) {
                    Ok(t) => read_options(&inc, &t, depth + 1, out)?,
                    Err(e) => log::warn!(
                        "{}, line {line}: !include {}: {e}; skipped",
                        path.display(),
                        inc.display()
                    ),
                }
            }
        }
    }
    if has_password {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode());
        if mode & 0o077 != 0 {
            log::warn!(
                "MySQL option file {} holds a password and is readable by others (mode {:o}): chmod 0600 it",
                path.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The traced server's listening endpoints, from /proc

/// The traced server's listening unix socket (as the agent reaches it) and
/// TCP port: sockets among its own fds, listed in its network namespace's
/// /proc/PID/net/{unix,tcp,tcp6}.
pub fn server_listening(pid: u32) -> (Option<PathBuf>, Option<u16>) {
    let (sock, tcp) = listening(pid);
    (sock, tcp.map(|t| t.1))
}

fn listening(pid: u32) -> (Option<PathBuf>, Option<(IpAddr, u16)>) {
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

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
