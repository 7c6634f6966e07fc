//! Where and as whom the MariaDB/MySQL catalog connection connects: the
//! traced server's own listening socket or port, the MYSQL_* environment
//! variables, a MySQL option file (--catalog-config, else ~/.my.cnf).

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::host::listening::listening;
pub use crate::host::listening::{listening_tcp, listening_unix, server_listening, socket_inode};

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
    /// Where each setting came from, when not the default.
    origins: BTreeMap<String, String>,
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

    /// [`resolve`](Self::resolve) from the agent's own environment and home.
    pub fn for_server(server_pid: u32, file: Option<&Path>) -> Result<Self, ConfigError> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Self::resolve(
            server_pid,
            file,
            &|k| std::env::var(k).ok(),
            home.as_deref(),
        )
    }

    /// A session, within `connect_timeout`; an error says where it went.
    pub async fn connect(&self) -> Result<mysql_async::Conn, String> {
        match tokio::time::timeout(self.connect_timeout, mysql_async::Conn::new(self.opts())).await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!("{}: {e}", self.describe())),
            Err(_) => Err(format!("{}: connection timed out", self.describe())),
        }
    }

    /// [`resolve`](Self::resolve) with the server's endpoints given.
    fn from_sources(
        server_socket: Option<PathBuf>,
        server_tcp: Option<(IpAddr, u16)>,
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let mut c = MysqlCatalogConfig {
            socket: None,
            host: None,
            port: DEFAULT_PORT,
            user: "root".into(),
            password: None,
            connect_timeout: Duration::from_secs(5),
            origins: BTreeMap::new(),
        };
        if let Some(s) = server_socket {
            c.socket = Some(s);
            c.origins.insert("socket".into(), FROM_SERVER_SOCKET.into());
        }
        // Where "no host" goes by TCP when no socket is known.
        let mut tcp_host = ("127.0.0.1".to_string(), None);
        if let Some((ip, port)) = server_tcp {
            c.port = port;
            c.origins.insert("port".into(), FROM_SERVER_TCP.into());
            tcp_host = (connect_address(ip), Some(FROM_SERVER_TCP.to_string()));
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
            for (file, s) in found {
                let origin = format!("{} [{}]", file.display(), s.group);
                c.set(&s.key, s.value.as_deref(), &origin)
                    .map_err(|msg| ConfigError::Line {
                        file,
                        line: s.line,
                        msg,
                    })?;
            }
        }
        match c.host.as_deref() {
            Some(h) if h != "localhost" => c.socket = None,
            _ if c.socket.is_some() => c.host = None,
            Some(_) => c.host = Some("127.0.0.1".into()),
            None => {
                c.host = Some(tcp_host.0);
                c.origins
                    .extend(tcp_host.1.map(|o| ("host".to_string(), o)));
            }
        }
        Ok(c)
    }

    /// Where setting `key` came from.
    fn from(&self, key: &str) -> &str {
        self.origins.get(key).map_or(FROM_DEFAULT, |o| o.as_str())
    }

    /// Applies one setting. Messages never hold a value (it may be a password).
    fn set(&mut self, key: &str, value: Option<&str>, origin: &str) -> Result<(), String> {
        let v = match value {
            None if key == "password" => {
                return Err(
                    "a bare `password` asks for one at a prompt, which the agent \
                            cannot show: write password=... (or remove the line)"
                        .into(),
                )
            }
            Some(v) if !v.is_empty() || key == "password" => v,
            _ => return Ok(()),
        };
        match key {
            "host" => self.host = Some(v.into()),
            "socket" => self.socket = Some(PathBuf::from(v)),
            "user" => self.user = v.into(),
            "password" => self.password = Some(v.into()),
            "port" => {
                let p = v.trim().parse().ok().filter(|p| *p != 0);
                self.port = p.ok_or_else(|| format!("port: not a port number: {v:?}"))?;
            }
            "connect-timeout" => {
                let s: u64 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("connect-timeout: not a number of seconds: {v:?}"))?;
                // 0 means no timeout to mysql; keep the catalog from hanging anyway.
                self.connect_timeout = Duration::from_secs(if s == 0 { 30 } else { s });
            }
            _ => return Ok(()),
        }
        self.origins.insert(key.into(), origin.into());
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
        let (target, why) = match (&self.socket, self.host.as_deref().unwrap_or("127.0.0.1")) {
            (Some(s), _) => (
                format!("unix socket {}", s.display()),
                self.from("socket").into(),
            ),
            (None, h) => {
                let h = if h.contains(':') {
                    format!("[{h}]")
                } else {
                    h.into()
                };
                let (oh, op) = (self.from("host"), self.from("port"));
                let why = if oh == op {
                    oh.into()
                } else {
                    format!("host from {oh}, port from {op}")
                };
                (format!("TCP {h}:{}", self.port), why)
            }
        };
        let mut why = vec![why];
        if self.origins.contains_key("user") {
            why.push(format!("user from {}", self.from("user")));
        }
        if self.password.is_some() {
            why.push(format!("password from {}", self.from("password")));
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

/// An option file line that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionLine {
    Setting(Setting),
    /// `!include FILE`: (line, file as written).
    Include(usize, String),
}

