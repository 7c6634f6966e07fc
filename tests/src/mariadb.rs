//! A throwaway MariaDB server in a temporary directory (Debian's mariadbd,
//! made by mariadb-install-db), listening on a unix socket in that directory
//! and on a free loopback port, with the general query log on: the ground
//! truth client spans are compared with. Stopped cleanly on drop.

use std::{
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct MariaDb {
    pub dir: tempfile::TempDir,
    pub port: u16,
    server: Option<Child>,
}

/// One entry of the general query log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneralLog {
    /// The server's connection id (`CONNECTION_ID()`, libmariadb's `mysql_thread_id`).
    pub connection: u64,
    /// `Connect`, `Query`, `Prepare`, `Execute`, `Close stmt`, `Init DB`, `Quit`, ...
    pub command: String,
    /// The statement (newlines kept), the database, or the user: as logged.
    pub text: String,
}

const SERVER: &str = "/usr/sbin/mariadbd";

fn mysql_uid() -> (u32, u32) {
    let name = std::ffi::CString::new("mysql").unwrap();
    // SAFETY: getpwnam with a valid C string; the result is read immediately.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "no 'mysql' user: install mariadb-server with cargo xtask setup"
    );
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Settings for speed: nothing here needs durability.
const FAST: [&str; 3] = [
    "--innodb-flush-method=nosync",
    "--innodb-buffer-pool-size=32M",
    "--skip-name-resolve",
];

impl MariaDb {
    /// Makes the data directory and starts the server; returns once it accepts connections.
    pub fn start() -> MariaDb {
        Self::start_with(&[])
    }

