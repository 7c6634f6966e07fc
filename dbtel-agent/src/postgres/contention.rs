//! `dbtel-agent contention`: a one-shot lock-contention report from the
//! PostgreSQL catalog — who blocks whom (as trees), lock waits by wait event,
//! transaction figures and long-running queries. Query text is obfuscated
//! (literals become `?`) with the same code as exported spans.
//!
//! Building the report from catalog rows is pure ([`build_report`]), so the
//! chain and formatting logic is tested without a server.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use serde::Serialize;

use crate::postgres::catalog::{Backend, Catalog, CatalogConfig, Stats, WaitCount};
pub use crate::report::{clip, fmt_ms, TEXT_QUERY_MAX};

/// Arguments of `dbtel-agent contention`.
#[derive(clap::Args, Debug, Clone)]
pub struct ContentionArgs {
    /// Connection settings. PostgreSQL: libpq conninfo (`key=value ...` lines: host, port,
    /// user, password, dbname, application_name, connect_timeout, passfile, sslmode);
    /// default: the PG* environment variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, ...).
    /// MariaDB (--server-pid of a mariadbd): a MySQL option file ([client] section);
    /// default: ~/.my.cnf, else the server's own socket.
    #[arg(long, value_name = "FILE")]
    pub catalog_config: Option<PathBuf>,

    /// List queries active for at least this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_secs)]
    pub long_query: f64,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// The server: a PostgreSQL postmaster (default host and port from its
    /// postmaster.pid), or a MariaDB server (mariadbd: its report, connecting to its socket).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("not a number of seconds: {s:?}")),
    }
}

/// One backend in a blocking tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainNode {
    pub pid: i32,
    pub usename: Option<String>,
    pub application_name: Option<String>,
    /// `addr:port` for TCP clients.
    pub client: Option<String>,
    pub state: Option<String>,
    /// Obfuscated text of the current (active) or last query.
    pub query: Option<String>,
    pub xact_age_ms: Option<f64>,
    pub query_age_ms: Option<f64>,
    pub wait_event_type: Option<String>,
    pub wait_event: Option<String>,
    /// Every backend this one waits for (it is drawn under the first).
    pub waiting_for: Vec<i32>,
    /// Not found in pg_stat_activity (ended meanwhile; pid 0 is a prepared transaction).
    pub unknown: bool,
    /// This root itself waits: the chain is a cycle (a deadlock not yet detected).
    pub cycle: bool,
    /// Backends waiting for this one.
    pub blocked: Vec<ChainNode>,
}

