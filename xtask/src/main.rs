//! Project tasks: `cargo xtask setup | demo | test [--kernel 6.1] | bench | fuzz`.
//!
//! setup installs, idempotently, everything a fresh machine lacks: Debian's
//! LLVM 22 (for bpf-linker), PostgreSQL 15 and libpq headers, MariaDB 10.11
//! server, client and headers (its service not started), sysbench, Prometheus
//! (for promtool; not started either), bpftrace and BCC's tools (the bench's
//! peers), the nightly rust-src component,
//! bpf-linker 0.13.0, psycopg2 and the driver matrix.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod drivers;
mod fuzz;
mod kernel;

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
    /// Start a throwaway PostgreSQL and two psql sessions, one blocking the other, and trace them on the console as trees.
    Demo,
    /// Measure what tracing costs pgbench and sysbench (A/A, then interleaved A/B pairs); writes target/bench/results.{md,json}.
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
        /// Only this script (pgbench: select-only, tpcb-like; sysbench: oltp_point_select, oltp_read_write; repeatable).
        #[arg(long = "script")]
        scripts: Vec<String>,
        /// Only this protocol mode (simple, extended, prepared; sysbench: simple, prepared; repeatable).
        #[arg(long = "mode")]
        modes: Vec<String>,
        /// Only this configuration: agent on the client, the server (server-uprobes: through the
        /// uprobe stand-ins of its USDT probes), or both (repeatable).
        #[arg(long = "traced")]
        targets: Vec<String>,
        /// Extra argument for the agent in the timed runs (repeatable; e.g. --agent-arg=--exporter --agent-arg=none).
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
        /// Leave out the peers (bpftrace scripts equivalent to dbtel's probes, BCC's dbslower),
        /// run by default in each round beside off / on / probes-only.
        #[arg(long)]
        no_peers: bool,
    },
    /// Compare two agent builds on the same events: both trace one pgbench run at a fixed rate at
    /// once (start order alternated per round); prints each one's CPU per exported span and the
    /// median of the per-round ratios B/A. For changes smaller than run-to-run drift.
    Pair(bench::pair::Options),
    /// Set up, then run the unit tests, the end-to-end tests (as root) and the fuzz targets
    /// on the host's kernel, then the end-to-end core in a VM booting Debian 12's 6.1 kernel.
    Test {
        /// Kernels to test on (repeatable or comma-separated): `host` (the running kernel,
        /// every test, natively), or a Debian kernel series such as `6.1` or `6.12` (or a
        /// package name, `linux-image-6.1.0-57-amd64`): the end-to-end core (printed at the
        /// start) in a virtme-ng VM booting that kernel. Default: host,6.1 (host alone when
        /// test arguments are given).
        #[arg(long = "kernel", value_delimiter = ',')]
        kernels: Vec<String>,
        /// In the VMs, this test instead of the core (FILE::TEST, repeatable; e.g. psql::raw_text_flag_and_truncation_limit).
        #[arg(long = "vm-test")]
        vm_tests: Vec<String>,
        /// Boot the VMs under KVM instead of TCG (emulation, the default: it works on every host).
        #[arg(long)]
        kvm: bool,
        /// Seconds each fuzz target runs (0: none).
        #[arg(long, default_value_t = TEST_FUZZ_SECONDS)]
        fuzz_seconds: u32,
        /// Extra arguments for the end-to-end test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run each fuzz target (fuzz/) for a bounded time from its seeds; fails on a crash.
    Fuzz {
        /// Seconds each target runs.
        #[arg(long, default_value_t = FUZZ_SECONDS)]
        seconds: u32,
        /// Only this target (repeatable).
        #[arg(long = "target")]
        targets: Vec<String>,
    },
}

/// Seconds per fuzz target by default: six targets and their build stay within a few minutes.
const FUZZ_SECONDS: u32 = 20;
/// In `cargo xtask test` (CI): the cold sanitized build is most of the cost already.
const TEST_FUZZ_SECONDS: u32 = 10;

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
    // systemd-analyze (the unit in deploy/), unshare and setpriv (namespaces, capabilities):
    // in the image already, named so that a slimmer one still gets them.
    "systemd",
    "util-linux",
    // Real drivers for the driver tests: pgjdbc (Debian's) on a JRE, node-postgres
    // and mysql2 (npm) on Node.js; the Python drivers go into a project-local virtual environment.
    "libpostgresql-jdbc-java",
    "default-jre-headless",
    "python3-venv",
    // MySQL/MariaDB: tests start their own servers (mariadb-install-db into a temp dir),
    // clients are the mariadb CLI, C programs on libmariadb, MySQLdb and sysbench.
    // mysqlclient builds from source: pkg-config finds libmariadb, python3-dev has Python.h.
    "mariadb-server",
    "mariadb-client",
    "libmariadb-dev",
    "sysbench",
    "pkg-config",
    "python3-dev",
    // promtool checks and unit-tests deploy/prometheus/ (the node exporter
    // it recommends is not needed, and recommends are not installed).
    "prometheus",
    // The bench's peers: bpftrace scripts and BCC's dbslower.
    "bpftrace",
    "bpfcc-tools",
    // depmod: virtme-ng runs it on the guest kernel's modules (the VM core of
    // `cargo xtask test`); an image without kmod fails there.
    "kmod",
];
/// Packages installed with their service (named second) kept from starting and
/// disabled afterwards: the tests start throwaway servers of their own.
const KEPT_STOPPED: &[(&str, &str)] =
    &[("mariadb-server", "mariadb"), ("prometheus", "prometheus")];
