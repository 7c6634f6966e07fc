//! The Python (psycopg2) programs under tests/py, started with piped stdio.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
};

/// A running tests/py script: its process, its stdout, and the first line it
/// printed (by convention its PID, and whatever else it reports at start).
pub struct PyProgram {
    pub child: Child,
    pub out: BufReader<ChildStdout>,
    pub first_line: String,
}

impl PyProgram {
    pub fn start(script: &str, dsn: &str) -> PyProgram {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("py")
            .join(script);
        let mut child = Command::new("python3")
            .arg(path)
            .arg(dsn)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (with psycopg2, installed by cargo xtask setup)");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first_line = String::new();
        out.read_line(&mut first_line).unwrap();
        PyProgram {
            child,
            out,
            first_line: first_line.trim().to_string(),
        }
    }

    /// The PID the script printed first.
    pub fn pid(&self) -> u32 {
        let first = self.first_line.split_whitespace().next().unwrap_or("");
        first
            .parse()
            .unwrap_or_else(|_| panic!("{} did not start: {:?}", "python script", self.first_line))
    }
}

/// tests/py/session.py: one psycopg2 connection driven command by command.
pub struct Session {
    child: Child,
    out: BufReader<ChildStdout>,
    pub pid: u32,
    pub backend: i64,
}

impl Session {
    pub fn start(pg: &crate::Cluster) -> Session {
        let p = PyProgram::start("session.py", &pg.dsn("postgres"));
        let backend = p
            .first_line
            .split_whitespace()
            .nth(1)
            .and_then(|b| b.parse().ok())
            .expect("backend pid");
        Session {
            pid: p.pid(),
            child: p.child,
            out: p.out,
            backend,
        }
    }

    /// Sends a command without waiting for its answer (it may block on a lock).
    pub fn send(&mut self, cmd: &str) {
        writeln!(self.child.stdin.as_mut().unwrap(), "{cmd}").unwrap();
    }

    pub fn reply(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    pub fn run(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.reply()
    }

    pub fn exit(mut self) {
        self.send("exit");
        assert!(self.child.wait().unwrap().success());
    }
}
