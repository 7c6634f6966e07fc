//! Project tasks: `cargo xtask setup | demo | test`.
//!
//! setup installs, idempotently, everything a fresh machine lacks: Debian's
//! LLVM 22 (for bpf-linker), PostgreSQL 15 and libpq headers, the nightly
//! rust-src component, bpf-linker 0.13.0 and psycopg2.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every prerequisite (idempotent; needs root).
    Setup,
    /// Start a throwaway PostgreSQL and a small libpq workload, and trace it on the console.
    Demo,
    /// Measure what tracing costs pgbench (A/A, then interleaved A/B pairs); writes target/bench/results.{md,json}.
    Bench {
        /// Seconds per pgbench run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// A/B pairs per script and mode (at least 5 for reported figures).
        #[arg(long, default_value_t = 5)]
        pairs: usize,
        /// pgbench clients (and threads).
        #[arg(long, default_value_t = 2)]
        clients: u32,
        /// pgbench scale factor.
        #[arg(long, default_value_t = 10)]
        scale: u32,
        /// Seconds of the 10k queries/s soak with the agent on (0: skip).
        #[arg(long, default_value_t = 60)]
        soak_seconds: u32,
        /// Only this pgbench script (select-only, tpcb-like; repeatable).
        #[arg(long = "script")]
        scripts: Vec<String>,
        /// Only this protocol mode (simple, extended, prepared; repeatable).
        #[arg(long = "mode")]
        modes: Vec<String>,
        /// Only this configuration: agent on the client, the server, or both (repeatable).
        #[arg(long = "traced")]
        targets: Vec<String>,
        /// Extra argument for the agent in the timed runs (repeatable; e.g. --agent-arg=--exporter --agent-arg=none).
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
    },
    /// Set up, then run the unit tests and the end-to-end tests (as root).
    Test {
        /// Extra arguments for the end-to-end test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "postgresql-15",
    "postgresql-client-15",
    "postgresql-contrib",
    "libpq-dev",
    // libpgcommon.a / libpgport.a: a test links libpq statically into a program.
    "postgresql-server-dev-15",
];
const BPF_LINKER: &str = "0.13.0";
const PSYCOPG2: &str = "2.9.10";

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Demo => {
            setup()?;
            demo()
        }
        Task::Bench { seconds, pairs, clients, scale, soak_seconds, scripts, modes, targets, agent_args } => {
            setup()?;
            bench::bench(&bench::Options { soak_seconds, scripts, modes, targets, seconds, pairs, clients, scale, agent_args })
        }
        Task::Test { args } => {
            setup()?;
            test(&args)
        }
    }
}

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null()).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn setup() -> Result<()> {
    if !is_root() {
        bail!("setup installs packages and the tests load eBPF: run as root");
    }
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p])).contains("install ok installed"))
        .collect();
    if !missing.is_empty() {
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"])).contains("rust-src") {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    if !output(Command::new("bpf-linker").arg("--version")).contains(BPF_LINKER) {
        // Built against Debian's LLVM 22: its llvm-config must come first on PATH.
        let path = format!("/usr/lib/llvm-22/bin:{}", std::env::var("PATH").unwrap_or_default());
        run(Command::new("cargo")
            .args(["install", &format!("bpf-linker@{BPF_LINKER}"), "--locked", "--no-default-features", "--features", "llvm-22"])
            .env("PATH", path)
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"))?;
    }
    if !succeeds(Command::new("python3").args(["-c", "import psycopg2"])) {
        // From source, against the system's libpq (pg_config from libpq-dev).
        run(Command::new("python3")
            .args(["-m", "pip", "install", "-q", &format!("psycopg2=={PSYCOPG2}")])
            .env("PIP_ROOT_USER_ACTION", "ignore"))?;
    }
    eprintln!("xtask: setup complete");
    Ok(())
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn test(args: &[String]) -> Result<()> {
    run(cargo().args(["build", "-p", "dbtel-agent"]))?;
    // Unit tests: no root needed, no kernel, no database.
    run(cargo().args(["test", "-p", "dbtel-common", "-p", "dbtel-agent", "-p", "xtask"]))?;
    // End to end: real eBPF, real servers and clients. One at a time: each
    // loads programs and starts servers of its own.
    run(cargo().args(["test", "-p", "dbtel-tests", "--tests", "--", "--test-threads=1"]).args(args))?;
    Ok(())
}

fn demo() -> Result<()> {
    run(cargo().args(["build", "-p", "dbtel-agent"]))?;
    let agent = root().join("target/debug/dbtel-agent");
    eprintln!("xtask: starting a throwaway PostgreSQL");
    let pg = dbtel_tests::Cluster::start();
    let conn = pg.conn_args();
    pg.pgbench_init(1);
    // The workload: pgbench at 4 transactions a second for 8 seconds.
    let mut workload = Command::new(pg.bin("pgbench"))
        .args(&conn)
        .args(["-n", "-c", "1", "-T", "8", "-R", "4", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = workload.id().to_string();
    let server = pg.postmaster_pid().to_string();
    std::thread::sleep(Duration::from_millis(200));
    eprintln!("xtask: dbtel-agent --exporter console --pid {pid} --pid {server}   (pgbench and its server: one trace per transaction)");
    let mut agent = Command::new(&agent).args(["--exporter", "console", "--pid", &pid, "--pid", &server]).spawn()?;
    let _ = workload.wait();
    // The server outlives pgbench: stop the agent as a user would (it flushes first).
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    let status = agent.wait()?;
    if !status.success() {
        bail!("dbtel-agent failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// xtask runs setup, so it must build on a machine without the eBPF
    /// toolchain: nothing it links may build dbtel-ebpf (dbtel-agent's build.rs
    /// does, through aya-build).
    #[test]
    fn setup_needs_nothing_that_builds_ebpf() {
        let out = super::cargo()
            .args(["tree", "-p", "xtask", "--edges", "normal,build", "--prefix", "none", "--format", "{p}"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let tree = String::from_utf8(out.stdout).unwrap();
        assert!(tree.contains("dbtel-tests"), "the harness xtask uses is in the tree:\n{tree}");
        for forbidden in ["dbtel-agent", "dbtel-ebpf", "aya-build", "aya-ebpf"] {
            assert!(!tree.lines().any(|l| l.starts_with(&format!("{forbidden} "))), "xtask depends on {forbidden}:\n{tree}");
        }
    }
}
