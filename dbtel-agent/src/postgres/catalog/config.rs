//! Where and as whom the catalog client connects: defaults (or a discovered
//! server's postmaster.pid), libpq environment variables, a conninfo file,
//! pgpass.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio_postgres::config::SslMode;

use super::{CatalogError, Result};
// ---------------------------------------------------------------------------
// Configuration

/// Where and as whom the catalog client connects.
///
/// Precedence, lowest first: built-in defaults (or those of a server the agent
/// discovered), the libpq environment variables, the conninfo file.
#[derive(Clone, PartialEq, Eq)]
pub struct CatalogConfig {
    /// Host name, IP address, or a unix socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Set explicitly (PGPASSWORD / `password=`); else looked up in the passfile per connection.
    password: Option<String>,
    /// The database the main connection goes to.
    pub dbname: String,
    pub application_name: String,
    pub connect_timeout: Duration,
    /// A pgpass file (PGPASSFILE / `passfile=`, else ~/.pgpass when it exists).
    pub passfile: Option<PathBuf>,
}

impl fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("passfile", &self.passfile)
            .finish()
    }
}

/// Keys accepted in a conninfo file; anything else is refused.
const FILE_KEYS: &[&str] = &[
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "application_name",
    "connect_timeout",
    "passfile",
    "sslmode",
];

