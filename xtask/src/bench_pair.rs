//! `cargo xtask pair`: two builds of the agent compared on the same events.
//!
//! Separate runs on a small host drift by ±10 % in agent CPU per span from
//! one minute to the next, more than most single changes are worth. Here both
//! builds trace the same server (or the whole host) at once, through the same
//! pgbench run at a fixed rate, and their CPU per exported span is compared
//! round by round (start order alternated); the median of the per-round
//! ratios is the figure. An A/A pair of one build gives the method's spread.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use dbtel_tests::{Cluster, Receiver};

use super::{median, number_before, parse_pgbench, read_report, Run, Tracing};

#[derive(clap::Args)]
pub struct Options {
    /// The build to compare against (A), e.g. a copy of target/release/dbtel-agent from main.
    #[arg(long)]
    pub base: PathBuf,
    /// The build under test (B). Default: target/release/dbtel-agent, built first.
    #[arg(long)]
    pub agent: Option<PathBuf>,
    #[arg(long, default_value_t = 6)]
    pub rounds: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 8)]
    pub seconds: u32,
    /// pgbench transactions per second (-R): below saturation, so both agents keep up.
    #[arg(long, default_value_t = 20000)]
    pub rate: u32,
    #[arg(long, default_value = "select-only")]
    pub script: String,
    #[arg(long, default_value = "prepared")]
    pub mode: String,
    #[arg(long, default_value_t = 2)]
    pub clients: u32,
    /// Both agents host-wide (--all: pgbench's libpq and the server) instead of --pid on the server.
    #[arg(long)]
    pub all: bool,
}

/// One agent's figures for one round.
struct Figures {
    spans: u64,
    /// CPU while tracing: the exit report's total less its attaching part.
    cpu_s: f64,
}

impl Figures {
    fn us_per_span(&self) -> f64 {
        self.cpu_s * 1e6 / self.spans.max(1) as f64
    }
}

fn start(agent: &Path, rx: &Receiver, o: &Options, postmaster: u32) -> Result<Tracing> {
    let mut cmd = Command::new(agent);
    cmd.args(["--otlp-endpoint", &rx.http_endpoint()]);
    if o.all {
        cmd.arg("--all");
    } else {
        cmd.args(["--pid", &postmaster.to_string()]);
    }
    Tracing::start(&mut cmd).with_context(|| format!("{}", agent.display()))
}

fn stop(agent: Tracing) -> Result<Figures> {
    let text = agent.stop()?;
    if !text.contains("(attaching") {
        bail!("no attaching CPU in the exit report: a build before session 21 cannot be paired");
    }
    let mut run = Run::default();
    read_report(&mut run, &text)?;
    if !run.agent_cpu_s.is_finite() {
        bail!("no agent cpu in the exit report: {text}");
    }
    let summary = text
        .lines()
        .find(|l| l.contains("spans exported"))
        .context("no agent summary")?;
    Ok(Figures {
        spans: number_before(summary, "spans exported"),
        cpu_s: run.agent_cpu_s,
    })
}

pub fn pair(o: &Options) -> Result<()> {
    let agent = match &o.agent {
        Some(a) => a.clone(),
        None => {
            crate::run(crate::cargo().args(["build", "--release", "-p", "dbtel-agent"]))?;
            crate::root().join("target/release/dbtel-agent")
        }
    };
    eprintln!(
        "pair: A = {}, B = {}; {} rounds of pgbench -b {} -M {} -R {} for {} s, both agents {}",
        o.base.display(),
        agent.display(),
        o.rounds,
        o.script,
        o.mode,
        o.rate,
        o.seconds,
        if o.all {
            "host-wide (--all)"
        } else {
            "on the server (--pid)"
        }
    );
    let pg = Cluster::start_with(&["shared_buffers=128MB"]);
    pg.pgbench_init(10);
    let rx = Receiver::start_counting();
    let c = o.clients.to_string();
    let mut ratios = Vec::new();
    let (mut a_all, mut b_all) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        // Alternate which agent attaches first (and so sees the first events).
        let order: [&Path; 2] = if round % 2 == 0 {
            [&o.base, &agent]
        } else {
            [&agent, &o.base]
        };
        let first = start(order[0], &rx, o, pg.postmaster_pid())?;
        let second = start(order[1], &rx, o, pg.postmaster_pid())?;
        let out = Command::new(pg.bin("pgbench"))
            .args(pg.conn_args())
            .args(["-n", "-b", &o.script, "-M", &o.mode, "-c", &c, "-j", &c])
            .args(["-R", &o.rate.to_string(), "-T", &o.seconds.to_string()])
            .arg("postgres")
            .stderr(Stdio::null())
            .output()?;
        let tps = parse_pgbench(&String::from_utf8_lossy(&out.stdout))?.tps;
        // Let the last spans through the ring buffers and the catalog lookups.
        std::thread::sleep(Duration::from_millis(500));
        let (f1, f2) = (stop(first)?, stop(second)?);
        let (a, b) = if round % 2 == 0 { (f1, f2) } else { (f2, f1) };
        let ratio = b.us_per_span() / a.us_per_span();
        eprintln!(
            "pair: round {}: tps {tps:.0}; A {} spans {:.3} us/span, B {} spans {:.3} us/span; B/A {ratio:.3}",
            round + 1,
            a.spans,
            a.us_per_span(),
            b.spans,
            b.us_per_span()
        );
        ratios.push(ratio);
        a_all.push(a.us_per_span());
        b_all.push(b.us_per_span());
    }
    let lower = ratios.iter().filter(|r| **r < 1.0).count();
    println!(
        "pair: agent CPU per span, B/A median {:.3} (B lower in {lower} of {}); A median {:.3} us, B median {:.3} us",
        median(ratios.clone()),
        ratios.len(),
        median(a_all),
        median(b_all)
    );
    Ok(())
}
