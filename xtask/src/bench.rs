//! `cargo xtask bench`: what tracing costs pgbench, measured side by side.
//!
//! For each script (select-only, tpcb-like) and protocol mode (simple,
//! extended, prepared): an A/A pair (agent off twice: the noise floor), then
//! for each configuration (agent on the client, on the server, on both)
//! interleaved runs off / on / probes only (every probe attached, each
//! returning at once: the traps' own cost, which no agent work can go
//! below). Medians and ratios, the
//! agent's CPU and RSS from its own exit report, spans received by a real
//! OTLP receiver against statements executed, every drop counter, and the
//! probe hits per query from a separate counted run; and in each round the
//! peers a user would reach for instead (bench_peers.rs). Results go to
//! target/bench/results.{md,json}.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use agent::{read_report, traced_run, Tracing};
use anyhow::{bail, Context, Result};
use dbtel_tests::{Cluster, Receiver};
use render::render;

#[path = "bench_agent.rs"]
mod agent;
#[path = "bench_pair.rs"]
pub mod pair;
#[path = "bench_peers.rs"]
mod peers;
#[path = "bench_render.rs"]
mod render;
#[path = "bench_sysbench.rs"]
mod sysbench;

pub struct Options {
    /// Seconds of the rate-limited soak (10k queries/s, agent on); 0 skips it.
    pub soak_seconds: u32,
    /// Only these scripts / modes (all when empty).
    pub scripts: Vec<String>,
    pub modes: Vec<String>,
    /// Only these configurations: client, server, server-uprobes, both (all when empty).
    pub targets: Vec<String>,
    pub seconds: u32,
    pub pairs: usize,
    pub clients: u32,
    pub scale: u32,
    /// Extra agent arguments for the timed runs (experiments).
    pub agent_args: Vec<String>,
    /// Run the peers (bpftrace, dbslower) in each round.
    pub peers: bool,
}

struct Script {
    name: &'static str,
    /// Span names of the statements one transaction runs.
    statements: &'static [&'static str],
}

const SCRIPTS: &[Script] = &[
    Script {
        name: "select-only",
        statements: &["SELECT pgbench_accounts"],
    },
    Script {
        name: "tpcb-like",
        statements: &[
            "BEGIN",
            "UPDATE pgbench_accounts",
            "SELECT pgbench_accounts",
            "UPDATE pgbench_tellers",
            "UPDATE pgbench_branches",
            "INSERT pgbench_history",
            "END",
        ],
    },
];
const MODES: &[&str] = &["simple", "extended", "prepared"];

/// Where the agent is attached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Client,
    Server,
    /// The server through the uprobe stand-ins of its USDT probes
    /// (--pg-server-probes uprobes), as a build without USDT is traced.
    ServerUprobes,
    Both,
}

const TARGETS: &[(Target, &str)] = &[
    (Target::Client, "client"),
    (Target::Server, "server"),
    (Target::ServerUprobes, "server-uprobes"),
    (Target::Both, "both"),
];

impl Target {
    /// Spans expected per statement (one per traced side).
    fn sides(self) -> u64 {
        if self == Target::Both {
            2
        } else {
            1
        }
    }
}

#[derive(Default, Clone)]
struct Run {
    tps: f64,
    latency_ms: f64,
    txns: u64,
    // Agent runs only:
    agent_cpu_s: f64,
    agent_rss_mib: f64,
    spans_matching: u64,
    drops: Drops,
}

#[derive(Default, Clone, Copy)]
struct Drops {
    export_failed: u64,
    export_queue: u64,
    ring_buffer: u64,
    undecodable: u64,
    unmatched: u64,
    incomplete: u64,
}

impl Drops {
    fn add(&mut self, o: &Drops) {
        self.export_failed += o.export_failed;
        self.export_queue += o.export_queue;
        self.ring_buffer += o.ring_buffer;
        self.undecodable += o.undecodable;
        self.unmatched += o.unmatched;
        self.incomplete += o.incomplete;
    }
    fn total(&self) -> u64 {
        self.export_failed
            + self.export_queue
            + self.ring_buffer
            + self.undecodable
            + self.unmatched
            + self.incomplete
    }
}

