//! The real drivers `cargo xtask setup` installs into `.drivers/`: Python
//! wheels (psycopg 3 binary, psycopg2-binary, asyncpg) in a virtual
//! environment, node-postgres and mysql2, and Debian's pgjdbc.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
};

use crate::MariaDb;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join(".drivers")
}

fn present(p: PathBuf, what: &str) -> PathBuf {
    assert!(
        p.exists(),
        "{} is missing: {what} is installed by cargo xtask setup",
        p.display()
    );
    p
}

/// The virtual environment's python: psycopg (3, binary wheel), psycopg2-binary, asyncpg.
pub fn python() -> Command {
    Command::new(present(dir().join("venv/bin/python"), "the driver venv"))
}

/// The applications' venv: SQLAlchemy, OpenTelemetry's SDK, OTLP/HTTP
/// exporter and psycopg2 instrumentation, on psycopg2-binary.
pub fn apps_python() -> Command {
    Command::new(present(
        dir().join("apps/bin/python"),
        "the applications' venv",
    ))
}

/// node with node-postgres (`require("pg")`) and mysql2 (`require("mysql2")`) resolvable.
pub fn node() -> Command {
    let modules = present(dir().join("node/node_modules"), "node-postgres and mysql2");
    let mut c = Command::new("node");
    c.env("NODE_PATH", modules);
    c
}

/// java with Debian's pgjdbc on the class path, running a single-file program.
pub fn java(source: &str) -> Command {
    let jar = present(
        PathBuf::from("/usr/share/java/postgresql.jar"),
        "pgjdbc (libpostgresql-jdbc-java)",
    );
    let mut c = Command::new("java");
    c.arg("-cp").arg(jar).arg(source);
    c
}

/// A program under tests/drivers.
pub fn program(name: &str) -> PathBuf {
    present(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("drivers")
            .join(name),
        "the test program",
    )
}

/// A tests/drivers Python program against a MariaDB server (arguments:
/// its socket, then `args`), which prints its PID first and waits for `go`
/// on stdin before its workload.
pub struct App {
    child: Child,
    out: BufReader<ChildStdout>,
    pub pid: u32,
}

impl App {
    pub fn start(program: &str, db: &MariaDb, args: &[&str]) -> App {
        let socket = db.socket();
        let mut all = vec![socket.to_str().unwrap()];
        all.extend_from_slice(args);
        App::spawn(python(), program, &all)
    }

    /// A tests/drivers program run by `interpreter` with `args`.
    pub fn spawn(mut interpreter: Command, program: &str, args: &[&str]) -> App {
        let mut child = interpreter
            .arg(self::program(program))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let pid = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{program} did not start: {line:?}"));
        App { child, out, pid }
    }

    pub fn go(&mut self) {
        self.child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
    }

    /// Waits for the workload to finish and the process to exit; returns what it printed.
    pub fn finish(mut self) -> Vec<String> {
        let lines: Vec<String> = (&mut self.out).lines().map_while(Result::ok).collect();
        assert!(self.child.wait().unwrap().success(), "{lines:?}");
        lines
    }
}
