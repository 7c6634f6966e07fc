//! The PostgreSQL catalog side of contention tracing: a small SQL client that
//! asks the server who is connected, who waits for whom, and what a lock
//! tag's relation OID is called.
//!
//! Connection settings come from the libpq environment variables or from a
//! conninfo file, never from the command line, and the password never appears
//! in `Debug` output or in an error. Connections are opened lazily and opened
//! again after a failure; one connection per database is kept for relation
//! names, because `pg_class` is per database.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tokio_postgres::{config::SslMode, Client, NoTls, Row};

/// Errors of the catalog client. None of them carries the password.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog configuration {origin}: {msg}")]
    Config { origin: String, msg: String },
    #[error("cannot connect to PostgreSQL ({target}): {msg}")]
    Connect { target: String, msg: String },
    #[error("catalog query ({what}) failed: {msg}")]
    Query { what: &'static str, msg: String },
    #[error("no database with OID {0}")]
    NoDatabase(u32),
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// The message of a tokio-postgres error and its causes, without any of the
/// connection parameters (tokio-postgres never puts the password in them).
fn pg_msg(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

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
const FILE_KEYS: &[&str] = &["host", "port", "user", "password", "dbname", "application_name", "connect_timeout", "passfile", "sslmode"];

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
                let text = std::fs::read_to_string(p)
                    .map_err(|e| CatalogError::Config { origin: p.display().to_string(), msg: e.to_string() })?;
                Some((p.display().to_string(), text))
            }
            None => None,
        };
        Self::from_sources(&env, file.as_ref().map(|(o, t)| (o.as_str(), t.as_str())), defaults, home.as_deref())
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
            let dir = if Path::new("/var/run/postgresql").is_dir() { "/var/run/postgresql" } else { "/tmp" };
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
                c.set(key, &v).map_err(|msg| CatalogError::Config { origin: format!("environment variable {var}"), msg })?;
            }
        }
        if let Some((origin, text)) = file {
            let pairs = parse_conninfo(text).map_err(|msg| CatalogError::Config { origin: origin.to_string(), msg })?;
            for (k, v) in pairs {
                c.set(&k, &v).map_err(|msg| CatalogError::Config { origin: origin.to_string(), msg })?;
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
        CatalogConfig { dbname: dbname.to_string(), ..self.clone() }
    }

    /// Whether a password was set explicitly.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// `host=… port=… user=… dbname=…`, for messages: never the password.
    pub fn target(&self) -> String {
        format!("host={} port={} user={} dbname={}", self.host, self.port, self.user, self.dbname)
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

    fn pg_config(&self) -> tokio_postgres::Config {
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
        log::warn!("password file {} has group or world access; ignored (chmod 0600 it)", path.display());
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// The password of the first pgpass line `host:port:db:user:password` matching
/// (fields may be `*`; `\:` and `\\` escape). A unix socket directory also
/// matches `localhost`, as in libpq for its default socket directory.
pub fn passfile_lookup(text: &str, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
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
                    return Err(format!("line {lineno}: unterminated quoted value for {key:?}"));
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
                return Err(format!("line {lineno}: unknown key {key:?} (known: {})", FILE_KEYS.join(", ")));
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
    let text = std::fs::read_to_string(format!("/proc/{postmaster_pid}/cwd/postmaster.pid")).ok()?;
    let root = std::fs::read_link(format!("/proc/{postmaster_pid}/root")).ok();
    let in_container = root.as_deref().is_some_and(|r| r != Path::new("/"));
    let (sock, port, listen) = parse_postmaster_pid(&text)?;
    if let Some(dir) = sock {
        let dir = if in_container { format!("/proc/{postmaster_pid}/root{dir}") } else { dir };
        return Some((dir, port));
    }
    Some((listen?, port))
}

/// (socket directory, port, TCP address to use) from postmaster.pid text.
pub fn parse_postmaster_pid(text: &str) -> Option<(Option<String>, u16, Option<String>)> {
    let lines: Vec<&str> = text.lines().collect();
    let port: u16 = lines.get(3)?.trim().parse().ok()?;
    let sock = lines.get(4).map(|s| s.trim()).filter(|s| s.starts_with('/')).map(String::from);
    let listen = lines.get(5).map(|s| s.trim()).filter(|s| !s.is_empty()).map(|a| match a {
        "*" | "0.0.0.0" => "127.0.0.1".to_string(),
        "::" => "::1".to_string(),
        a => a.to_string(),
    });
    Some((sock, port, listen))
}

// ---------------------------------------------------------------------------
// Data

/// A relation named by a lock tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Relation {
    pub schema: String,
    pub name: String,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A backend holding a lock another one waits for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blocker {
    pub pid: i32,
    /// Raw text of the current (state active) or last query: obfuscate before exporting.
    pub query: String,
    pub state: String,
    /// How long its transaction has been open.
    pub xact_age_ms: Option<f64>,
    /// How long since its current or last query started.
    pub query_age_ms: Option<f64>,
    pub usename: Option<String>,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub client_port: Option<i32>,
    pub wait_event_type: Option<String>,
    pub wait_event: Option<String>,
}

/// One row of pg_stat_activity (a backend connected to a database).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Backend {
    pub pid: i32,
    pub usename: Option<String>,
    pub application_name: String,
    /// Client IP; None for unix sockets.
    pub client_addr: Option<String>,
    /// -1 for unix sockets, None when unknown.
    pub client_port: Option<i32>,
    pub datname: Option<String>,
    /// `active`, `idle`, `idle in transaction`, … (None: not a client backend or no permission).
    pub state: Option<String>,
    pub backend_type: String,
    pub xact_age_ms: Option<f64>,
    pub query_age_ms: Option<f64>,
    /// Time in the current state (idle in transaction for how long).
    pub state_age_ms: Option<f64>,
    /// Top-level transaction ID, once the transaction has written.
    pub backend_xid: Option<u32>,
    pub wait_event_type: Option<String>,
    pub wait_event: Option<String>,
    /// Raw text of the current or last query: obfuscate before exporting.
    pub query: String,
}

impl Backend {
    pub fn in_transaction(&self) -> bool {
        self.xact_age_ms.is_some()
    }
    pub fn waits_for_lock(&self) -> bool {
        self.wait_event_type.as_deref() == Some("Lock")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleInTransaction {
    pub pid: i32,
    pub duration_ms: f64,
    pub xact_age_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LongQuery {
    pub pid: i32,
    pub duration_ms: f64,
    pub state: Option<String>,
    /// Raw text: obfuscate before exporting.
    pub query: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitCount {
    pub wait_event_type: String,
    pub wait_event: String,
    pub count: u32,
}

/// Server-wide contention figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Backends with an open transaction.
    pub active_transactions: u32,
    /// (pid, age in ms) of the oldest open transaction.
    pub longest_transaction: Option<(i32, f64)>,
    pub idle_in_transaction: Vec<IdleInTransaction>,
    /// Active queries running longer than the threshold, longest first.
    pub long_queries: Vec<LongQuery>,
    /// Sum of pg_stat_database.deadlocks since the statistics were last reset.
    pub deadlocks: i64,
    /// Backends waiting on a lock (Lock, LWLock, BufferPin), by wait event, most first.
    pub lock_waits: Vec<WaitCount>,
}

impl Stats {
    /// The figures derivable from pg_stat_activity rows; pure, so the poller
    /// needs one activity query per period and not one per figure.
    pub fn from_backends<'a>(backends: impl IntoIterator<Item = &'a Backend>, deadlocks: i64, long_query: Duration) -> Stats {
        let threshold = long_query.as_secs_f64() * 1000.0;
        let mut s = Stats { deadlocks, ..Stats::default() };
        let mut waits: HashMap<(String, String), u32> = HashMap::new();
        for b in backends {
            if let Some(age) = b.xact_age_ms {
                s.active_transactions += 1;
                if s.longest_transaction.is_none_or(|(_, a)| age > a) {
                    s.longest_transaction = Some((b.pid, age));
                }
            }
            match b.state.as_deref() {
                Some("idle in transaction") | Some("idle in transaction (aborted)") => s.idle_in_transaction.push(IdleInTransaction {
                    pid: b.pid,
                    duration_ms: b.state_age_ms.unwrap_or(0.0),
                    xact_age_ms: b.xact_age_ms,
                }),
                Some("active") if b.query_age_ms.is_some_and(|a| a >= threshold) => s.long_queries.push(LongQuery {
                    pid: b.pid,
                    duration_ms: b.query_age_ms.unwrap_or(0.0),
                    state: b.state.clone(),
                    query: b.query.clone(),
                }),
                _ => {}
            }
            if let (Some(t), Some(e)) = (&b.wait_event_type, &b.wait_event) {
                if matches!(t.as_str(), "Lock" | "LWLock" | "BufferPin") {
                    *waits.entry((t.clone(), e.clone())).or_default() += 1;
                }
            }
        }
        s.idle_in_transaction.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
        s.long_queries.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
        s.lock_waits = waits.into_iter().map(|((t, e), count)| WaitCount { wait_event_type: t, wait_event: e, count }).collect();
        s.lock_waits.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| (&a.wait_event_type, &a.wait_event).cmp(&(&b.wait_event_type, &b.wait_event))));
        s
    }
}

/// What the poller publishes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// None until the first successful refresh.
    pub taken_at: Option<SystemTime>,
    pub backends: HashMap<i32, Backend>,
    pub stats: Stats,
}

// ---------------------------------------------------------------------------
// The client

/// Warns at most once per period, counting what it held back.
struct RateLimited {
    period: Duration,
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
}

impl RateLimited {
    fn new(period: Duration) -> Self {
        RateLimited { period, last: Mutex::new(None), held: AtomicU64::new(0) }
    }
    fn warn(&self, msg: &dyn fmt::Display) {
        let mut last = self.last.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < self.period) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let held = self.held.swap(0, Ordering::Relaxed);
        if held > 0 {
            log::warn!("{msg} ({held} similar warnings suppressed)");
        } else {
            log::warn!("{msg}");
        }
    }
}

