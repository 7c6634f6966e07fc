//! dbtel-agent: traces PostgreSQL clients (libpq) by PID with eBPF uprobes and
//! exports one OpenTelemetry span per query.

use std::{process::ExitCode, sync::atomic::Ordering};


use anyhow::Context;
use clap::{Parser, ValueEnum};
use dbtel_agent::{
    export::{Clock, ExportConfig, Exporter, ExporterKind, Protocol},
    run::{run, RunConfig, Summary},
};
use dbtel_common::counter;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ExporterArg {
    /// OTLP to OTEL_EXPORTER_OTLP_ENDPOINT (or --otlp-endpoint).
    Otlp,
    /// One line per span on stdout.
    Console,
    /// Build spans, export nothing (for measuring).
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtocolArg {
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Traces PostgreSQL client queries with eBPF and exports them as OpenTelemetry spans.
///
/// Attaches uprobes to libpq in the given processes (or in a command it starts)
/// and turns every query into a CLIENT span named per the OpenTelemetry database
/// conventions. Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN).
///
/// Environment: OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL,
/// OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
/// OTEL_TRACES_EXPORTER, OTEL_USE_CONSOLE, OTEL_TRACES_SAMPLER(_ARG),
/// RUST_LOG (agent log level, default info).
#[derive(Parser, Debug)]
#[command(name = "dbtel-agent", version, after_help = "Examples:\n  dbtel-agent --pid 4242\n  dbtel-agent --exporter console -- pgbench -c 4 -t 1000 bench")]
struct Cli {
    /// Trace this process (repeatable). Its libpq is found through /proc/PID/maps.
    #[arg(short, long = "pid", value_name = "PID")]
    pids: Vec<u32>,

    /// Where spans go.
    #[arg(long, value_enum, env = "OTEL_TRACES_EXPORTER", default_value = "otlp")]
    exporter: ExporterArg,

    /// OTLP endpoint base URL (overrides OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,

    /// OTLP transport.
    #[arg(long, value_enum, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf")]
    otlp_protocol: ProtocolArg,

    /// service.name of the exported spans (default: OTEL_SERVICE_NAME, else the traced executable's name).
    #[arg(long, value_name = "NAME")]
    service_name: Option<String>,

    /// Export query text as sent, literals included (default: literals become `?`).
    #[arg(long)]
    raw_query_text: bool,

    /// Longest query text copied from the traced process, in bytes; longer text is cut and marked.
    #[arg(long, value_name = "BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..=16382))]
    max_query_length: u32,

    /// Count probe hits per eBPF program and report them at exit (adds a little cost per hit; for benchmarks).
    #[arg(long)]
    probe_stats: bool,

    /// Command to start and trace from its first query; the agent exits with its status.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dbtel-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let console = std::env::var("OTEL_USE_CONSOLE").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let kind = match cli.exporter {
        _ if console => ExporterKind::Console,
        ExporterArg::Otlp => ExporterKind::Otlp,
        ExporterArg::Console => ExporterKind::Console,
        ExporterArg::None => ExporterKind::None,
    };
    let protocol = match cli.otlp_protocol {
        ProtocolArg::Grpc => Protocol::Grpc,
        ProtocolArg::HttpProtobuf => Protocol::HttpProtobuf,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let exporter = Exporter::new(
        ExportConfig {
            kind,
            protocol,
            endpoint: cli.otlp_endpoint,
            service_name: cli.service_name,
            raw_text: cli.raw_query_text,
        },
        Clock::now(),
        Some(rt.handle().clone()),
    );
    let cfg = RunConfig {
        pids: cli.pids,
        command: cli.command,
        max_text: cli.max_query_length,
        probe_stats: cli.probe_stats,
    };
    let (summary, mut exporter) = rt.block_on(run(cfg, exporter))?;
    // Outside the runtime: shutdown blocks while gRPC exports still run on it.
    exporter.shutdown();
    report(&summary, &exporter);
    Ok(match summary.command_status {
        Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
        None => ExitCode::SUCCESS,
    })
}

fn report(s: &Summary, e: &Exporter) {
    let st = &e.stats;
    let ring_full = s.kernel[counter::RINGBUF_FULL as usize];
    let unmatched = s.kernel[counter::RESULT_UNMATCHED as usize] + s.unmatched_results;
    eprintln!(
        "dbtel: {} spans exported, {} failed to export, {} lost in the export queue; \
         {} events read, {} lost in the ring buffer, {} undecodable, {} unmatched results, {} queries incomplete",
        st.exported.load(Ordering::Relaxed),
        // Spans the exporter could not even be set up for count as failed too.
        st.failed.load(Ordering::Relaxed) + s.export_errors,
        st.unaccounted(),
        s.events,
        ring_full,
        s.decode_errors,
        unmatched,
        s.incomplete,
    );
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let cpu = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) as f64 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) as f64 / 1e6;
    // VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork+exec.
    let hwm_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    eprintln!("dbtel: agent cpu {cpu:.3} s, max rss {:.1} MiB", hwm_kib / 1024.0);
    if !s.program_runs.is_empty() {
        let runs: Vec<String> = s
            .program_runs
            .iter()
            .map(|(name, n, t)| format!("{name}={n} ({:.0} ns each)", t.as_nanos() as f64 / (*n).max(1) as f64))
            .collect();
        eprintln!("dbtel: probe hits: {}", runs.join(" "));
    }
}