/// The median of the per-round ratios a[i] / b[i]: runs of one round are
/// minutes closer in time than the medians of whole columns, so the host's
/// drift between rounds cancels out of each ratio.
fn paired(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Each run's TPS, in round order.
fn tps(runs: &[Run]) -> Vec<f64> {
    runs.iter().map(|r| r.tps).collect()
}

/// The number before `suffix` on the line containing `key`.
fn number_after(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains(key))?;
    let rest = &line[line.find(key)? + key.len()..];
    let num: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

/// The number right before `key` in `line` ("N spans exported").
fn number_before(line: &str, key: &str) -> u64 {
    line.find(key)
        .and_then(|i| {
            line[..i]
                .trim_end()
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(u64::MAX)
}

fn parse_pgbench(out: &str) -> Result<Run> {
    let tps = number_after(out, "tps =").context("no tps in pgbench output")?;
    let latency_ms = number_after(out, "latency average =").context("no latency")?;
    let txns = number_after(out, "number of transactions actually processed:")
        .context("no transaction count")? as u64;
    Ok(Run {
        tps,
        latency_ms,
        txns,
        ..Default::default()
    })
}

fn pgbench_args(
    pg: &Cluster,
    script: &str,
    mode: &str,
    o: &Options,
    duration: &[String],
) -> Vec<String> {
    let mut a = pg.conn_args();
    let c = o.clients.to_string();
    a.extend(["-n", "-b", script, "-M", mode, "-c", &c, "-j", &c].map(String::from));
    a.extend(duration.iter().cloned());
    a.push("postgres".into());
    a
}

fn run_off(pg: &Cluster, script: &str, mode: &str, o: &Options) -> Result<Run> {
    let out = Command::new(pg.bin("pgbench"))
        .args(pgbench_args(
            pg,
            script,
            mode,
            o,
            &["-T".into(), o.seconds.to_string()],
        ))
        .stderr(Stdio::null())
        .output()?;
    parse_pgbench(&String::from_utf8_lossy(&out.stdout))
}

#[allow(clippy::too_many_arguments)]
fn run_agent(
    agent: &Path,
    pg: &Cluster,
    rx: &Receiver,
    script: &Script,
    mode: &str,
    o: &Options,
    target: Target,
    extra: &[&str],
    duration: &[String],
) -> Result<(Run, String)> {
    let before = rx.name_counts();
    let pm = pg.postmaster_pid().to_string();
    let mut workload = Command::new(pg.bin("pgbench"));
    workload.args(pgbench_args(pg, script.name, mode, o, duration));
    let (stdout, stderr) = traced_run(agent, rx, extra, target, &pm, &mut workload)?;
    let mut run = parse_pgbench(&stdout)?;
    read_report(&mut run, &stderr)?;
    run.spans_matching = rx.counted_since(&before, |n| script.statements.contains(&n));
    Ok((run, stderr))
}

/// Probe hits and eBPF nanoseconds, summed over programs, from --probe-stats's line.
fn probe_hits(stderr: &str) -> Result<(f64, f64)> {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("dbtel: probe hits:"))
        .context("no probe hits line")?;
    let (mut hits, mut ns) = (0f64, 0f64);
    for part in line.trim_start_matches("dbtel: probe hits:").split(") ") {
        let Some((name_n, each)) = part.split_once(" (") else {
            continue;
        };
        let n: f64 = name_n
            .rsplit('=')
            .next()
            .unwrap_or("0")
            .trim()
            .parse()
            .unwrap_or(0.0);
        let each: f64 = each
            .trim_end_matches(')')
            .trim_end_matches(" ns each")
            .parse()
            .unwrap_or(0.0);
        hits += n;
        ns += n * each;
    }
    Ok((hits, ns))
}

struct Row {
    script: &'static str,
    mode: &'static str,
    target: &'static str,
    stmts: usize,
    aa_ratio: f64,
    tps_off: f64,
    tps_on: f64,
    ratio: f64,
    /// TPS with every probe attached but returning at once, over TPS off.
    probes_only_ratio: f64,
    /// dbtel over its floor: TPS on over TPS with the probes only.
    floor_ratio: f64,
    /// TPS off and on, round by round (paired with the peer's rounds).
    off_tps: Vec<f64>,
    on_tps: Vec<f64>,
    added_us_per_query: f64,
    cpu_per_10k_qps: f64,
    rss_mib: f64,
    statements: u64,
    spans: u64,
    drops: Drops,
    traps_per_query: f64,
    ebpf_ns_per_query: f64,
    peer: Option<peers::Figures>,
}

/// Probe hits per query from a short run with --probe-stats (which adds a
/// little cost per hit, so it stays out of the timed runs).
fn traps(
    agent: &Path,
    pg: &Cluster,
    rx: &Receiver,
    script: &Script,
    mode: &str,
    o: &Options,
    target: Target,
) -> Result<(f64, f64)> {
    let (run, stderr) = run_agent(
        agent,
        pg,
        rx,
        script,
        mode,
        o,
        target,
        &["--probe-stats"],
        &["-t".into(), "2000".into()],
    )?;
    let (hits, ns) = probe_hits(&stderr)?;
    let queries = (run.txns as usize * script.statements.len()) as f64;
    Ok((hits / queries, ns / queries))
}

pub fn bench(o: &Options) -> Result<()> {
    let root = crate::root();
    crate::run(crate::cargo().args(["build", "--release", "-p", "dbtel-agent"]))?;
    let agent = root.join("target/release/dbtel-agent");
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;

    eprintln!(
        "bench: PostgreSQL with fsync and synchronous_commit on, pgbench scale {}",
        o.scale
    );
    let pg = Cluster::start_with(&["shared_buffers=256MB"]);
    pg.pgbench_init(o.scale);
    let rx = Receiver::start_counting();
    let wanted = |list: &[String], x: &str| list.is_empty() || list.iter().any(|w| w == x);
    let peers = if o.peers {
        let server = wanted(&o.targets, "server");
        Some(peers::Peers::new(&pg, &out_dir.join("peers"), server)?)
    } else {
        None
    };

    // The pipeline without the kernel.
    let pipeline = Command::new(crate::cargo().get_program())
        .current_dir(&root)
        .args(["bench", "-q", "-p", "dbtel-agent", "--bench", "pipeline"])
        .stderr(Stdio::piped())
        .output()?;
    if !pipeline.status.success() {
        bail!(
            "the pipeline bench failed: {}",
            String::from_utf8_lossy(&pipeline.stderr)
        );
    }
    let pipeline = String::from_utf8_lossy(&pipeline.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(String::from)
        .collect::<Vec<_>>();

    let mut rows = Vec::new();
    for script in SCRIPTS.iter().filter(|s| wanted(&o.scripts, s.name)) {
        for mode in MODES.iter().filter(|m| wanted(&o.modes, m)) {
            eprintln!("bench: {} -M {mode}: A/A", script.name);
            let a1 = run_off(&pg, script.name, mode, o)?;
            let a2 = run_off(&pg, script.name, mode, o)?;
            for &(target, target_name) in TARGETS.iter().filter(|(_, n)| wanted(&o.targets, n)) {
                eprintln!(
                    "bench: {} -M {mode}, agent on the {target_name}: {} A/B pairs of {} s",
                    script.name, o.pairs, o.seconds
                );
                let (mut off, mut on, mut probes_only) = (Vec::new(), Vec::new(), Vec::new());
                let mut peer = peers.as_ref().and_then(|p| p.line(target, mode));
                let duration = ["-T".to_string(), o.seconds.to_string()];
                let extra: Vec<&str> = o.agent_args.iter().map(String::as_str).collect();
                for _ in 0..o.pairs {
                    off.push(run_off(&pg, script.name, mode, o)?);
                    on.push(
                        run_agent(&agent, &pg, &rx, script, mode, o, target, &extra, &duration)?.0,
                    );
                    // The same probes doing nothing: what the traps alone cost.
                    probes_only.push(
                        run_agent(
                            &agent,
                            &pg,
                            &rx,
                            script,
                            mode,
                            o,
                            target,
                            &["--probes-only"],
                            &duration,
                        )?
                        .0,
                    );
                    if let (Some(line), Some(p)) = (&mut peer, &peers) {
                        line.round(p, &pg, script, mode, o)?;
                    }
                }
                let (traps_per_query, ebpf_ns) = traps(&agent, &pg, &rx, script, mode, o, target)?;
                let stmts = script.statements.len();
                let tps_off = median(off.iter().map(|r| r.tps).collect());
                let tps_on = median(on.iter().map(|r| r.tps).collect());
                let lat_off = median(off.iter().map(|r| r.latency_ms).collect());
                let lat_on = median(on.iter().map(|r| r.latency_ms).collect());
                let cpu = median(
                    on.iter()
                        .map(|r| {
                            (r.agent_cpu_s / o.seconds as f64) / (r.tps * stmts as f64 / 10_000.0)
                        })
                        .collect(),
                );
                let mut drops = Drops::default();
                on.iter().for_each(|r| drops.add(&r.drops));
                rows.push(Row {
                    script: script.name,
                    mode,
                    target: target_name,
                    stmts,
                    aa_ratio: a2.tps / a1.tps,
                    tps_off,
                    tps_on,
                    ratio: paired(&tps(&on), &tps(&off)),
                    probes_only_ratio: paired(&tps(&probes_only), &tps(&off)),
                    floor_ratio: paired(&tps(&on), &tps(&probes_only)),
                    off_tps: tps(&off),
                    on_tps: tps(&on),
                    added_us_per_query: (lat_on - lat_off) * 1000.0 / stmts as f64,
                    cpu_per_10k_qps: cpu,
                    rss_mib: on.iter().map(|r| r.agent_rss_mib).fold(0.0, f64::max),
                    statements: on.iter().map(|r| r.txns * stmts as u64).sum::<u64>()
                        * target.sides(),
                    spans: on.iter().map(|r| r.spans_matching).sum(),
                    drops,
                    traps_per_query,
                    ebpf_ns_per_query: ebpf_ns,
                    peer: peer.map(|l| l.figures()),
                });
                let r = rows.last().unwrap();
                eprintln!("bench:   TPS ratio {:.3} (probes only {:.3}, dbtel / floor {:.3}, A/A {:.3}), {} spans / {} expected{}", r.ratio, r.probes_only_ratio, r.floor_ratio, r.aa_ratio, r.spans, r.statements, peers::said(r));
                // Written after every line, so an interrupted run still leaves its figures.
                let (md, json) = render(&rows, &pipeline, o);
                std::fs::write(out_dir.join("results.md"), &md)?;
                std::fs::write(out_dir.join("results.json"), &json)?;
            }
        }
    }
    sysbench::lines(&agent, &rx, o, &mut rows, &mut |rows| {
        let (md, json) = render(rows, &pipeline, o);
        std::fs::write(out_dir.join("results.md"), &md)?;
        std::fs::write(out_dir.join("results.json"), &json)?;
        Ok(())
    })?;
    let soak = if o.soak_seconds > 0 {
        Some(soak(&agent, &pg, &rx, o)?)
    } else {
        None
    };
    let (mut md, mut json) = render(&rows, &pipeline, o);
    if let Some(s) = &soak {
        md.push_str(&format!("\nSoak: {s}\n"));
        json.pop();
        json.push_str(&format!(",\"soak\":{:?}}}", s));
        std::fs::write(out_dir.join("results.md"), &md)?;
        std::fs::write(out_dir.join("results.json"), &json)?;
    }
    println!("{md}");
    eprintln!(
        "bench: wrote {}",
        out_dir.join("results.{md,json}").display()
    );
    Ok(())
}

/// pgbench select-only at a fixed 10k transactions/s with the agent on:
/// every statement must arrive as a span, every drop counter must stay 0.
fn soak(agent: &Path, pg: &Cluster, rx: &Receiver, o: &Options) -> Result<String> {
    eprintln!(
        "bench: soak: select-only -R 10000 for {} s, agent on",
        o.soak_seconds
    );
    let script = &SCRIPTS[0];
    let duration = [
        "-T".to_string(),
        o.soak_seconds.to_string(),
        "-R".into(),
        "10000".into(),
    ];
    let (run, _) = run_agent(
        agent,
        pg,
        rx,
        script,
        "prepared",
        o,
        Target::Client,
        &[],
        &duration,
    )?;
    let statements = run.txns * script.statements.len() as u64;
    Ok(format!(
        "{} s at {:.0} queries/s: {} statements, {} spans received, {} dropped; agent {:.3} cores per 10k q/s, RSS {:.1} MiB",
        o.soak_seconds,
        run.tps,
        statements,
        run.spans_matching,
        run.drops.total(),
        (run.agent_cpu_s / o.soak_seconds as f64) / (run.tps / 10_000.0),
        run.agent_rss_mib
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_and_agent_lines() {
        let out = "number of transactions actually processed: 1234/1234\nlatency average = 0.023 ms\ntps = 86995.698808 (without initial connection time)\n";
        let r = parse_pgbench(out).unwrap();
        assert_eq!((r.txns, r.latency_ms, r.tps), (1234, 0.023, 86995.698808));
        let s = "dbtel: 203 spans exported, 0 failed to export, 7 lost in the export queue; 611 events read, 0 lost in the ring buffer, 0 undecodable, 2 unmatched results, 0 queries incomplete";
        assert_eq!(number_before(s, "spans exported"), 203);
        assert_eq!(number_before(s, "lost in the export queue"), 7);
        assert_eq!(number_before(s, "unmatched results"), 2);
        let cpu = "dbtel: agent cpu 1.250 s (attaching 0.200 s), max rss 70.5 MiB";
        assert_eq!(number_after(cpu, "max rss"), Some(70.5));
        assert_eq!(number_after(cpu, "agent cpu"), Some(1.25));
        assert_eq!(number_after(cpu, "(attaching"), Some(0.2));
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), 2.5);
    }

    #[test]
    fn ratios_pair_the_runs_of_one_round() {
        // The host slowed down by half from the second round's off run on:
        // the medians of the columns say 0.45, the rounds' own ratios 0.9,
        // but for the one round the slowdown cut in two.
        let off = [100.0, 100.0, 50.0];
        let on = [90.0, 45.0, 45.0];
        assert_eq!(paired(&on, &off), 0.9);
        assert_eq!(median(on.to_vec()) / median(off.to_vec()), 0.45);
    }
}