impl CatalogConfig {
    /// Settings from the environment, then from `file` when given.
    ///
    /// `defaults` is the (host or socket directory, port) of a server the agent
    /// discovered (see [`server_defaults`]); without it the local default
    /// socket directory and 5432.
    pub fn load(file: Option<&Path>, defaults: Option<(String, u16)>) -> Result<CatalogConfig> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let file = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| CatalogError::Config {
                    origin: p.display().to_string(),
                    msg: e.to_string(),
                })?;
                Some((p.display().to_string(), text))
            }
            None => None,
        };
        Self::from_sources(
            &env,
            file.as_ref().map(|(o, t)| (o.as_str(), t.as_str())),
            defaults,
            home.as_deref(),
        )
    }

    /// Settings from the environment only.
    pub fn from_env(defaults: Option<(String, u16)>) -> Result<CatalogConfig> {
        Self::load(None, defaults)
    }

    /// The pure part of [`load`](Self::load): `env` looks up a variable, `file`
    /// is (name for messages, conninfo text).
    pub fn from_sources(
        env: &dyn Fn(&str) -> Option<String>,
        file: Option<(&str, &str)>,
        defaults: Option<(String, u16)>,
        home: Option<&Path>,
    ) -> Result<CatalogConfig> {
        let (host, port) = defaults.unwrap_or_else(|| {
            let dir = if Path::new("/var/run/postgresql").is_dir() {
                "/var/run/postgresql"
            } else {
                "/tmp"
            };
            (dir.to_string(), 5432)
        });
        let mut c = CatalogConfig {
            host,
            port,
            user: "postgres".into(),
            password: None,
            dbname: "postgres".into(),
            application_name: "dbtel".into(),
            connect_timeout: Duration::from_secs(5),
            passfile: None,
        };
        for (var, key) in [
            ("PGHOST", "host"),
            ("PGPORT", "port"),
            ("PGUSER", "user"),
            ("PGPASSWORD", "password"),
            ("PGDATABASE", "dbname"),
            ("PGAPPNAME", "application_name"),
            ("PGCONNECT_TIMEOUT", "connect_timeout"),
            ("PGPASSFILE", "passfile"),
            ("PGSSLMODE", "sslmode"),
        ] {
            if let Some(v) = env(var) {
                c.set(key, &v).map_err(|msg| CatalogError::Config {
                    origin: format!("environment variable {var}"),
                    msg,
                })?;
            }
        }
        if let Some((origin, text)) = file {
            let pairs = parse_conninfo(text).map_err(|msg| CatalogError::Config {
                origin: origin.to_string(),
                msg,
            })?;
            for (k, v) in pairs {
                c.set(&k, &v).map_err(|msg| CatalogError::Config {
                    origin: origin.to_string(),
                    msg,
                })?;
            }
        }
        if c.passfile.is_none() {
            c.passfile = home.map(|h| h.join(".pgpass")).filter(|p| p.is_file());
        }
        Ok(c)
    }

    /// Applies one setting. Messages name the key, never the value (it may be a password).
    fn set(&mut self, key: &str, v: &str) -> std::result::Result<(), String> {
        match key {
            // libpq accepts comma-separated host lists; the catalog uses the first.
            "host" => self.host = v.split(',').next().unwrap_or(v).trim().to_string(),
            "port" => {
                let first = v.split(',').next().unwrap_or(v).trim();
                self.port = first.parse().map_err(|_| format!("port: not a port number: {first:?}"))?;
            }
            "user" => self.user = v.to_string(),
            "password" => self.password = Some(v.to_string()),
            "dbname" => self.dbname = v.to_string(),
            "application_name" => self.application_name = v.to_string(),
            "connect_timeout" => {
                let s: u64 = v.trim().parse().map_err(|_| format!("connect_timeout: not a number of seconds: {v:?}"))?;
                // libpq: 0 means wait forever; keep the catalog from hanging anyway.
                self.connect_timeout = Duration::from_secs(if s == 0 { 30 } else { s.max(2) });
            }
            "passfile" => self.passfile = Some(PathBuf::from(v)),
            "sslmode" => match v {
                "disable" | "allow" | "prefer" => {}
                _ => return Err(format!("sslmode={v}: the catalog client does not support TLS (use disable, allow or prefer)")),
            },
            _ => return Err(format!("unknown key {key:?} (known: {})", FILE_KEYS.join(", "))),
        }
        Ok(())
    }

    /// The same settings for another database (per-database catalog connections).
    pub fn with_dbname(&self, dbname: &str) -> CatalogConfig {
        CatalogConfig {
            dbname: dbname.to_string(),
            ..self.clone()
        }
    }

    /// Whether a password was set explicitly.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// `host=… port=… user=… dbname=…`, for messages: never the password.
    pub fn target(&self) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            self.host, self.port, self.user, self.dbname
        )
    }

    /// The password for this configuration: explicit, else the first matching passfile line.
    fn resolve_password(&self) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let path = self.passfile.as_ref()?;
        let text = read_passfile(path)?;
        passfile_lookup(&text, &self.host, self.port, &self.dbname, &self.user)
    }

    pub(super) fn pg_config(&self) -> tokio_postgres::Config {
        let mut pc = tokio_postgres::Config::new();
        pc.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .ssl_mode(SslMode::Disable)
            // Catalog views answer in milliseconds; never let one of our
            // queries sit in the server (or wait on a lock) for long.
            .options("-c statement_timeout=5000 -c lock_timeout=1000");
        if let Some(p) = self.resolve_password() {
            pc.password(p);
        }
        pc
    }
}

/// Reads a pgpass file, ignoring it (as libpq does) when others may read it.
fn read_passfile(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        log::warn!(
            "password file {} has group or world access; ignored (chmod 0600 it)",
            path.display()
        );
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// The password of the first pgpass line `host:port:db:user:password` matching
/// (fields may be `*`; `\:` and `\\` escape). A unix socket directory also
/// matches `localhost`, as in libpq for its default socket directory.
pub fn passfile_lookup(
    text: &str,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() < 5 {
            continue;
        }
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        let host_ok = m(&fields[0], host) || (host.starts_with('/') && fields[0] == "localhost");
        if host_ok && m(&fields[1], &port) && m(&fields[2], dbname) && m(&fields[3], user) {
            // A password containing ':' was escaped; anything after the fifth field belongs to it.
            return Some(fields[4..].join(":"));
        }
    }
    None
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().unwrap().push(n);
                }
            }
            ':' => out.push(String::new()),
            _ => out.last_mut().unwrap().push(ch),
        }
    }
    out
}

