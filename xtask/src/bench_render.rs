//! The bench's results as a Markdown table and JSON.

use std::fmt::Write as _;

use super::{peers, Options, Row};

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} vCPU {cpu}, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}

pub(super) fn render(rows: &[Row], pipeline: &[String], o: &Options) -> (String, String) {
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {}. pgbench -c {} -j {}, scale {}, {} s runs, {} rounds per line (each round: off, on, probes only, the peer; ratios are medians of the per-round ratios, TPS medians of the runs); agent on the client (libpq probes), the server (USDT probes; server-uprobes: the same facts from uprobes on its functions, as a build without USDT is traced) or both, exporting OTLP/HTTP to a local receiver; spans expected = statements x traced sides. sysbench lines: MariaDB 10.11 (Debian), sysbench --threads {} against 4 tables, the client traced through libmariadb (simple: --db-ps-mode=disable; prepared: server-side prepared statements).\n", machine(), o.clients, o.clients, o.scale, o.seconds, o.pairs, o.clients);
    let _ = writeln!(md, "| script | mode | traced | A/A | TPS off | TPS on | ratio | ratio, probes only | dbtel / floor | +µs/query | agent cores per 10k q/s | agent RSS MiB | spans expected | spans | drops | traps/query | eBPF ns/query | peer TPS | peer / off | dbtel / peer |");
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut json = String::from("{\"machine\":");
    let _ = write!(
        json,
        "{:?},\"seconds\":{},\"pairs\":{},\"clients\":{},\"scale\":{},\"rows\":[",
        machine(),
        o.seconds,
        o.pairs,
        o.clients,
        o.scale
    );
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.3} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1} | {:.3} | {:.1} | {} | {} | {} | {:.2} | {:.0} |{}",
            r.script, r.mode, r.target, r.aa_ratio, r.tps_off, r.tps_on, r.ratio, r.probes_only_ratio, r.floor_ratio, r.added_us_per_query, r.cpu_per_10k_qps, r.rss_mib,
            r.statements, r.spans, r.drops.total(), r.traps_per_query, r.ebpf_ns_per_query, peers::cells(r)
        );
        let d = &r.drops;
        let _ = write!(
            json,
            "{}{{\"script\":\"{}\",\"mode\":\"{}\",\"traced\":\"{}\",\"statements_per_txn\":{},\"aa_ratio\":{:.4},\"tps_off\":{:.1},\"tps_on\":{:.1},\"ratio\":{:.4},\"probes_only_ratio\":{:.4},\"floor_ratio\":{:.4},\
             \"added_us_per_query\":{:.2},\"agent_cores_per_10k_qps\":{:.4},\"agent_rss_mib\":{:.1},\"statements\":{},\"spans\":{},\
             \"drops\":{{\"export_failed\":{},\"export_queue\":{},\"ring_buffer\":{},\"undecodable\":{},\"unmatched\":{},\"incomplete\":{}}},\
             \"traps_per_query\":{:.3},\"ebpf_ns_per_query\":{:.0}{}}}",
            if i > 0 { "," } else { "" },
            r.script, r.mode, r.target, r.stmts, r.aa_ratio, r.tps_off, r.tps_on, r.ratio, r.probes_only_ratio, r.floor_ratio, r.added_us_per_query, r.cpu_per_10k_qps, r.rss_mib,
            r.statements, r.spans, d.export_failed, d.export_queue, d.ring_buffer, d.undecodable, d.unmatched, d.incomplete,
            r.traps_per_query, r.ebpf_ns_per_query, peers::json(r)
        );
    }
    md.push_str(&peers::notes(rows));
    let _ = writeln!(
        md,
        "\nPipeline without the kernel (one thread, recorded pgbench-like events):\n"
    );
    for p in pipeline {
        let _ = writeln!(md, "    {p}");
    }
    let _ = write!(json, "],\"pipeline\":[{}]}}", pipeline.join(","));
    (md, json)
}