/// A catalog connection and the backend serving it.
#[derive(Clone)]
struct Conn {
    client: Arc<Client>,
    pid: i32,
}

/// Most per-database connections kept open at once (each is a backend on the server).
const MAX_DB_CONNECTIONS: usize = 8;
/// Relation names cached before the cache starts over.
const MAX_RELATIONS: usize = 10_000;

/// An async catalog client, shareable (`Arc<Catalog>`) between tasks.
pub struct Catalog {
    cfg: CatalogConfig,
    long_query: Duration,
    main: tokio::sync::Mutex<Option<Conn>>,
    /// Connections to other databases, by database OID.
    per_db: tokio::sync::Mutex<HashMap<u32, Conn>>,
    /// Backend pids of the catalog's own connections, left out of [`backends`](Self::backends).
    own_pids: Mutex<std::collections::HashSet<i32>>,
    db_names: Mutex<HashMap<u32, String>>,
    relations: Mutex<HashMap<(u32, u32), Relation>>,
    warn: RateLimited,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

const ACTIVITY_COLUMNS: &str = "a.pid, a.usename::text, coalesce(a.application_name, ''), host(a.client_addr), a.client_port, \
     a.datname::text, a.state, coalesce(a.backend_type, ''), \
     (extract(epoch from now() - a.xact_start) * 1000)::float8, \
     (extract(epoch from now() - a.query_start) * 1000)::float8, \
     (extract(epoch from now() - a.state_change) * 1000)::float8, \
     a.backend_xid::text::int8, a.wait_event_type, a.wait_event, coalesce(a.query, '')";

fn backend_from_row(r: &Row) -> Backend {
    Backend {
        pid: r.get(0),
        usename: r.get(1),
        application_name: r.get(2),
        client_addr: r.get(3),
        client_port: r.get(4),
        datname: r.get(5),
        state: r.get(6),
        backend_type: r.get(7),
        xact_age_ms: r.get(8),
        query_age_ms: r.get(9),
        state_age_ms: r.get(10),
        backend_xid: r.get::<_, Option<i64>>(11).map(|x| x as u32),
        wait_event_type: r.get(12),
        wait_event: r.get(13),
        query: r.get(14),
    }
}

impl Catalog {
    /// A client that connects on first use. Long-query threshold: 5 s.
    pub fn new(cfg: CatalogConfig) -> Catalog {
        Catalog {
            cfg,
            long_query: Duration::from_secs(5),
            main: tokio::sync::Mutex::new(None),
            per_db: tokio::sync::Mutex::new(HashMap::new()),
            own_pids: Mutex::new(Default::default()),
            db_names: Mutex::new(HashMap::new()),
            relations: Mutex::new(HashMap::new()),
            warn: RateLimited::new(Duration::from_secs(60)),
        }
    }

