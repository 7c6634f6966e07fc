//! Runs the real dbtel-agent binary and waits for its `dbtel: tracing` line.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The agent binary built by `cargo build -p dbtel-agent` in this target dir
/// (or DBTEL_AGENT).
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("DBTEL_AGENT") {
        return p.into();
    }
    // target/<profile>/deps/<test> → target/<profile>/dbtel-agent
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("dbtel-agent");
    assert!(
        p.exists(),
        "{} missing: build it first (cargo xtask test does)",
        p.display()
    );
    p
}

/// The agent binary, or `wrapper[0] wrapper[1..] AGENT` when a wrapper is given.
fn agent_command(wrapper: &[&str]) -> Command {
    match wrapper.split_first() {
        None => Command::new(agent_binary()),
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(agent_binary());
            c
        }
    }
}

/// A running agent. Its stderr is collected; the `dbtel: tracing` line has
/// been seen before `start` returns.
pub struct Agent {
    child: Child,
    stderr: mpsc::Receiver<String>,
    pub stderr_lines: Vec<String>,
}

/// What a finished agent left behind.
#[derive(Debug)]
pub struct AgentRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// The agent's stated memory budget (README: Reliability).
pub const RSS_BUDGET_MIB: f64 = 128.0;

impl AgentRun {
    /// The agent's peak RSS, from its `max rss` exit line.
    pub fn max_rss_mib(&self) -> f64 {
        let at = self
            .stderr
            .find("max rss ")
            .unwrap_or_else(|| panic!("{}", self.stderr))
            + "max rss ".len();
        self.stderr[at..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The `dbtel: N spans exported, ...` summary line.
    pub fn summary(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| l.starts_with("dbtel: ") && l.contains("spans exported"))
            .unwrap_or("")
    }
}

impl Agent {
    /// Starts `dbtel-agent args...` and waits for its `dbtel: tracing` line.
    pub fn start(args: &[&str], stdin: Stdio) -> Agent {
        Self::start_env(args, &[], stdin)
    }

    /// `start` with extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)], stdin: Stdio) -> Agent {
        Self::start_wrapped(&[], args, env, stdin)
    }

    /// `start_env` with the agent run by a wrapper command (`unshare ...`),
    /// which is given the agent's path and `args` after its own arguments.
    pub fn start_wrapped(
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Stdio,
    ) -> Agent {
        let mut child = agent_command(wrapper)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("DBTEL_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // A test's own RUST_LOG (its module at debug) wins.
            .envs(env.iter().copied())
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut a = Agent {
            child,
            stderr: rx,
            stderr_lines: Vec::new(),
        };
        a.wait_for_line("dbtel: tracing", Duration::from_secs(30));
        a
    }

    /// Waits for a stderr line starting with `prefix` (panics after `timeout`).
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) {
        self.wait_until(|l| l.starts_with(prefix), prefix, timeout)
    }

    /// Waits for a stderr line containing `needle` (a log line, after its time and level).
    pub fn wait_for_text(&mut self, needle: &str, timeout: Duration) {
        self.wait_until(|l| l.contains(needle), needle, timeout)
    }

    fn wait_until(&mut self, found: impl Fn(&str) -> bool, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let hit = found(&line);
                    self.stderr_lines.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "agent never printed {what:?}; stderr:\n{}",
                        self.stderr_lines.join("\n")
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the agent process runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGINT and waits for the exit.
    pub fn interrupt(self) -> AgentRun {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.wait(Duration::from_secs(30))
    }

    /// Waits for the agent to exit by itself.
    pub fn wait(mut self, timeout: Duration) -> AgentRun {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "agent did not exit within {timeout:?}; stderr so far:\n{}",
                    self.stderr_lines.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.stderr_lines.push(l);
        }
        AgentRun {
            status,
            stdout,
            stderr: self.stderr_lines.join("\n"),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `dbtel-agent args...` to completion (for `--` runs and refusals).
pub fn run_agent(args: &[&str], stdin: &[u8], timeout: Duration) -> AgentRun {
    run_agent_env(args, &[], stdin, timeout)
}

/// [`run_agent`] with extra environment variables.
pub fn run_agent_env(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
    timeout: Duration,
) -> AgentRun {
    run_agent_wrapped(&[], args, env, stdin, timeout)
}

/// [`run_agent_env`] under a wrapper command (see [`Agent::start_wrapped`]).
pub fn run_agent_wrapped(
    wrapper: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
    timeout: Duration,
) -> AgentRun {
    use std::io::Write;
    let mut child = agent_command(wrapper)
        .args(args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let deadline = Instant::now() + timeout;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "agent did not exit within {timeout:?}: {}",
                e.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    AgentRun {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}
