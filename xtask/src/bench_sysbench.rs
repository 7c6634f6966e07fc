//! sysbench against MariaDB, the client traced through libmariadb: the same
//! off / on / probes-only pairs as pgbench's lines, in the same table.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};
use dbtel_tests::{MariaDb, Receiver};

use super::{
    median, number_after, paired, probe_hits, read_report, tps, traced_run, Drops, Options, Row,
    Run, Target, TARGETS,
};

/// (script, sysbench's name): point selects only; the OLTP read/write mix.
pub(super) const SCRIPTS: &[&str] = &["oltp_point_select", "oltp_read_write"];
/// simple: statements as text (--db-ps-mode=disable); prepared: server-side prepared statements.
pub(super) const MODES: &[&str] = &["simple", "prepared"];

fn args(db: &MariaDb, script: &str, mode: &str, o: &Options, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        script.into(),
        "--db-driver=mysql".into(),
        format!("--mysql-socket={}", db.socket().display()),
        "--mysql-user=root".into(),
        "--mysql-db=sbtest".into(),
        "--tables=4".into(),
        format!("--table-size={}", 10_000 * o.scale.max(1)),
        format!("--threads={}", o.clients),
        format!(
            "--db-ps-mode={}",
            if mode == "prepared" {
                "auto"
            } else {
                "disable"
            }
        ),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// sysbench's report: transactions and queries per second, average latency.
fn parse(out: &str) -> Result<(Run, u64)> {
    let tps = number_after(
        out.lines()
            .find(|l| l.trim_start().starts_with("transactions:"))
            .context("no transactions in sysbench output")?,
        "(",
    )
    .context("no transaction rate")?;
    let txns = number_after(out, "transactions:").context("no transaction count")? as u64;
    let queries = number_after(out, "queries:").context("no query count")? as u64;
    let latency_ms = number_after(out, "avg:").context("no latency")?;
    Ok((
        Run {
            tps,
            latency_ms,
            txns,
            ..Default::default()
        },
        queries,
    ))
}

fn run_off(db: &MariaDb, script: &str, mode: &str, o: &Options) -> Result<(Run, u64)> {
    let time = format!("--time={}", o.seconds);
    let out = Command::new("sysbench")
        .args(args(db, script, mode, o, &[&time, "run"]))
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    parse(&stdout).with_context(|| {
        format!(
            "sysbench {script}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn run_on(
    agent: &Path,
    db: &MariaDb,
    rx: &Receiver,
    script: &str,
    mode: &str,
    o: &Options,
    traced: Target,
    extra: &[&str],
    run: &[&str],
) -> Result<(Run, u64, String)> {
    let before = rx.name_counts();
    let mut workload = Command::new("sysbench");
    workload.args(args(db, script, mode, o, run));
    let (stdout, stderr) = traced_run(
        agent,
        rx,
        extra,
        traced,
        &db.pid().to_string(),
        &mut workload,
    )?;
    let (mut r, queries) = parse(&stdout)?;
    read_report(&mut r, &stderr)?;
    // Statement spans: not the transactions, not the prepares done at each thread's start.
    r.spans_matching =
        rx.counted_since(&before, |n| n != "transaction" && !n.starts_with("PREPARE"));
    Ok((r, queries, stderr))
}

/// Probe hits and eBPF time per query from a counted run (--probe-stats).
fn traps(
    agent: &Path,
    db: &MariaDb,
    rx: &Receiver,
    script: &str,
    mode: &str,
    o: &Options,
    traced: Target,
) -> Result<(f64, f64)> {
    let (_, queries, stderr) = run_on(
        agent,
        db,
        rx,
        script,
        mode,
        o,
        traced,
        &["--probe-stats"],
        &["--events=2000", "--time=0", "run"],
    )?;
    let (hits, ns) = probe_hits(&stderr)?;
    Ok((hits / queries as f64, ns / queries as f64))
}

/// The sysbench lines, appended to `rows` one by one (`written` after each).
pub(super) fn lines(
    agent: &Path,
    rx: &Receiver,
    o: &Options,
    rows: &mut Vec<Row>,
    written: &mut dyn FnMut(&[Row]) -> Result<()>,
) -> Result<()> {
    let wanted = |list: &[String], x: &str| list.is_empty() || list.iter().any(|w| w == x);
    let scripts: Vec<&str> = SCRIPTS
        .iter()
        .copied()
        .filter(|s| wanted(&o.scripts, s))
        .collect();
    let targets: Vec<(Target, &str)> = TARGETS
        .iter()
        .copied()
        .filter(|(_, n)| wanted(&o.targets, n))
        .collect();
    if scripts.is_empty() || targets.is_empty() {
        return Ok(());
    }
    let sysbench = which("sysbench")?;
    eprintln!(
        "bench: MariaDB (sysbench, {} tables of {} rows)",
        4,
        10_000 * o.scale.max(1)
    );
    let db = MariaDb::start();
    db.cli("create database sbtest");
    let out = Command::new("sysbench")
        .args(args(&db, "oltp_read_write", "simple", o, &["prepare"]))
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // sysbench may report a failed table and still exit 0.
    if !out.status.success() || said.contains("FATAL") {
        bail!("sysbench prepare: {said}");
    }
    let peers = if o.peers {
        let dir = crate::root().join("target/bench/peers");
        Some(super::peers::mysql::MyPeers::new(&db, &sysbench, &dir)?)
    } else {
        None
    };
    for script in scripts {
        for mode in MODES.iter().copied().filter(|m| wanted(&o.modes, m)) {
            for &(traced, traced_name) in &targets {
                eprintln!("bench: sysbench {script} ({mode}), agent on the {traced_name}: A/A, then {} A/B pairs of {} s", o.pairs, o.seconds);
                let a1 = run_off(&db, script, mode, o)?.0;
                let a2 = run_off(&db, script, mode, o)?.0;
                let (mut off, mut on, mut probes_only, mut queries) =
                    (Vec::new(), Vec::new(), Vec::new(), 0u64);
                let time = format!("--time={}", o.seconds);
                let extra: Vec<&str> = o.agent_args.iter().map(String::as_str).collect();
                let mut peer = peers.as_ref().and_then(|p| p.line(traced));
                let mut workload = Command::new(&sysbench);
                workload.args(args(&db, script, mode, o, &[&time, "run"]));
                for _ in 0..o.pairs {
                    off.push(run_off(&db, script, mode, o)?.0);
                    let (r, q, _) = run_on(
                        agent,
                        &db,
                        rx,
                        script,
                        mode,
                        o,
                        traced,
                        &extra,
                        &[&time, "run"],
                    )?;
                    queries += q;
                    on.push(r);
                    probes_only.push(
                        run_on(
                            agent,
                            &db,
                            rx,
                            script,
                            mode,
                            o,
                            traced,
                            &["--probes-only"],
                            &[&time, "run"],
                        )?
                        .0,
                    );
                    if let Some(line) = &mut peer {
                        line.round(&db, &workload, o.clients as u64, &|out| {
                            parse(out).map(|(r, q)| (r.tps, q))
                        })?;
                    }
                }
                let (traps_per_query, ebpf_ns) = traps(agent, &db, rx, script, mode, o, traced)?;
                let txns: u64 = on.iter().map(|r| r.txns).sum();
                let stmts = (queries as f64 / txns.max(1) as f64).round() as usize;
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
                    script: if script == "oltp_point_select" {
                        "sysbench oltp_point_select"
                    } else {
                        "sysbench oltp_read_write"
                    },
                    mode,
                    target: traced_name,
                    stmts,
                    aa_ratio: a2.tps / a1.tps,
                    tps_off,
                    tps_on,
                    ratio: paired(&tps(&on), &tps(&off)),
                    probes_only_ratio: paired(&tps(&probes_only), &tps(&off)),
                    floor_ratio: paired(&tps(&on), &tps(&probes_only)),
                    off_tps: tps(&off),
                    on_tps: tps(&on),
                    added_us_per_query: (lat_on - lat_off) * 1000.0 / stmts.max(1) as f64,
                    cpu_per_10k_qps: cpu,
                    rss_mib: on.iter().map(|r| r.agent_rss_mib).fold(0.0, f64::max),
                    statements: queries * traced.sides(),
                    spans: on.iter().map(|r| r.spans_matching).sum(),
                    drops,
                    traps_per_query,
                    ebpf_ns_per_query: ebpf_ns,
                    peer: peer.map(|l| l.figures()),
                });
                let r = rows.last().unwrap();
                eprintln!("bench:   TPS ratio {:.3} (probes only {:.3}, dbtel / floor {:.3}, A/A {:.3}), {} spans / {} expected{}", r.ratio, r.probes_only_ratio, r.floor_ratio, r.aa_ratio, r.spans, r.statements, super::peers::said(r));
                written(rows)?;
            }
        }
    }
    Ok(())
}

/// A program's full path from PATH, its links resolved: bpftrace -c wants one
/// path (with /bin a link to /usr/bin, the bare name matches two).
fn which(name: &str) -> Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("no {name} in PATH (cargo xtask setup installs it)"))?
        .canonicalize()
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysbench_output() {
        let out = "SQL statistics:\n    queries performed:\n        read:                            140000\n        write:                           0\n        other:                           0\n        total:                           140000\n    transactions:                        140000 (13997.62 per sec.)\n    queries:                             140000 (13997.62 per sec.)\n    ignored errors:                      0      (0.00 per sec.)\n\nLatency (ms):\n         min:                                    0.05\n         avg:                                    0.14\n         max:                                    4.69\n";
        let (r, q) = parse(out).unwrap();
        assert_eq!(
            (r.txns, q, r.tps, r.latency_ms),
            (140000, 140000, 13997.62, 0.14)
        );
    }
}