/// Parses libpq conninfo text: `key=value` pairs separated by white space,
/// values optionally single-quoted (`\'` and `\\` escape); lines starting
/// with `#` are comments. Errors name the position, never a value.
pub fn parse_conninfo(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let lineno = lineno + 1;
        if line.trim_start().starts_with('#') {
            continue;
        }
        let mut it = line.chars().peekable();
        loop {
            while it.peek().is_some_and(|c| c.is_whitespace()) {
                it.next();
            }
            if it.peek().is_none() {
                break;
            }
            let mut key = String::new();
            while let Some(&c) = it.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                it.next();
            }
            while it.peek().is_some_and(|c| c.is_whitespace()) {
                it.next();
            }
            if it.next() != Some('=') {
                return Err(format!("line {lineno}: expected key=value after {key:?}"));
            }
            while it.peek().is_some_and(|c| c.is_whitespace()) {
                it.next();
            }
            let mut value = String::new();
            if it.peek() == Some(&'\'') {
                it.next();
                let mut closed = false;
                while let Some(c) = it.next() {
                    match c {
                        '\\' => match it.next() {
                            Some(n) => value.push(n),
                            None => break,
                        },
                        '\'' => {
                            closed = true;
                            break;
                        }
                        _ => value.push(c),
                    }
                }
                if !closed {
                    return Err(format!(
                        "line {lineno}: unterminated quoted value for {key:?}"
                    ));
                }
            } else {
                while let Some(&c) = it.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    it.next();
                    if c == '\\' {
                        if let Some(n) = it.next() {
                            value.push(n);
                        }
                    } else {
                        value.push(c);
                    }
                }
            }
            if !FILE_KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "line {lineno}: unknown key {key:?} (known: {})",
                    FILE_KEYS.join(", ")
                ));
            }
            out.push((key, value));
        }
    }
    Ok(out)
}

/// (host or socket directory, port) of the PostgreSQL server whose postmaster
/// is `postmaster_pid`, from its `postmaster.pid` (the postmaster's working
/// directory is its data directory). Line 4 is the port, line 5 the first unix
/// socket directory, line 6 the first listen address. Paths go through
/// /proc/PID/root, so a server in a container is reached from the host.
pub fn server_defaults(postmaster_pid: u32) -> Option<(String, u16)> {
    let text =
        std::fs::read_to_string(format!("/proc/{postmaster_pid}/cwd/postmaster.pid")).ok()?;
    let root = std::fs::read_link(format!("/proc/{postmaster_pid}/root")).ok();
    let in_container = root.as_deref().is_some_and(|r| r != Path::new("/"));
    let (sock, port, listen) = parse_postmaster_pid(&text)?;
    if let Some(dir) = sock {
        let dir = if in_container {
            format!("/proc/{postmaster_pid}/root{dir}")
        } else {
            dir
        };
        return Some((dir, port));
    }
    Some((listen?, port))
}

/// (socket directory, port, TCP address to use) from postmaster.pid text.
pub fn parse_postmaster_pid(text: &str) -> Option<(Option<String>, u16, Option<String>)> {
    let lines: Vec<&str> = text.lines().collect();
    let port: u16 = lines.get(3)?.trim().parse().ok()?;
    let sock = lines
        .get(4)
        .map(|s| s.trim())
        .filter(|s| s.starts_with('/'))
        .map(String::from);
    let listen = lines
        .get(5)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|a| match a {
            "*" | "0.0.0.0" => "127.0.0.1".to_string(),
            "::" => "::1".to_string(),
            a => a.to_string(),
        });
    Some((sock, port, listen))
}

