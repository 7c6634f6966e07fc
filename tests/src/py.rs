//! The Python (psycopg2) programs under tests/py, started with piped stdio.

use std::{
    io::{BufRead, BufReader},
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