    /// Queries active for at least `d` count as long in [`stats`](Self::stats).
    pub fn with_long_query(mut self, d: Duration) -> Catalog {
        self.long_query = d;
        self
    }

    pub fn config(&self) -> &CatalogConfig {
        &self.cfg
    }

    /// Backend PIDs of this client's own connections (not to be traced).
    pub fn own_pids(&self) -> Vec<i32> {
        self.own_pids.lock().unwrap().iter().copied().collect()
    }

    /// Logs a warning about a failed catalog operation, at most once a minute.
    pub fn warn_rate_limited(&self, e: &CatalogError) {
        self.warn.warn(&format_args!("catalog: {e}"));
    }

    async fn connect(&self, cfg: &CatalogConfig) -> Result<Conn> {
        let (client, conn) = cfg
            .pg_config()
            .connect(NoTls)
            .await
            .map_err(|e| CatalogError::Connect { target: cfg.target(), msg: pg_msg(&e) })?;
        let target = cfg.target();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("catalog connection ({target}) ended: {}", pg_msg(&e));
            }
        });
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(|e| CatalogError::Query { what: "connection setup", msg: pg_msg(&e) })?
            .get(0);
        self.own_pids.lock().unwrap().insert(pid);
        log::debug!("catalog connected ({}), backend pid {pid}", cfg.target());
        Ok(Conn { client: Arc::new(client), pid })
    }

    fn forget(&self, conn: &Conn) {
        self.own_pids.lock().unwrap().remove(&conn.pid);
    }

    /// The main connection, opened (again) when there is none or it broke.
    async fn client(&self) -> Result<Arc<Client>> {
        let mut slot = self.main.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.client.clone());
        }
        if let Some(old) = slot.take() {
            self.forget(&old);
        }
        let c = self.connect(&self.cfg).await?;
        *slot = Some(c.clone());
        Ok(c.client)
    }

    /// Connects now (instead of at first use), so that a bad configuration shows at once.
    pub async fn check(&self) -> Result<()> {
        let c = self.client().await?;
        c.simple_query("SELECT 1").await.map_err(|e| CatalogError::Query { what: "connection check", msg: pg_msg(&e) })?;
        Ok(())
    }

    async fn query(&self, what: &'static str, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Vec<Row>> {
        let c = self.client().await?;
        c.query(sql, params).await.map_err(|e| CatalogError::Query { what, msg: pg_msg(&e) })
    }

    /// The name of database `db_oid` (cached: databases are rarely renamed).
    pub async fn database_name(&self, db_oid: u32) -> Result<String> {
        if let Some(n) = self.db_names.lock().unwrap().get(&db_oid) {
            return Ok(n.clone());
        }
        let rows = self.query("database name", "SELECT datname::text FROM pg_database WHERE oid = $1", &[&db_oid]).await?;
        let name: String = rows.first().ok_or(CatalogError::NoDatabase(db_oid))?.get(0);
        self.db_names.lock().unwrap().insert(db_oid, name.clone());
        Ok(name)
    }

    /// A connection to database `db_oid`: the main one when it is that database
    /// (or for shared catalogs, OID 0), else a kept per-database connection.
    async fn client_for(&self, db_oid: u32) -> Result<Arc<Client>> {
        if db_oid == 0 {
            return self.client().await;
        }
        let name = self.database_name(db_oid).await?;
        if name == self.cfg.dbname {
            return self.client().await;
        }
        let mut map = self.per_db.lock().await;
        if let Some(c) = map.get(&db_oid).filter(|c| !c.client.is_closed()) {
            return Ok(c.client.clone());
        }
        map.retain(|_, c| {
            let open = !c.client.is_closed();
            if !open {
                self.forget(c);
            }
            open
        });
        if map.len() >= MAX_DB_CONNECTIONS {
            // Drop one at random; it reconnects when its database comes up again.
            let k = *map.keys().next().unwrap();
            if let Some(old) = map.remove(&k) {
                self.forget(&old);
            }
        }
        let c = self.connect(&self.cfg.with_dbname(&name)).await?;
        map.insert(db_oid, c.clone());
        Ok(c.client)
    }

    /// Schema and name of relation `rel_oid` in database `db_oid` (as in a
    /// lock tag: database 0 for shared catalogs). None when no such relation
    /// is visible (dropped, or created by a transaction not yet committed).
    pub async fn relation_name(&self, db_oid: u32, rel_oid: u32) -> Result<Option<Relation>> {
        if let Some(r) = self.relations.lock().unwrap().get(&(db_oid, rel_oid)) {
            return Ok(Some(r.clone()));
        }
        let c = self.client_for(db_oid).await?;
        let row = c
            .query_opt(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
                &[&rel_oid],
            )
            .await
            .map_err(|e| CatalogError::Query { what: "relation name", msg: pg_msg(&e) })?;
        // Not found is not cached: the relation may be committed a moment later.
        let Some(row) = row else { return Ok(None) };
        let rel = Relation { schema: row.get(0), name: row.get(1) };
        let mut cache = self.relations.lock().unwrap();
        if cache.len() >= MAX_RELATIONS {
            cache.clear();
        }
        cache.insert((db_oid, rel_oid), rel.clone());
        Ok(Some(rel))
    }

    /// The backends `waiting_pid` waits for, in pg_blocking_pids order.
    ///
    /// pg_blocking_pids briefly locks the lock manager's partitions, so it is
    /// asked for one waiter at a time, when a wait is seen, and never polled
    /// for every backend.
    pub async fn blockers(&self, waiting_pid: i32) -> Result<Vec<Blocker>> {
        let rows = self
            .query(
                "blockers",
                "SELECT a.pid, coalesce(a.query, ''), coalesce(a.state, ''), \
                        (extract(epoch from now() - a.xact_start) * 1000)::float8, \
                        (extract(epoch from now() - a.query_start) * 1000)::float8, \
                        a.usename::text, coalesce(a.application_name, ''), host(a.client_addr), a.client_port, \
                        a.wait_event_type, a.wait_event \
                 FROM unnest(pg_blocking_pids($1)) WITH ORDINALITY AS b(pid, ord) \
                 JOIN pg_stat_activity a ON a.pid = b.pid \
                 ORDER BY b.ord",
                &[&waiting_pid],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Blocker {
                pid: r.get(0),
                query: r.get(1),
                state: r.get(2),
                xact_age_ms: r.get(3),
                query_age_ms: r.get(4),
                usename: r.get(5),
                application_name: r.get(6),
                client_addr: r.get(7),
                client_port: r.get(8),
                wait_event_type: r.get(9),
                wait_event: r.get(10),
            })
            .collect())
    }

    /// The row a backend waits to lock, as (database OID, relation OID): a
    /// row-lock wait is a wait on the holder's transaction id, which names no
    /// table, but the waiter holds the tuple lock on the row meanwhile.
    pub async fn tuple_lock_of(&self, pid: i32) -> Result<Option<(u32, u32)>> {
        let rows = self
            .query(
                "tuple lock",
                "SELECT database, relation FROM pg_locks                  WHERE pid = $1 AND locktype = 'tuple' AND granted LIMIT 1",
                &[&pid],
            )
            .await?;
        Ok(rows.first().and_then(|r| Some((r.get::<_, Option<u32>>(0)?, r.get::<_, Option<u32>>(1)?))))
    }

    /// For every backend waiting on a heavyweight lock: (its pid, the pids it
    /// waits for). pg_blocking_pids runs only for the waiters.
    pub async fn blocking_graph(&self) -> Result<Vec<(i32, Vec<i32>)>> {
        let rows = self
            .query(
                "blocking graph",
                "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get::<_, i32>(0), r.get::<_, Vec<i32>>(1))).filter(|(_, b)| !b.is_empty()).collect())
    }

    /// Backend `pid`, if it is connected to a database.
    pub async fn backend(&self, pid: i32) -> Result<Option<Backend>> {
        let sql = format!("SELECT {ACTIVITY_COLUMNS} FROM pg_stat_activity a WHERE a.pid = $1 AND a.datid IS NOT NULL");
        Ok(self.query("backend", &sql, &[&pid]).await?.first().map(backend_from_row))
    }

    /// Every backend connected to a database (client backends, autovacuum
    /// workers, …), except the catalog's own connections. One scan of
    /// pg_stat_activity, which reads shared memory and takes no locks.
    pub async fn backends(&self) -> Result<Vec<Backend>> {
        let sql = format!("SELECT {ACTIVITY_COLUMNS} FROM pg_stat_activity a WHERE a.datid IS NOT NULL");
        let rows = self.query("backends", &sql, &[]).await?;
        let own = self.own_pids.lock().unwrap().clone();
        Ok(rows.iter().map(backend_from_row).filter(|b| !own.contains(&b.pid)).collect())
    }

    /// Deadlocks detected so far, over all databases.
    pub async fn deadlocks(&self) -> Result<i64> {
        let rows = self.query("deadlocks", "SELECT coalesce(sum(deadlocks), 0)::int8 FROM pg_stat_database", &[]).await?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    /// Transaction and lock-wait figures, now.
    pub async fn stats(&self) -> Result<Stats> {
        let backends = self.backends().await?;
        let deadlocks = self.deadlocks().await?;
        Ok(Stats::from_backends(&backends, deadlocks, self.long_query))
    }

    /// Backends and stats from the same pg_stat_activity read.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let backends = self.backends().await?;
        let deadlocks = self.deadlocks().await?;
        let stats = Stats::from_backends(&backends, deadlocks, self.long_query);
        Ok(Snapshot { taken_at: Some(SystemTime::now()), backends: backends.into_iter().map(|b| (b.pid, b)).collect(), stats })
    }
}