const BPF_LINKER: &str = "0.13.0";
const PSYCOPG2: &str = "2.9.10";

fn main() -> Result<()> {
    std::sync::LazyLock::force(&STARTED);
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Demo => {
            setup()?;
            demo()
        }
        Task::Bench {
            seconds,
            pairs,
            clients,
            scale,
            soak_seconds,
            scripts,
            modes,
            targets,
            agent_args,
            no_peers,
        } => {
            setup()?;
            bench::bench(&bench::Options {
                soak_seconds,
                scripts,
                modes,
                targets,
                seconds,
                pairs,
                clients,
                scale,
                agent_args,
                peers: !no_peers,
            })
        }
        Task::Pair(o) => bench::pair::pair(&o),
        Task::Test {
            fuzz_seconds,
            args,
            kernels,
            vm_tests,
            kvm,
        } => {
            setup()?;
            let kernels = match (kernels.is_empty(), args.is_empty()) {
                (false, _) => kernels,
                (true, true) => vec!["host".into(), "6.1".into()],
                (true, false) => vec!["host".into()],
            };
            let (host, vms): (Vec<String>, Vec<String>) =
                kernels.into_iter().partition(|k| k == "host");
            if !host.is_empty() {
                test(&args)?;
                if fuzz_seconds > 0 {
                    fuzz::fuzz(fuzz_seconds, &[])?;
                }
            }
            if !vms.is_empty() {
                kernel::test_kernels(&vms, &vm_tests, kvm)?;
            }
            Ok(())
        }
        Task::Fuzz { seconds, targets } => {
            ebpf_toolchain()?;
            fuzz::fuzz(seconds, &targets)
        }
    }
}

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// When this xtask started.
static STARTED: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

/// `xtask: [mm:ss] what`, on stderr: how far into the run, for CI's log.
pub(crate) fn announce(what: &str) {
    let s = STARTED.elapsed().as_secs();
    eprintln!("xtask: [{:02}:{:02}] {what}", s / 60, s % 60);
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    announce(&format!("{cmd:?}"));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
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
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .contains("install ok installed")
        })
        .collect();
    if !missing.is_empty() {
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        let stopped: Vec<&str> = KEPT_STOPPED
            .iter()
            .filter(|(package, _)| missing.contains(package))
            .map(|(_, service)| *service)
            .collect();
        let _no_start = if stopped.is_empty() {
            None
        } else {
            NoServiceStart::new()?
        };
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        for service in stopped {
            // Not started at boot either (offline `systemctl disable` works without systemd running).
            let _ = succeeds(Command::new("systemctl").args(["disable", service]));
        }
    }
    ebpf_toolchain()?;
    if !succeeds(Command::new("python3").args(["-c", "import psycopg2"])) {
        // From source, against the system's libpq (pg_config from libpq-dev).
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                &format!("psycopg2=={PSYCOPG2}"),
            ])
            .env("PIP_ROOT_USER_ACTION", "ignore"))?;
    }
    drivers::install()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

/// What building the eBPF object needs beyond apt's LLVM: nightly's
/// rust-src (`-Z build-std=core`) and bpf-linker built against LLVM 22.
fn ebpf_toolchain() -> Result<()> {
    if !output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .contains("rust-src")
    {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if !output(Command::new("bpf-linker").arg("--version")).contains(BPF_LINKER) {
        // Built against Debian's LLVM 22: its llvm-config must come first on PATH.
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER}"),
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path)
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"))?;
    }
    Ok(())
}

/// A policy-rc.d denying service starts while it lives (invoke-rc.d and
/// deb-systemd-invoke obey it), unless the machine has one already (containers
/// do): the packages of KEPT_STOPPED would otherwise start their services.
struct NoServiceStart;

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoServiceStart {
    fn new() -> Result<Option<Self>> {
        use std::os::unix::fs::PermissionsExt;
        if std::path::Path::new(POLICY_RC_D).exists() {
            return Ok(None);
        }
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# written by cargo xtask setup while it installs servers\nexit 101\n",
        )?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
        Ok(Some(Self))
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(POLICY_RC_D);
    }
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// `cargo test` on the packages every test build names: cargo unifies
/// features per command, and each step naming its own packages rebuilt the
/// agent and a dozen dependencies for the next (~2.5 minutes of CI).
pub(crate) fn cargo_test() -> Command {
    let mut c = cargo();
    c.arg("test");
    for p in ["dbtel-common", "dbtel-agent", "dbtel-tests", "xtask"] {
        c.args(["-p", p]);
    }
    c
}