// ---------------------------------------------------------------------------
// Data

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_then_env_then_file() {
        let c =
            CatalogConfig::from_sources(&env_of(&[]), None, Some(("/run/pg".into(), 6543)), None)
                .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str(), c.dbname.as_str()),
            ("/run/pg", 6543, "postgres", "postgres")
        );
        assert_eq!(c.application_name, "dbtel");
        assert!(!c.has_password());

        let env = env_of(&[
            ("PGHOST", "db1,db2"),
            ("PGPORT", "5433"),
            ("PGUSER", "mon"),
            ("PGPASSWORD", "s3cret"),
            ("PGAPPNAME", "x"),
        ]);
        let c =
            CatalogConfig::from_sources(&env, None, Some(("/run/pg".into(), 6543)), None).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str()),
            ("db1", 5433, "mon")
        );
        assert_eq!(c.application_name, "x");
        assert_eq!(c.resolve_password().as_deref(), Some("s3cret"));

        let file = "# catalog\nhost=10.0.0.1 port = 5434\n dbname='my db' password='it\\'s'\n";
        let c = CatalogConfig::from_sources(&env, Some(("f.conf", file)), None, None).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.dbname.as_str(), c.user.as_str()),
            ("10.0.0.1", 5434, "my db", "mon")
        );
        assert_eq!(c.resolve_password().as_deref(), Some("it's"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_without_values() {
        let e = CatalogConfig::from_sources(
            &env_of(&[]),
            Some(("f.conf", "host=x\npassword=hunter2 hostaddr=1.2.3.4")),
            None,
            None,
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("f.conf") && m.contains("line 2") && m.contains("unknown key \"hostaddr\""),
            "{m}"
        );
        assert!(!m.contains("hunter2"));
        let e = CatalogConfig::from_sources(
            &env_of(&[]),
            Some(("f.conf", "password='hunter2")),
            None,
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("unterminated") && !e.to_string().contains("hunter2"),
            "{e}"
        );
        let e = CatalogConfig::from_sources(&env_of(&[("PGPORT", "nope")]), None, None, None)
            .unwrap_err();
        assert!(e.to_string().contains("PGPORT"), "{e}");
        let e = CatalogConfig::from_sources(&env_of(&[("PGSSLMODE", "require")]), None, None, None)
            .unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        assert!(parse_conninfo("host").is_err());
    }

    #[test]
    fn debug_and_target_redact_the_password() {
        let c =
            CatalogConfig::from_sources(&env_of(&[("PGPASSWORD", "hunter2")]), None, None, None)
                .unwrap();
        let d = format!(
            "{c:?} {} {:?}",
            c.target(),
            crate::postgres::catalog::Catalog::new(c.clone())
        );
        assert!(!d.contains("hunter2") && d.contains("<redacted>"), "{d}");
    }

    #[test]
    fn pgpass_lines_match_like_libpq() {
        let text = "# comment\nother:5432:*:postgres:no\n/tmp/s:5432:app:mon:a\\:b\n*:*:*:mon:fallback\nlocalhost:6000:*:*:local\n";
        assert_eq!(
            passfile_lookup(text, "/tmp/s", 5432, "app", "mon").as_deref(),
            Some("a:b")
        );
        assert_eq!(
            passfile_lookup(text, "/tmp/s", 5432, "postgres", "mon").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            passfile_lookup(text, "/var/run/postgresql", 6000, "x", "y").as_deref(),
            Some("local")
        );
        assert_eq!(passfile_lookup(text, "db", 5432, "x", "y"), None);
    }

    #[test]
    fn postmaster_pid_file() {
        let text = "4242\n/var/lib/postgresql/15/main\n1700000000\n5433\n/var/run/postgresql\n*\n  1234567  98304\nready   \n";
        assert_eq!(
            parse_postmaster_pid(text),
            Some((
                Some("/var/run/postgresql".into()),
                5433,
                Some("127.0.0.1".into())
            ))
        );
        let text = "4242\n/data\n1700000000\n5432\n\nlocalhost\n";
        assert_eq!(
            parse_postmaster_pid(text),
            Some((None, 5432, Some("localhost".into())))
        );
        assert_eq!(parse_postmaster_pid("4242\n/data\n"), None);
    }

    #[test]
    fn server_defaults_of_a_missing_process() {
        assert_eq!(server_defaults(u32::MAX), None);
    }
}
