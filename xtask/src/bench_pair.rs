//! `cargo xtask pair`: two builds of the agent compared on the same events.
//!
//! Separate runs on a small host drift by ±10 % in agent CPU per span from
//! one minute to the next, more than most single changes are worth. Here both
//! builds trace the same server (or the whole host) at once, through the same
//! pgbench run at a fixed rate, and their CPU per exported span is compared
//! round by round (start order alternated); the median of the per-round
//! ratios is the figure. An A/A pair of one build gives the method's spread.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use dbtel_tests::{Cluster, Receiver};

pub struct Options {
    pub base: PathBuf,
    pub agent: PathBuf,
    pub rounds: usize,
    pub seconds: u32,
    pub rate: u32,
    pub script: String,
    pub mode: String,
    pub clients: u32,
    /// Both agents host-wide (`--all`: the pgbench clients and the server)
    /// instead of `--pid` on the postmaster.
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

struct Running {
    child: Child,
    stderr: BufReader<ChildStderr>,
    text: String,
}

fn start(agent: &Path, rx: &Receiver, o: &Options, postmaster: u32) -> Result<Running> {
    let mut cmd = Command::new(agent);
    cmd.args(["--otlp-endpoint", &rx.http_endpoint()]);
    if o.all {
        cmd.arg("--all");
    } else {
        cmd.args(["--pid", &postmaster.to_string()]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))?;
    let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line)? == 0 {
            bail!("{} exited before tracing: {text}", agent.display());
        }
        text.push_str(&line);
        if line.starts_with("dbtel: tracing") {
            return Ok(Running {
                child,
                stderr,
                text,
            });
        }
    }
}

fn stop(mut r: Running) -> Result<Figures> {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGINT) };
    r.stderr.read_to_string(&mut r.text)?;
    if !r.child.wait()?.success() {
        bail!("agent run failed: {}", r.text);
    }
    let summary = r
        .text
        .lines()
        .find(|l| l.contains("spans exported"))
        .context("no agent summary")?;
    let attaching = super::number_after(&r.text, "(attaching")
        .context("no attaching CPU: a build before session 21 cannot be paired")?;
    Ok(Figures {
        spans: super::number_before(summary, "spans exported"),
        cpu_s: super::number_after(&r.text, "agent cpu").context("no agent cpu")? - attaching,
    })
}

pub fn pair(o: &Options) -> Result<()> {
    eprintln!(
        "pair: A = {}, B = {}; {} rounds of pgbench -b {} -M {} -R {} for {} s, both agents {}",
        o.base.display(),
        o.agent.display(),
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
            [&o.base, &o.agent]
        } else {
            [&o.agent, &o.base]
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
        let tps = super::parse_pgbench(&String::from_utf8_lossy(&out.stdout))?.tps;
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
        super::median(ratios.clone()),
        ratios.len(),
        super::median(a_all),
        super::median(b_all)
    );
    Ok(())
}