/// `key[=value]` in one of [`GROUPS`] (`value` None: the key alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub line: usize,
    pub group: String,
    pub key: String,
    pub value: Option<String>,
}

/// Parses a MySQL option file as my_load_defaults does: `[group]` headers
/// (case-insensitive), `key[=value]` lines, values trimmed, stripped of
/// matching quotes and unescaped (`\n \t \r \b \s \\ \" \'`), `#` or `;`
/// comment lines and `#` comments outside quotes. Keys: `_` and `-` alike,
/// `loose-` prefix dropped. Settings only of [`GROUPS`], in file order (the
/// last one wins).
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
                "include" => out.push(OptionLine::Include(line, arg.to_string())),
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
        let group = g.clone();
        out.push(OptionLine::Setting(Setting {
            line,
            group,
            key,
            value,
        }));
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
    let quoted = v.len() >= 2
        && ["'", "\""]
            .iter()
            .any(|q| v.starts_with(q) && v.ends_with(q));
    let v = if quoted { &v[1..v.len() - 1] } else { v };
    let mut out = String::with_capacity(v.len());
    let mut it = v.chars();
    while let Some(c) = it.next() {
        let Some(n) = (c == '\\').then(|| it.clone().next()).flatten() else {
            out.push(c);
            continue;
        };
        it.next();
        let e = match n {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'b' => '\u{8}',
            's' => ' ',
            '"' | '\'' | '\\' => n,
            _ => {
                out.push('\\');
                n
            }
        };
        out.push(e);
    }
    out
}

/// Settings of `text` (the content of `path`) and of the files it includes,
/// in order, with the file each is in. A missing include is skipped with a
/// warning, as mysql does.
fn read_options(
    path: &Path,
    text: &str,
    depth: u8,
    out: &mut Vec<(PathBuf, Setting)>,
) -> Result<(), ConfigError> {
    let mut has_password = false;
    for l in parse_option_file(text, path)? {
        match l {
            OptionLine::Setting(s) => {
                has_password |= s.key == "password";
                out.push((path.to_path_buf(), s));
            }
            OptionLine::Include(line, inc) => {
                if depth >= MAX_INCLUDE_DEPTH {
                    let msg = format!("!include nested more than {MAX_INCLUDE_DEPTH} deep");
                    let file = path.to_path_buf();
                    return Err(ConfigError::Line { file, line, msg });
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

/// Whether `--catalog-config FILE` is a MySQL option file (it has
/// `[groups]`), not libpq's `key=value` lines.
pub fn is_option_file(file: &Path) -> bool {
    std::fs::read_to_string(file).is_ok_and(|t| t.lines().any(|l| l.trim_start().starts_with('[')))
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
