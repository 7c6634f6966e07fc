//! dbtel-agent's command line: traces PostgreSQL and MySQL/MariaDB clients and servers
//! with eBPF and exports OpenTelemetry spans (the work is in the library).

mod cli_input;

use std::{ffi::OsString, process::ExitCode, sync::atomic::Ordering};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use dbtel_agent::pipeline::sql::Text;
use dbtel_agent::{
    config,
    export::console::ConsoleFormat,
    export::{Clock, ExportConfig, Exporter, ExporterKind, Protocol},
    http::{self, Health},
    postgres::server::side::CatalogSettings,
    run::{run, RunConfig, Summary},
};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ExporterArg {
    /// OTLP to OTEL_EXPORTER_OTLP_ENDPOINT (or --otlp-endpoint).
    Otlp,
    /// Spans on stdout (see --console-format).
    Console,
    /// Build spans, export nothing (for measuring).
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ConsoleFormatArg {
    Lines,
    Tree,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtocolArg {
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MetricsExporterArg {
    Otlp,
    /// Only /metrics (Prometheus scrapes it).
    Prometheus,
    None,
}

/// Traces PostgreSQL and MySQL/MariaDB clients and servers with eBPF and exports OpenTelemetry spans.
///
/// Given a client PID (or a command to start), attaches uprobes to its client
/// library (libpq; libmariadb / libmysqlclient): every query becomes a CLIENT
/// span named per the OpenTelemetry database conventions, BEGIN…COMMIT a
/// transaction span. Given a server PID (a PostgreSQL postmaster or backend:
/// its USDT probes; a mariadbd: uprobes on its exported functions), SERVER
/// query spans for every client, transactions, and lock waits with who blocked
/// them and how they ended (deadlock, timeout). Both at once join the client's
/// and the server's spans in one trace. Needs root, or CAP_BPF,
/// CAP_PERFMON, CAP_SYS_ADMIN (uprobes, on kernels such as 6.18) and
/// CAP_SYS_PTRACE (other users' processes); once attached it keeps only what
/// later attaching needs (see README, Privileges).
///
/// Environment: OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL,
/// OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
/// OTEL_TRACES_EXPORTER, OTEL_USE_CONSOLE, OTEL_TRACES_SAMPLER(_ARG),
/// RUST_LOG (agent log level, default info).
#[derive(Parser, Debug)]
#[command(
    name = "dbtel-agent",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  dbtel-agent --pid 4242\n  dbtel-agent --exporter console -- pgbench -c 4 -t 1000 bench\n  PGHOST=/var/run/postgresql dbtel-agent contention\n  dbtel-agent --pid $(pidof mariadbd)\n  dbtel-agent contention --server-pid $(pidof mariadbd)"
)]
struct Cli {
    #[command(subcommand)]
    sub: Option<Sub>,

    #[command(flatten)]
    targets: dbtel_agent::host::select::TargetArgs,

    /// YAML file holding any of these options (keys: long flag names, `_` or `-`);
    /// flags override the environment, which overrides the file.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,

    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,

    /// Serve /healthz (200 once every probe is attached) and /metrics (Prometheus text) on
    /// this address, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    http_address: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pg_server_probes: dbtel_agent::postgres::server::target::ProbeSourceArg,

    /// Mark statements slower than this (`db.slow_query`, a `slow_query_detected` event,
    /// the dbtel_slow_queries counter): 250ms, 2s; a bare number is milliseconds
    /// (env SLOW_QUERY_TIME, the variable OpenTelemetry's in-process database
    /// instrumentations read). Default: off.
    #[arg(long, value_name = "DURATION", env = "SLOW_QUERY_TIME", value_parser = dbtel_agent::settings::parse_threshold)]
    slow_query_threshold: Option<std::time::Duration>,

    /// Where metrics go besides /metrics: otlp (pushed to the OTLP endpoint every
    /// --metric-export-interval), prometheus (only /metrics, for a scraper) or none.
    /// Default: otlp when spans go to OTLP, else none.
    #[arg(
        long,
        value_enum,
        env = "OTEL_METRICS_EXPORTER",
        value_name = "EXPORTER"
    )]
    metrics_exporter: Option<MetricsExporterArg>,

    /// Milliseconds between OTLP metric pushes (at least 100).
    #[arg(long, value_name = "MS", env = "OTEL_METRIC_EXPORT_INTERVAL", default_value_t = 60_000,
          value_parser = cli_input::parse_export_interval)]
    metric_export_interval: u64,

    /// Report N+1 query patterns: a SELECT run this many times or more with other values in
    /// one transaction (or one burst on a connection) after a listing that returned as many
    /// rows (`n_plus_one_detected` event, dbtel_n_plus_one counter); 0 turns it off.
    #[arg(long, value_name = "N", default_value_t = 10)]
    n_plus_one_threshold: u32,

    /// Statements on a connection closer together than this form one burst (N+1 scope
    /// outside transactions).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = humantime::parse_duration)]
    n_plus_one_burst_gap: std::time::Duration,

    /// Distinct query summaries (and tables) metrics keep as label values; the rest are `other`.
    #[arg(long, value_name = "N", default_value_t = dbtel_agent::metrics::DEFAULT_MAX_SUMMARIES)]
    metrics_max_summaries: usize,

    /// Where spans go.
    #[arg(long, value_enum, env = "OTEL_TRACES_EXPORTER", default_value = "otlp")]
    exporter: ExporterArg,

    /// Console output: one line per span, each trace as a tree when it completes, or JSON
    /// (default: tree on a terminal, else lines).
    #[arg(long, value_enum, value_name = "FORMAT")]
    console_format: Option<ConsoleFormatArg>,

    /// OTLP endpoint base URL (overrides OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,

    /// OTLP transport.
    #[arg(
        long,
        value_enum,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "http/protobuf"
    )]
    otlp_protocol: ProtocolArg,

    /// Keep requests the collector cannot take in this directory and send them when it
    /// is back, oldest first (also those an earlier run left); default: retried in
    /// memory for up to 60 s, then dropped and counted.
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<std::path::PathBuf>,

    /// Most the spool holds (e.g. 512MiB, 2GiB); beyond it the oldest requests are dropped, counted.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = dbtel_agent::settings::parse_size,
          requires = "spool_dir")]
    spool_max_size: u64,

    /// service.name of the exported spans (default: OTEL_SERVICE_NAME, else the traced executable's name).
    #[arg(long, value_name = "NAME")]
    service_name: Option<String>,

    /// Export query text as sent, literals included (default: literals become `?`).
    #[arg(long)]
    raw_query_text: bool,

    /// Keep comments in exported query texts (default: dropped; literals in them are
    /// not replaced, so they leave as written).
    #[arg(long, conflicts_with = "raw_query_text")]
    keep_comments: bool,

    /// Longest query text copied from the traced process, in bytes (16 to 16382); longer
    /// text is cut and marked.
    #[arg(long, value_name = "BYTES", default_value_t = 4096, value_parser = cli_input::parse_max_query_length)]
    max_query_length: u32,

    /// Count probe hits per eBPF program and report them at exit (adds a little cost per hit; for benchmarks).
    #[arg(long)]
    probe_stats: bool,

    /// Attach every probe but record nothing: what the traps alone cost the traced processes (for benchmarks).
    #[arg(long)]
    probes_only: bool,

    /// Catalog connection settings for server tracing: a libpq `key=value` file
    /// (PostgreSQL; default: the PG* environment variables, then the traced server's
    /// socket and port), or a MySQL option file with a [client] group (MariaDB;
    /// default: ~/.my.cnf, MYSQL_HOST / MYSQL_TCP_PORT / MYSQL_UNIX_PORT, then the
    /// server's own socket).
    #[arg(long, value_name = "FILE")]
    catalog_config: Option<std::path::PathBuf>,

    /// How often the catalog poller refreshes backends and transaction stats.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    catalog_period: std::time::Duration,

    /// Trace servers without connecting to their catalog (no relation names, no blockers,
    /// no user or client address on MariaDB server spans).
    #[arg(long)]
    no_catalog: bool,

    /// User (name or uid) the `--` command runs as. Default: under sudo, the
    /// invoking user (SUDO_UID/SUDO_GID); otherwise the agent's user. Either
    /// way the command gets none of the agent's capabilities.
    #[arg(long, value_name = "USER", requires = "command")]
    user: Option<String>,

    /// Command to start and trace from its first query; the agent exits with its status.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// One-shot lock-contention report from a server's catalog: blocking chains, lock
    /// waits, transactions, long queries. PostgreSQL: settings from the PG* environment
    /// variables or --catalog-config (libpq key=value). A MariaDB server (--server-pid):
    /// from ~/.my.cnf [client] or --catalog-config (an option file), MYSQL_HOST /
    /// MYSQL_TCP_PORT / MYSQL_UNIX_PORT, else its own socket. Passwords are never taken
    /// from the command line.
    Contention(dbtel_agent::postgres::contention::ContentionArgs),
    /// Would tracing work here? Kernel features, capabilities, each target (--pid or
    /// --all with its selectors: library or server, probe points, layouts), its
    /// catalog, the OTLP endpoint. One line per finding; exit 1 if tracing would fail.
    Check(dbtel_agent::check::CheckArgs),
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