fn test(args: &[String]) -> Result<()> {
    // Everything at once, the agent's executable included (its package's
    // integration tests need it), and what no test runs: the benches and
    // examples (a changed API once broke the pipeline bench unseen until
    // `xtask bench` ran it).
    run(cargo_test().args(["--all-targets", "--no-run"]))?;
    // Unit tests: no root needed, no kernel, no database.
    run(cargo_test().args(["--lib", "--bins"]))?;
    // End to end: real eBPF, real servers and clients. One at a time: each
    // loads programs and starts servers of its own.
    run(cargo_test()
        .args(["--test", "*", "--", "--test-threads=1"])
        .args(args))?;
    Ok(())
}

/// cargo's target directory (CARGO_TARGET_DIR when set).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn demo() -> Result<()> {
    run(cargo().args(["build", "-p", "dbtel-agent"]))?;
    let agent = target_dir().join("debug/dbtel-agent");
    eprintln!("xtask: starting a throwaway PostgreSQL");
    let pg = dbtel_tests::Cluster::start();
    pg.psql(
        "postgres",
        "create table t (id int primary key, v int); insert into t values (1, 0)",
    );
    // Two psql sessions, connected and waiting for statements on stdin: traced by PID.
    let session = || {
        Command::new(pg.bin("psql"))
            .args(pg.conn_args())
            .args(["-X", "-q", "-d", "postgres"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
    };
    let (mut a, mut b) = (session()?, session()?);
    let (pa, pb, server) = (
        a.id().to_string(),
        b.id().to_string(),
        pg.postmaster_pid().to_string(),
    );
    let args = [
        "--exporter",
        "console",
        "--console-format",
        "tree",
        "--pid",
        &pa,
        "--pid",
        &pb,
        "--pid",
        &server,
    ];
    eprintln!(
        "xtask: dbtel-agent {}   (psql A, psql B and their server)",
        args.join(" ")
    );
    let mut agent = Command::new(&agent)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()?;
    // Its log passes through; the demo goes on once every probe is in place.
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let log = agent.stderr.take().context("agent stderr")?;
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(log)).map_while(Result::ok) {
            eprintln!("{line}");
            if line.starts_with("dbtel: tracing") {
                let _ = ready_tx.send(());
            }
        }
    });
    if ready.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = agent.kill();
        bail!("dbtel-agent did not start tracing");
    }
    // A takes the row and keeps it 1.5 s; B asks for it 0.3 s later and waits for A's COMMIT.
    eprintln!(
        "xtask: A: BEGIN; UPDATE t SET v = v + 1 WHERE id = 1; SELECT pg_sleep(1.5); COMMIT;"
    );
    let say = |c: &mut std::process::Child, sql: &str| -> Result<()> {
        // Closing stdin ends the session after these statements.
        c.stdin
            .take()
            .context("psql stdin")?
            .write_all(sql.as_bytes())?;
        Ok(())
    };
    say(
        &mut a,
        "BEGIN;\nUPDATE t SET v = v + 1 WHERE id = 1;\nSELECT pg_sleep(1.5);\nCOMMIT;\n",
    )?;
    std::thread::sleep(Duration::from_millis(300));
    eprintln!("xtask: B: UPDATE t SET v = v + 1 WHERE id = 1;   (waits for A's row lock)");
    say(&mut b, "UPDATE t SET v = v + 1 WHERE id = 1;\n")?;
    for c in [&mut a, &mut b] {
        c.wait()?;
    }
    // The server is still traced: let the trees print as they complete
    // (a few seconds after their last span), then stop as a user would.
    std::thread::sleep(Duration::from_secs(4));
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
            .args([
                "tree",
                "-p",
                "xtask",
                "--edges",
                "normal,build",
                "--prefix",
                "none",
                "--format",
                "{p}",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8(out.stdout).unwrap();
        assert!(
            tree.contains("dbtel-tests"),
            "the harness xtask uses is in the tree:\n{tree}"
        );
        for forbidden in ["dbtel-agent", "dbtel-ebpf", "aya-build", "aya-ebpf"] {
            assert!(
                !tree
                    .lines()
                    .any(|l| l.starts_with(&format!("{forbidden} "))),
                "xtask depends on {forbidden}:\n{tree}"
            );
        }
    }
}