/// Refreshes a [`Snapshot`] every `period` (first one at once). Errors are
/// logged (at most once a minute) and the last good snapshot stays published;
/// the task runs until aborted or until every receiver is dropped.
pub fn spawn_poller(cat: Arc<Catalog>, period: Duration) -> (tokio::task::JoinHandle<()>, tokio::sync::watch::Receiver<Arc<Snapshot>>) {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match cat.snapshot().await {
                Ok(s) => {
                    if tx.send(Arc::new(s)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if tx.is_closed() {
                        return;
                    }
                    cat.warn_rate_limited(&e);
                }
            }
        }
    });
    (task, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn defaults_then_env_then_file() {
        let c = CatalogConfig::from_sources(&env_of(&[]), None, Some(("/run/pg".into(), 6543)), None).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.user.as_str(), c.dbname.as_str()), ("/run/pg", 6543, "postgres", "postgres"));
        assert_eq!(c.application_name, "dbtel");
        assert!(!c.has_password());

        let env = env_of(&[("PGHOST", "db1,db2"), ("PGPORT", "5433"), ("PGUSER", "mon"), ("PGPASSWORD", "s3cret"), ("PGAPPNAME", "x")]);
        let c = CatalogConfig::from_sources(&env, None, Some(("/run/pg".into(), 6543)), None).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.user.as_str()), ("db1", 5433, "mon"));
        assert_eq!(c.application_name, "x");
        assert_eq!(c.resolve_password().as_deref(), Some("s3cret"));

        let file = "# catalog\nhost=10.0.0.1 port = 5434\n dbname='my db' password='it\\'s'\n";
        let c = CatalogConfig::from_sources(&env, Some(("f.conf", file)), None, None).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.dbname.as_str(), c.user.as_str()), ("10.0.0.1", 5434, "my db", "mon"));
        assert_eq!(c.resolve_password().as_deref(), Some("it's"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_without_values() {
        let e = CatalogConfig::from_sources(&env_of(&[]), Some(("f.conf", "host=x\npassword=hunter2 hostaddr=1.2.3.4")), None, None).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("f.conf") && m.contains("line 2") && m.contains("unknown key \"hostaddr\""), "{m}");
        assert!(!m.contains("hunter2"));
        let e = CatalogConfig::from_sources(&env_of(&[]), Some(("f.conf", "password='hunter2")), None, None).unwrap_err();
        assert!(e.to_string().contains("unterminated") && !e.to_string().contains("hunter2"), "{e}");
        let e = CatalogConfig::from_sources(&env_of(&[("PGPORT", "nope")]), None, None, None).unwrap_err();
        assert!(e.to_string().contains("PGPORT"), "{e}");
        let e = CatalogConfig::from_sources(&env_of(&[("PGSSLMODE", "require")]), None, None, None).unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        assert!(parse_conninfo("host").is_err());
    }

    #[test]
    fn debug_and_target_redact_the_password() {
        let c = CatalogConfig::from_sources(&env_of(&[("PGPASSWORD", "hunter2")]), None, None, None).unwrap();
        let d = format!("{c:?} {} {:?}", c.target(), Catalog::new(c.clone()));
        assert!(!d.contains("hunter2") && d.contains("<redacted>"), "{d}");
    }

    #[test]
    fn pgpass_lines_match_like_libpq() {
        let text = "# comment\nother:5432:*:postgres:no\n/tmp/s:5432:app:mon:a\\:b\n*:*:*:mon:fallback\nlocalhost:6000:*:*:local\n";
        assert_eq!(passfile_lookup(text, "/tmp/s", 5432, "app", "mon").as_deref(), Some("a:b"));
        assert_eq!(passfile_lookup(text, "/tmp/s", 5432, "postgres", "mon").as_deref(), Some("fallback"));
        assert_eq!(passfile_lookup(text, "/var/run/postgresql", 6000, "x", "y").as_deref(), Some("local"));
        assert_eq!(passfile_lookup(text, "db", 5432, "x", "y"), None);
    }

    #[test]
    fn postmaster_pid_file() {
        let text = "4242\n/var/lib/postgresql/15/main\n1700000000\n5433\n/var/run/postgresql\n*\n  1234567  98304\nready   \n";
        assert_eq!(parse_postmaster_pid(text), Some((Some("/var/run/postgresql".into()), 5433, Some("127.0.0.1".into()))));
        let text = "4242\n/data\n1700000000\n5432\n\nlocalhost\n";
        assert_eq!(parse_postmaster_pid(text), Some((None, 5432, Some("localhost".into()))));
        assert_eq!(parse_postmaster_pid("4242\n/data\n"), None);
    }

    #[test]
    fn server_defaults_of_a_missing_process() {
        assert_eq!(server_defaults(u32::MAX), None);
    }

    pub(crate) fn backend(pid: i32, state: &str, xact: Option<f64>, query: Option<f64>, wait: Option<(&str, &str)>) -> Backend {
        Backend {
            pid,
            usename: Some("postgres".into()),
            application_name: "psql".into(),
            client_addr: None,
            client_port: Some(-1),
            datname: Some("postgres".into()),
            state: Some(state.into()),
            backend_type: "client backend".into(),
            xact_age_ms: xact,
            query_age_ms: query,
            state_age_ms: query,
            backend_xid: None,
            wait_event_type: wait.map(|w| w.0.into()),
            wait_event: wait.map(|w| w.1.into()),
            query: format!("select {pid}"),
        }
    }

    #[test]
    fn stats_from_backends() {
        let bs = [
            backend(1, "idle in transaction", Some(9000.0), Some(8000.0), Some(("Client", "ClientRead"))),
            backend(2, "active", Some(7000.0), Some(7000.0), Some(("Lock", "transactionid"))),
            backend(3, "active", Some(6000.0), Some(6000.0), Some(("Lock", "tuple"))),
            backend(4, "active", Some(10.0), Some(10.0), Some(("Lock", "tuple"))),
            backend(5, "idle", None, Some(100000.0), Some(("Client", "ClientRead"))),
        ];
        let s = Stats::from_backends(&bs, 3, Duration::from_secs(5));
        assert_eq!(s.active_transactions, 4);
        assert_eq!(s.longest_transaction, Some((1, 9000.0)));
        assert_eq!(s.idle_in_transaction, vec![IdleInTransaction { pid: 1, duration_ms: 8000.0, xact_age_ms: Some(9000.0) }]);
        assert_eq!(s.long_queries.iter().map(|q| q.pid).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(s.deadlocks, 3);
        let w: Vec<(&str, &str, u32)> = s.lock_waits.iter().map(|w| (w.wait_event_type.as_str(), w.wait_event.as_str(), w.count)).collect();
        assert_eq!(w, vec![("Lock", "tuple", 2), ("Lock", "transactionid", 1)]);
    }

    #[test]
    fn warnings_are_rate_limited() {
        let r = RateLimited::new(Duration::from_secs(3600));
        r.warn(&"one");
        r.warn(&"two");
        r.warn(&"three");
        assert_eq!(r.held.load(Ordering::Relaxed), 2);
    }
}