/// The command line over the environment over the `--config` file (see
/// dbtel_agent::config); with `--print-config`, also the effective
/// configuration as YAML.
fn parse_cli() -> anyhow::Result<(Cli, Option<String>)> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let env = |k: &str| std::env::var(k).ok();
    let file = config::config_path(&args)
        .map(|p| config::load(&p, &Cli::command()))
        .transpose()
        .unwrap_or_else(|e| cli_input::settings_error(e));
    let mut cmd = match &file {
        Some(f) => config::apply(Cli::command(), f, &env),
        None => Cli::command(),
    };
    let matches = cmd.try_get_matches_from_mut(&args).unwrap_or_else(|e| {
        if let Some(line) = cli_input::env_value_error(&cmd, &args, &e) {
            cli_input::settings_error(anyhow::anyhow!(line))
        }
        e.exit()
    });
    if let (Some(f), None) = (&file, matches.subcommand()) {
        match config::check_relations(Cli::command(), &cmd, &matches, f) {
            Ok(()) => {}
            Err(config::RelationError::Flags(e)) => e.exit(),
            Err(config::RelationError::File(e)) => cli_input::settings_error(e),
        }
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit());
    let printed = cli
        .print_config
        .then(|| config::render(&cmd, &matches, file.as_ref(), &env));
    Ok((cli, printed))
}

