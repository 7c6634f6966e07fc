//! A process that maps a library named and shaped like libpq (PQexec,
//! PQgetResult) that is not one: bad input the agent must refuse by name.

use std::{
    io::BufRead,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

pub struct FakeLibpq {
    pub lib: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl FakeLibpq {
    /// Builds the library and starts a Python process that loads it; returns once it has.
    pub fn start() -> FakeLibpq {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("fakepq.c");
        std::fs::write(&src, "void *PQexec(void *c, const char *q) { return 0; }\nvoid *PQgetResult(void *c) { return 0; }\n").unwrap();
        let lib = dir.path().join("libpq.so.5");
        let cc = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&src)
            .status()
            .unwrap();
        assert!(cc.success());
        let mut child = Command::new("python3")
            .args(["-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1]); print('ok', flush=True); sys.stdin.read()"])
            .arg(&lib)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ok");
        FakeLibpq {
            lib,
            child,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The one-line refusal the agent gives for it.
    pub fn refusal(&self) -> String {
        format!(
            "{} (process {}) has libpq symbols but lacks PQexecParams, PQprepare, PQexecPrepared, \
             PQsendQuery, PQsendQueryParams, PQsendPrepare, PQsendQueryPrepared, PQfinish: unsupported libpq build",
            self.lib.display(),
            self.pid()
        )
    }
}

impl Drop for FakeLibpq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