impl ChainNode {
    /// Backends in this tree, this one included.
    pub fn size(&self) -> usize {
        1 + self.blocked.iter().map(ChainNode::size).sum::<usize>()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LongestTransaction {
    pub pid: i32,
    pub age_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionLine {
    pub pid: i32,
    pub usename: Option<String>,
    pub application_name: Option<String>,
    pub state: Option<String>,
    /// Idle time (idle in transaction) or run time (long query).
    pub duration_ms: f64,
    pub xact_age_ms: Option<f64>,
    /// Obfuscated.
    pub query: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transactions {
    pub active: u32,
    pub longest: Option<LongestTransaction>,
    pub idle_in_transaction: Vec<SessionLine>,
    pub deadlocks: i64,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// host, port, user, database of the catalog connection (never the password).
    pub server: String,
    /// RFC 3339.
    pub taken_at: String,
    pub long_query_threshold_s: f64,
    pub chains: Vec<ChainNode>,
    pub lock_waits: Vec<WaitCount>,
    pub transactions: Transactions,
    pub long_queries: Vec<SessionLine>,
}

/// Literals → `?`, white space runs → one space.
pub fn obfuscate(q: &str) -> String {
    let text = crate::pipeline::sql::facts(q, true).text;
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn node(pid: i32, b: Option<&Backend>, waits: &HashMap<i32, Vec<i32>>) -> ChainNode {
    ChainNode {
        pid,
        usename: b.and_then(|b| b.usename.clone()),
        application_name: b.map(|b| b.application_name.clone()),
        client: b.and_then(|b| {
            Some(format!(
                "{}:{}",
                b.client_addr.as_ref()?,
                b.client_port.unwrap_or(0)
            ))
        }),
        state: b.and_then(|b| b.state.clone()),
        query: b.map(|b| obfuscate(&b.query)).filter(|q| !q.is_empty()),
        xact_age_ms: b.and_then(|b| b.xact_age_ms),
        query_age_ms: b.and_then(|b| b.query_age_ms),
        wait_event_type: b.and_then(|b| b.wait_event_type.clone()),
        wait_event: b.and_then(|b| b.wait_event.clone()),
        waiting_for: waits.get(&pid).cloned().unwrap_or_default(),
        unknown: b.is_none(),
        cycle: false,
        blocked: Vec::new(),
    }
}

/// Blocking trees from (waiter, the pids it waits for) pairs. Roots are
/// backends that block others without waiting themselves, biggest tree first;
/// a waiter is drawn under the first backend it waits for. Backends caught in
/// a cycle get a root of their own, marked `cycle`.
pub fn build_chains(backends: &HashMap<i32, Backend>, graph: &[(i32, Vec<i32>)]) -> Vec<ChainNode> {
    let waits: HashMap<i32, Vec<i32>> = graph
        .iter()
        .filter(|(_, b)| !b.is_empty())
        .cloned()
        .collect();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut waiters: Vec<i32> = waits.keys().copied().collect();
    waiters.sort_unstable();
    for w in &waiters {
        children.entry(waits[w][0]).or_default().push(*w);
    }
    let mut roots: Vec<i32> = waits
        .values()
        .flatten()
        .copied()
        .filter(|p| !waits.contains_key(p))
        .collect();
    roots.sort_unstable();
    roots.dedup();

    fn grow(
        pid: i32,
        backends: &HashMap<i32, Backend>,
        waits: &HashMap<i32, Vec<i32>>,
        children: &HashMap<i32, Vec<i32>>,
        seen: &mut HashSet<i32>,
    ) -> ChainNode {
        seen.insert(pid);
        let mut n = node(pid, backends.get(&pid), waits);
        for &c in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            if !seen.contains(&c) {
                n.blocked.push(grow(c, backends, waits, children, seen));
            }
        }
        n
    }

    let mut seen = HashSet::new();
    let mut out: Vec<ChainNode> = roots
        .iter()
        .map(|&r| grow(r, backends, &waits, &children, &mut seen))
        .collect();
    out.sort_by(|a, b| b.size().cmp(&a.size()).then(a.pid.cmp(&b.pid)));
    // What is left waits in a cycle: every member waits, so none was a root.
    for w in waiters {
        if !seen.contains(&w) {
            let mut n = grow(w, backends, &waits, &children, &mut seen);
            n.cycle = true;
            out.push(n);
        }
    }
    out
}

fn session_line(pid: i32, duration_ms: f64, backends: &HashMap<i32, Backend>) -> SessionLine {
    let b = backends.get(&pid);
    SessionLine {
        pid,
        usename: b.and_then(|b| b.usename.clone()),
        application_name: b.map(|b| b.application_name.clone()),
        state: b.and_then(|b| b.state.clone()),
        duration_ms,
        xact_age_ms: b.and_then(|b| b.xact_age_ms),
        query: b.map(|b| obfuscate(&b.query)).unwrap_or_default(),
    }
}

/// The report from catalog rows: pure.
pub fn build_report(
    server: String,
    taken_at: SystemTime,
    backends: Vec<Backend>,
    graph: &[(i32, Vec<i32>)],
    deadlocks: i64,
    long_query: Duration,
) -> Report {
    let stats = Stats::from_backends(&backends, deadlocks, long_query);
    let backends: HashMap<i32, Backend> = backends.into_iter().map(|b| (b.pid, b)).collect();
    let chains = build_chains(&backends, graph);
    Report {
        server,
        taken_at: humantime::format_rfc3339_millis(taken_at).to_string(),
        long_query_threshold_s: long_query.as_secs_f64(),
        chains,
        lock_waits: stats.lock_waits,
        transactions: Transactions {
            active: stats.active_transactions,
            longest: stats
                .longest_transaction
                .map(|(pid, age_ms)| LongestTransaction { pid, age_ms }),
            idle_in_transaction: stats
                .idle_in_transaction
                .iter()
                .map(|i| session_line(i.pid, i.duration_ms, &backends))
                .collect(),
            deadlocks: stats.deadlocks,
        },
        long_queries: stats
            .long_queries
            .iter()
            .map(|q| session_line(q.pid, q.duration_ms, &backends))
            .collect(),
    }
}

fn who(user: &Option<String>, app: &Option<String>, client: &Option<String>) -> String {
    let mut parts = vec![format!("user {}", user.as_deref().unwrap_or("?"))];
    if let Some(a) = app.as_deref().filter(|a| !a.is_empty()) {
        parts.push(format!("app {a}"));
    }
    if let Some(c) = client {
        parts.push(format!("from {c}"));
    }
    parts.join(", ")
}

fn write_node(out: &mut String, n: &ChainNode, prefix: &str, branch: &str, child_prefix: &str) {
    let mut head = format!("pid {}", n.pid);
    if n.unknown {
        head.push_str(if n.pid == 0 {
            " (a prepared transaction)"
        } else {
            " (no longer in pg_stat_activity)"
        });
    } else {
        let _ = write!(
            head,
            " [{}] {}",
            who(&n.usename, &n.application_name, &n.client),
            n.state.as_deref().unwrap_or("?")
        );
        if let (Some(t), Some(e)) = (&n.wait_event_type, &n.wait_event) {
            if n.waiting_for.is_empty() {
                // An idle session waits for its client: not worth a mention.
                if t != "Client" && t != "Activity" {
                    let _ = write!(head, ", wait event {t}/{e}");
                }
            } else {
                let pids: Vec<String> = n.waiting_for.iter().map(i32::to_string).collect();
                let _ = write!(head, ", waiting ({t}/{e}) for pid {}", pids.join(", "));
            }
        }
        if let Some(x) = n.xact_age_ms {
            let _ = write!(head, "; transaction open {}", fmt_ms(x));
        }
    }
    if n.cycle {
        head.push_str("  ** waits in a cycle (deadlock) **");
    }
    let _ = writeln!(out, "{prefix}{branch}{head}");
    if let Some(q) = &n.query {
        let label = if n.state.as_deref() == Some("active") {
            "query"
        } else {
            "last query"
        };
        let age = n
            .query_age_ms
            .map(|a| format!(" (started {} ago)", fmt_ms(a)))
            .unwrap_or_default();
        let _ = writeln!(out, "{prefix}{child_prefix}    {label}{age}: {}", clip(q));
    }
    let last = n.blocked.len().saturating_sub(1);
    for (i, c) in n.blocked.iter().enumerate() {
        let (b, cp) = if i == last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        write_node(out, c, &format!("{prefix}{child_prefix}"), b, cp);
    }
}

/// The human-readable report.
pub fn format_text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dbtel contention report, {} ({})",
        r.taken_at, r.server
    );
    let _ = writeln!(out);
    if r.chains.is_empty() {
        let _ = writeln!(out, "Blocking chains: none");
    } else {
        let waiting: usize = r.chains.iter().map(|c| c.size() - 1).sum();
        let _ = writeln!(
            out,
            "Blocking chains: {} ({} backends waiting)",
            r.chains.len(),
            waiting + r.chains.iter().filter(|c| c.cycle).count()
        );
        for c in &r.chains {
            write_node(&mut out, c, "  ", "", "");
        }
    }
    let _ = writeln!(out);
    if r.lock_waits.is_empty() {
        let _ = writeln!(out, "Lock waits: none");
    } else {
        let _ = writeln!(out, "Lock waits:");
        let width = r
            .lock_waits
            .iter()
            .map(|w| w.wait_event_type.len() + w.wait_event.len() + 1)
            .max()
            .unwrap_or(0);
        for w in &r.lock_waits {
            let name = format!("{}/{}", w.wait_event_type, w.wait_event);
            let _ = writeln!(out, "  {name:<width$}  {}", w.count);
        }
    }
    let _ = writeln!(out);
    let t = &r.transactions;
    let longest = t
        .longest
        .as_ref()
        .map(|l| format!(", longest {} (pid {})", fmt_ms(l.age_ms), l.pid))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "Transactions: {} open{longest}; {} idle in transaction; {} deadlocks so far",
        t.active,
        t.idle_in_transaction.len(),
        t.deadlocks
    );
    for s in &t.idle_in_transaction {
        let _ = writeln!(
            out,
            "  idle in transaction: pid {} [{}] for {}: last query: {}",
            s.pid,
            who(&s.usename, &s.application_name, &None),
            fmt_ms(s.duration_ms),
            clip(&s.query)
        );
    }
    let _ = writeln!(out);
    let secs = r.long_query_threshold_s;
    if r.long_queries.is_empty() {
        let _ = writeln!(out, "Queries running longer than {secs} s: none");
    } else {
        let _ = writeln!(out, "Queries running longer than {secs} s:");
        for q in &r.long_queries {
            let _ = writeln!(
                out,
                "  pid {} [{}] {}: {}",
                q.pid,
                who(&q.usename, &q.application_name, &None),
                fmt_ms(q.duration_ms),
                clip(&q.query)
            );
        }
    }
    out
}

/// Reads the catalog once and builds the report.
pub async fn collect(
    cat: &Catalog,
    long_query: Duration,
) -> crate::postgres::catalog::Result<Report> {
    // The blocking graph first: backends read after it still include every
    // pid it names, unless one ended in between (drawn as unknown).
    let graph = cat.blocking_graph().await?;
    let backends = cat.backends().await?;
    let deadlocks = cat.deadlocks().await?;
    Ok(build_report(
        cat.config().target(),
        SystemTime::now(),
        backends,
        &graph,
        deadlocks,
        long_query,
    ))
}

/// `dbtel-agent contention`: prints the report on stdout.
pub fn run(args: ContentionArgs) -> anyhow::Result<()> {
    let defaults = match args.server_pid {
        Some(pid) => Some(
            crate::postgres::catalog::server_defaults(pid)
                .with_context(|| format!("PID {pid}: no readable postmaster.pid in its working directory (is it a PostgreSQL postmaster?)"))?,
        ),
        None => None,
    };
    let cfg = CatalogConfig::load(args.catalog_config.as_deref(), defaults)?;
    let long_query = Duration::from_secs_f64(args.long_query);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let report = rt.block_on(async {
        let cat = Arc::new(Catalog::new(cfg).with_long_query(long_query));
        collect(&cat, long_query).await
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", format_text(&report));
    }
    Ok(())
}

#[cfg(test)]
#[path = "contention_tests.rs"]
mod tests;