fn real_main() -> anyhow::Result<ExitCode> {
    let (cli, printed) = parse_cli()?;
    if let Some(yaml) = printed {
        print!("{yaml}");
        return Ok(ExitCode::SUCCESS);
    }
    let source = match &cli.sub {
        Some(Sub::Check(args)) => args.pg_server_probes.source,
        _ => cli.pg_server_probes.source,
    };
    dbtel_agent::postgres::server::target::choose_probe_source(source);
    match cli.sub {
        Some(Sub::Contention(args)) => {
            if let Some(pid) = args.server_pid {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    anyhow::bail!("no process with PID {pid}");
                }
            }
            // A MariaDB server's PID: its own report, from its own tables.
            let mariadb = args.server_pid.filter(|pid| {
                dbtel_agent::mysql::server::target::is_server(std::path::Path::new(&format!(
                    "/proc/{pid}/exe"
                )))
            });
            match mariadb {
                Some(pid) => dbtel_agent::mysql::contention::run(
                    pid,
                    // A libpq key=value file is PostgreSQL's, as when tracing.
                    args.catalog_config
                        .as_deref()
                        .filter(|f| dbtel_agent::mysql::catalog::config::is_option_file(f)),
                    std::time::Duration::from_secs_f64(args.long_query),
                    args.json,
                )?,
                None => dbtel_agent::postgres::contention::run(args)?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(Sub::Check(mut args)) => {
            if args.config.is_some() {
                // The file's values reached the agent's own options (as their defaults):
                // check what the agent would do with it, unless this command line says otherwise.
                if args.targets.pids.is_empty() && !args.targets.all {
                    args.targets = cli.targets.clone();
                }
                args.otlp_endpoint = args.otlp_endpoint.or(cli.otlp_endpoint.clone());
                args.catalog_config = args.catalog_config.or(cli.catalog_config.clone());
                args.no_catalog |= cli.no_catalog;
                args.no_otlp |= !matches!(cli.exporter, ExporterArg::Otlp);
                if matches!(cli.otlp_protocol, ProtocolArg::Grpc) {
                    args.otlp_protocol = "grpc".into();
                }
            }
            return Ok(if dbtel_agent::check::run(args)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        None => {}
    }
    let console =
        std::env::var("OTEL_USE_CONSOLE").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    // Every setting checked before anything is attached: one line naming a bad one, exit 2.
    let given = dbtel_agent::settings::Given {
        otlp: !console && matches!(cli.exporter, ExporterArg::Otlp),
        endpoint_flag: cli.otlp_endpoint.as_deref(),
        catalog_period: cli.catalog_period,
        catalog_config: cli.catalog_config.as_deref(),
        spool_dir: cli.spool_dir.as_deref(),
        spool_max_size: cli.spool_max_size,
    };
    if let Err(e) = dbtel_agent::settings::check(&given, &|k| std::env::var(k).ok()) {
        eprintln!("dbtel-agent: {e}");
        return Ok(ExitCode::from(2));
    }
    let command_user = match dbtel_agent::host::command_user::CommandUser::choose(
        cli.user.as_deref(),
        std::env::var("SUDO_UID").ok(),
        std::env::var("SUDO_GID").ok(),
    ) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("dbtel-agent: {e}");
            return Ok(ExitCode::from(2));
        }
    };
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
    let console_format = match cli.console_format {
        Some(ConsoleFormatArg::Lines) => ConsoleFormat::Lines,
        Some(ConsoleFormatArg::Tree) => ConsoleFormat::Tree,
        Some(ConsoleFormatArg::Json) => ConsoleFormat::Json,
        // SAFETY: isatty on a descriptor number has no preconditions.
        None if unsafe { libc::isatty(1) } == 1 => ConsoleFormat::Tree,
        None => ConsoleFormat::Lines,
    };
    let metrics = dbtel_agent::metrics::Metrics::new(cli.metrics_max_summaries);
    let shared = metrics.shared();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    // Bound before anything is attached: a taken address is refused first.
    let health = match cli.http_address {
        Some(addr) => {
            let health = Health::new();
            let router = http::router(health.clone(), metrics.shared());
            rt.block_on(async { http::bind(addr).await.map(|l| http::spawn(l, router)) })?;
            Some(health)
        }
        None => None,
    };
    let text = match (cli.raw_query_text, cli.keep_comments) {
        (true, _) => Text::Raw,
        (false, true) => Text::ObfuscatedWithComments,
        (false, false) => Text::Obfuscated,
    };
    let exporter = Exporter::new(
        ExportConfig {
            kind,
            protocol,
            endpoint: cli.otlp_endpoint.clone(),
            service_name: cli.service_name.clone(),
            console_format,
            spool: cli.spool_dir.map(|d| (d, cli.spool_max_size)),
        },
        Clock::now(),
        Some(rt.handle().clone()),
    )?;
    let push_metrics = match cli.metrics_exporter {
        Some(MetricsExporterArg::Otlp) => true,
        Some(_) => false,
        None => kind == ExporterKind::Otlp,
    };
    let pusher = if push_metrics {
        let transport = dbtel_agent::export::metrics_transport(
            protocol,
            cli.otlp_endpoint.as_deref(),
            rt.handle().clone(),
        )?;
        let service = cli
            .service_name
            .clone()
            .or_else(|| std::env::var("OTEL_SERVICE_NAME").ok())
            .unwrap_or_else(|| "dbtel-agent".into());
        Some(dbtel_agent::metrics::otlp::Pusher::start(
            shared.clone(),
            transport,
            vec![
                ("service.name", service),
                ("service.version", env!("CARGO_PKG_VERSION").into()),
                ("host.name", dbtel_agent::export::host_name()),
            ],
            std::time::Duration::from_millis(cli.metric_export_interval),
        ))
    } else {
        None
    };
    let cfg = RunConfig {
        pids: cli.targets.pids.clone(),
        command: cli.command,
        max_text: cli.max_query_length,
        probe_stats: cli.probe_stats,
        probes_only: cli.probes_only,
        catalog: CatalogSettings {
            config_file: cli.catalog_config,
            period: cli.catalog_period,
            enabled: !cli.no_catalog,
        },
        text,
        host_wide: cli
            .targets
            .all
            .then(|| cli.targets.selectors())
            .transpose()?,
        health,
        command_user,
        metrics,
        slow_query: cli.slow_query_threshold,
        n_plus_one: (cli.n_plus_one_threshold, cli.n_plus_one_burst_gap),
    };
    // The loop runs on a runtime of its own thread: the ring buffer's and the
    // tick's wake-ups reach it directly (under the shared runtime a worker took
    // each and woke this thread). The shared runtime keeps serving HTTP and
    // exports meanwhile.
    let main_loop = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let (summary, mut exporter) = main_loop.block_on(run(cfg, exporter))?;
    drop(main_loop);
    // Outside the runtime: shutdown blocks while gRPC exports still run on it.
    exporter.shutdown();
    let own = dbtel_agent::run::own_of(&summary, &exporter);
    // The last push carries the figures the summary prints.
    metrics_final(&shared, own.clone(), pusher);
    report(&own, &summary, &exporter);
    Ok(match summary.command_status {
        Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
        None => ExitCode::SUCCESS,
    })
}

fn metrics_final(
    shared: &dbtel_agent::metrics::Shared,
    own: dbtel_agent::metrics::own::Own,
    pusher: Option<dbtel_agent::metrics::otlp::Pusher>,
) {
    *shared.own.lock().unwrap_or_else(|e| e.into_inner()) = own;
    if let Some(p) = pusher {
        p.finish();
        let (ok, failed) = shared.pushes();
        log::info!("metrics: {ok} OTLP pushes delivered, {failed} failed");
    }
}

/// The exit summary, printed from the same figures `/metrics` serves.
fn report(own: &dbtel_agent::metrics::own::Own, s: &Summary, e: &Exporter) {
    let st = &e.stats;
    eprintln!("{}", own.summary_line());
    if s.evicted.iter().any(|&n| n > 0) {
        let [conns, statements, queries] = s.evicted;
        eprintln!(
            "dbtel: bounds: {conns} client connections, {statements} prepared statements' texts and {queries} queries in flight forgotten to stay within them"
        );
    }
    if let Some(spool) = &e.spool {
        let (_, bytes) = spool.waiting();
        let ss = &spool.stats;
        eprintln!(
            "dbtel: spool {}: {} spans of this run wait there ({} KiB, sent by the next run with this --spool-dir), \
             {} dropped for its size cap (counted as failed); of an earlier run's {}: {} delivered, {} dropped",
            spool.dir().display(),
            st.spooled.load(Ordering::Relaxed),
            bytes >> 10,
            ss.dropped.load(Ordering::Relaxed),
            ss.earlier_found.load(Ordering::Relaxed),
            ss.earlier_delivered.load(Ordering::Relaxed),
            ss.earlier_dropped.load(Ordering::Relaxed),
        );
    }
    let [queries, lock_waits, deadlocks, cut_short, unexecuted, unmatched, echoes] =
        own.server_spans;
    if queries > 0 || lock_waits > 0 {
        eprintln!(
            "dbtel: server side: {} queries, {} lock waits, {} deadlocks, {} spans cut short (backend exit or agent stop), \
             {} statements parsed or bound but not run to their end, {} completions of statements begun before the attach, \
             {} parallel workers' copies of their leader's statement",
            queries, lock_waits, deadlocks, cut_short, unexecuted, unmatched, echoes
        );
    }
    eprintln!(
        "dbtel: agent cpu {:.3} s (attaching {:.3} s), max rss {:.1} MiB",
        own.cpu_seconds,
        s.attach_cpu_s,
        own.max_rss_bytes as f64 / (1024.0 * 1024.0)
    );
    if !s.program_runs.is_empty() {
        let runs: Vec<String> = s
            .program_runs
            .iter()
            .map(|(name, n, t)| {
                format!(
                    "{name}={n} ({:.0} ns each)",
                    t.as_nanos() as f64 / (*n).max(1) as f64
                )
            })
            .collect();
        eprintln!("dbtel: probe hits: {}", runs.join(" "));
    }
}

#[cfg(test)]
#[path = "main_tests.rs"]
mod tests;