    /// [`MariaDb::start`] with extra server options (`--thread-handling=pool-of-threads`).
    pub fn start_with(extra: &[&str]) -> MariaDb {
        assert!(
            Path::new(SERVER).exists(),
            "{SERVER} missing: install mariadb-server with cargo xtask setup"
        );
        let (uid, gid) = mysql_uid();
        let dir = tempfile::Builder::new()
            .prefix("dbtel-mariadb-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        // SAFETY: chown on a path we just created.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, gid) }, 0);
        let data = dir.path().join("data");
        // Its own temporary directory, not the /tmp every server on the host
        // shares: a bootstrap failed there once ("Error on delete of
        // '/tmp/#sql-temptable-….MAI'", the file gone under it).
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let c = std::ffi::CString::new(tmp.to_str().unwrap()).unwrap();
        // SAFETY: chown on a path we just created.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, gid) }, 0);
        let tmpdir = format!("--tmpdir={}", tmp.display());
        // root@localhost without a password (not unix_socket auth): any client, socket or TCP.
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=mysql",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(&tmpdir)
            .args(FAST)
            .stdin(Stdio::null())
            .output()
            .expect("mariadb-install-db (cargo xtask setup installs mariadb-server)");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let p = |name: &str| dir.path().join(name).display().to_string();
        let server = Command::new(SERVER)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", p("sock")))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=mysql",
                "--general-log=1",
            ])
            .arg(&tmpdir)
            .arg(format!("--general-log-file={}", p("general.log")))
            .arg(format!("--log-error={}", p("error.log")))
            .arg(format!("--pid-file={}", p("mariadbd.pid")))
            .args(FAST)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(SERVER);
        let mut db = MariaDb {
            dir,
            port,
            server: Some(server),
        };
        db.wait_ready();
        db
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ping = Command::new("mariadb-admin")
                .args(self.client_args())
                .arg("ping")
                .output()
                .unwrap();
            if ping.status.success() {
                return;
            }
            let exited = self.server.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none(),
                "mariadbd exited ({exited:?}): {}",
                self.error_log()
            );
            assert!(
                Instant::now() < deadline,
                "mariadbd never accepted connections: {}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's own error log (start-up and shutdown notes).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// mariadbd's PID (it runs in the foreground: the harness's child).
    pub fn pid(&self) -> u32 {
        self.server.as_ref().unwrap().id()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// Arguments connecting a client (mariadb, mariadb-admin; `--no-defaults`
    /// first, as they require) as root over the unix socket.
    pub fn client_args(&self) -> Vec<String> {
        vec![
            "--no-defaults".into(),
            format!("--socket={}", self.socket().display()),
            "--user=root".into(),
        ]
    }

    /// The same over TCP to 127.0.0.1.
    pub fn tcp_client_args(&self) -> Vec<String> {
        vec![
            "--no-defaults".into(),
            "--protocol=TCP".into(),
            "--host=127.0.0.1".into(),
            format!("--port={}", self.port),
            "--user=root".into(),
        ]
    }

    /// Runs SQL (several statements allowed) with the mariadb CLI, panicking
    /// on failure; returns stdout in batch form (tab-separated, no headers).
    pub fn cli(&self, sql: &str) -> String {
        let out = Command::new("mariadb")
            .args(self.client_args())
            .args(["--batch", "--skip-column-names", "-e", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mariadb -e {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Every entry of the general query log, in order.
    pub fn general_log(&self) -> Vec<GeneralLog> {
        let path = self.dir.path().join("general.log");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        parse_general_log(&text)
    }

    /// Waits (10 s at most) until each connection's `Quit` is logged: the
    /// server logs it when it reads the client's COM_QUIT, which may be after
    /// the client has exited. (A client that dies without saying goodbye gets
    /// no `Quit`.)
    pub fn wait_quit(&self, connections: &[u64]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.general_log();
            let open: Vec<u64> = connections
                .iter()
                .copied()
                .filter(|&c| !log.iter().any(|e| e.connection == c && e.command == "Quit"))
                .collect();
            if open.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no Quit logged for connections {open:?}: {log:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The general log as (connection id, command, text).
    pub fn general_log_statements(&self) -> Vec<(u64, String, String)> {
        self.general_log()
            .into_iter()
            .map(|e| (e.connection, e.command, e.text))
            .collect()
    }
}

/// Parses MariaDB's general log file. An entry is
/// `[YYMMDD HH:MM:SS]\t` or `\t\t`, then `%5llu ` (the connection id), the
/// command, `\t` and the text, which runs on over the following lines until
/// the next entry (statements keep their newlines). The banner a server
/// writes when it opens the file is not an entry.
pub fn parse_general_log(text: &str) -> Vec<GeneralLog> {
    let mut out: Vec<GeneralLog> = Vec::new();
    let mut in_banner = false;
    for line in text.lines() {
        if let Some(e) = entry(line) {
            out.push(e);
            in_banner = false;
        } else if line.contains(", Version: ") && line.ends_with("started with:") {
            // The banner: this line, "Tcp port: ...", "Time ... Argument".
            in_banner = true;
        } else if in_banner {
            in_banner = !line.starts_with("Time\t");
        } else if let Some(last) = out.last_mut() {
            last.text.push('\n');
            last.text.push_str(line);
        }
    }
    out
}

fn entry(line: &str) -> Option<GeneralLog> {
    let rest = match line.strip_prefix("\t\t") {
        Some(r) => r,
        None => {
            // "YYMMDD HH:MM:SS\t" (the hour padded with a space).
            let (time, r) = line.split_once('\t')?;
            let ok = time.len() == 15
                && time.bytes().enumerate().all(|(i, b)| match i {
                    6 => b == b' ',
                    7 => b == b' ' || b.is_ascii_digit(),
                    9 | 12 => b == b':',
                    _ => b.is_ascii_digit(),
                });
            if !ok {
                return None;
            }
            r
        }
    };
    let rest = rest.trim_start_matches(' ');
    let (id, rest) = rest.split_once(' ')?;
    let connection = id.parse().ok()?;
    let (command, text) = rest.split_once('\t')?;
    if command.is_empty()
        || !command
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b' ')
    {
        return None;
    }
    Some(GeneralLog {
        connection,
        command: command.into(),
        text: text.into(),
    })
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        // SIGTERM: a normal shutdown (connections closed, InnoDB flushed).
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = server.kill();
                let _ = server.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_continuations_and_banners() {
        let log = "mariadbd, Version: 10.11.19-MariaDB-0+deb12u1-log (Debian 12). started with:\n\
Tcp port: 33061  Unix socket: /tmp/x/sock\n\
Time\t\t    Id Command\tArgument\n\
261129  4:57:36\t     3 Connect\troot@localhost on  using Socket\n\
\t\t     3 Init DB\td\n\
\t\t     3 Query\tselect\n 'multi\nline'\n\
\t\t    12 Close stmt\t\n\
\t\t     3 Quit\t\n";
        let got = parse_general_log(log);
        let got: Vec<(u64, &str, &str)> = got
            .iter()
            .map(|e| (e.connection, e.command.as_str(), e.text.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (3, "Connect", "root@localhost on  using Socket"),
                (3, "Init DB", "d"),
                (3, "Query", "select\n 'multi\nline'"),
                (12, "Close stmt", ""),
                (3, "Quit", ""),
            ]
        );
    }
}
