//! `dbtel-agent contention --server-pid PID` on a MariaDB server: who blocks
//! whom (as trees, InnoDB row and table locks and metadata locks), lock
//! waits by type, open transactions, deadlocks so far and long queries,
//! from one read of the server's own tables. Query text is obfuscated with
//! the code exported spans use. Building the report is pure
//! ([`build_report`]): the chains are tested without a server.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    time::Duration,
};

use anyhow::Context;
use serde::Serialize;

use super::{
    catalog::{
        blockers::{Ask, ProcRow, Snapshot},
        config::MysqlCatalogConfig,
        queries::{self, TrxRow},
    },
    server::spans::LockType,
};
use crate::{
    pipeline::sql::{self, Dialect, Text},
    report::{clip, fmt_ms},
};

/// One session in a blocking tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub connection_id: u64,
    pub user: Option<String>,
    pub host: Option<String>,
    pub db: Option<String>,
    /// PROCESSLIST's command and state: `Sleep`, `Query: Updating`.
    pub state: Option<String>,
    /// Obfuscated: its statement running now, else the one its transaction is known by.
    pub query: Option<String>,
    pub transaction_age_ms: Option<i64>,
    pub query_age_ms: Option<u64>,
    /// What it waits for: `row lock X on shop.t (PRIMARY)`, `metadata lock on shop.t`.
    pub waiting_on: Option<String>,
    /// Every session it waits for (it is drawn under the first).
    pub waiting_for: Vec<u64>,
    /// Not in PROCESSLIST (ended meanwhile).
    pub unknown: bool,
    /// This root itself waits: the chain is a cycle.
    pub cycle: bool,
    pub blocked: Vec<Node>,
}

impl Node {
    pub fn size(&self) -> usize {
        1 + self.blocked.iter().map(Node::size).sum::<usize>()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaitCount {
    pub lock_type: String,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub connection_id: u64,
    pub user: Option<String>,
    /// Idle time (in a transaction) or run time (a long query).
    pub duration_ms: u64,
    pub transaction_age_ms: Option<i64>,
    pub query: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transactions {
    pub open: usize,
    /// (connection id, age in ms).
    pub longest: Option<(u64, i64)>,
    pub idle_in_transaction: Vec<Line>,
    /// Innodb_deadlocks.
    pub deadlocks: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// How the catalog connected (never the password).
    pub server: String,
    pub taken_at: String,
    pub long_query_threshold_s: f64,
    pub chains: Vec<Node>,
    pub lock_waits: Vec<WaitCount>,
    pub transactions: Transactions,
    pub long_queries: Vec<Line>,
    /// Metadata lock waits are shown without blockers (no METADATA_LOCK_INFO).
    pub metadata_blockers_unknown: bool,
}

fn obfuscate(q: &str) -> String {
    let text = sql::facts_in(Dialect::MySql, q, Text::Obfuscated).text;
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Who waits for whom, and on what.
struct Edge {
    waiter: u64,
    blockers: Vec<u64>,
    on: String,
    lock: &'static str,
}

fn edges(snap: &Snapshot) -> Vec<Edge> {
    let ask = |connection, lock| Ask {
        server: 0,
        tid: 0,
        connection,
        start_ns: 0,
        lock,
    };
    let mut waiters: Vec<(u64, LockType)> = Vec::new();
    for r in &snap.innodb {
        let lock = if r.lock_type.as_deref() == Some("TABLE") {
            LockType::Table
        } else {
            LockType::Row
        };
        if !waiters.iter().any(|(w, _)| *w == r.waiter) {
            waiters.push((r.waiter, lock));
        }
    }
    for s in &snap.sessions {
        if s.state
            .as_deref()
            .is_some_and(|st| st.contains("metadata lock"))
        {
            waiters.push((s.id, LockType::Metadata));
        }
    }
    let mut out = Vec::new();
    for (waiter, lock) in waiters {
        let Some(f) = snap.facts(&ask(waiter, lock)) else {
            continue;
        };
        let table = f.table.clone().unwrap_or_else(|| "?".into());
        let on = match (lock, &f.mode) {
            (LockType::Metadata, _) => format!("metadata lock on {table}"),
            (_, Some(m)) => format!(
                "{} lock {m} on {table}{}",
                lock.name(),
                f.index
                    .as_ref()
                    .map(|i| format!(" ({i})"))
                    .unwrap_or_default()
            ),
            (_, None) => format!("{} lock on {table}", lock.name()),
        };
        out.push(Edge {
            waiter,
            blockers: f.blockers.iter().map(|b| b.connection_id).collect(),
            on,
            lock: lock.name(),
        });
    }
    out
}

/// The report from one read of the server's tables.
pub fn build_report(
    server: String,
    taken_at: String,
    snap: &Snapshot,
    trx: &[TrxRow],
    deadlocks: u64,
    long_query: Duration,
    mdl_missing: bool,
) -> Report {
    // Not the report's own session.
    let own = |s: &ProcRow| {
        s.info
            .as_deref()
            .is_some_and(|i| i.starts_with(queries::MARKER))
    };
    let snap = &Snapshot {
        innodb: snap.innodb.clone(),
        mdl: snap.mdl.clone(),
        sessions: snap.sessions.iter().filter(|s| !own(s)).cloned().collect(),
    };
    let edges = edges(snap);
    let trx_age = |id: u64| {
        trx.iter()
            .find(|t| t.connection == id)
            .and_then(|t| t.age_ms)
    };
    let node = |id: u64| -> Node {
        let s = snap.sessions.iter().find(|s| s.id == id);
        let edge = edges.iter().find(|e| e.waiter == id);
        let query = s.and_then(|s| s.info.clone()).or_else(|| {
            trx.iter()
                .find(|t| t.connection == id)
                .and_then(|t| t.query.clone())
        });
        Node {
            connection_id: id,
            user: s.map(|s| s.user.clone()),
            host: s.map(|s| s.host.clone()),
            db: s.and_then(|s| s.db.clone()),
            state: s.map(|s| match s.state.as_deref().filter(|x| !x.is_empty()) {
                Some(st) => format!("{}: {st}", s.command),
                None => s.command.clone(),
            }),
            query: query.as_deref().map(obfuscate),
            transaction_age_ms: trx_age(id),
            query_age_ms: s.filter(|s| s.command == "Query").and_then(|s| s.time_ms),
            waiting_on: edge.map(|e| e.on.clone()),
            waiting_for: edge.map(|e| e.blockers.clone()).unwrap_or_default(),
            unknown: s.is_none(),
            cycle: false,
            blocked: Vec::new(),
        }
    };
    // Each waiter is drawn under its first blocker.
    let mut under: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for e in &edges {
        if let Some(&b) = e.blockers.first() {
            under.entry(b).or_default().push(e.waiter);
        }
    }
    let waits = |id: u64| {
        edges
            .iter()
            .any(|e| e.waiter == id && !e.blockers.is_empty())
    };
    fn grow(
        n: &mut Node,
        under: &BTreeMap<u64, Vec<u64>>,
        seen: &mut HashSet<u64>,
        make: &dyn Fn(u64) -> Node,
    ) {
        for &w in under.get(&n.connection_id).into_iter().flatten() {
            if seen.insert(w) {
                let mut c = make(w);
                grow(&mut c, under, seen, make);
                n.blocked.push(c);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut chains = Vec::new();
    // Roots: blockers that wait for no one; then what is left is in cycles.
    let mut roots: Vec<u64> = under.keys().copied().filter(|&b| !waits(b)).collect();
    roots.extend(under.keys().copied().filter(|&b| waits(b)));
    for root in roots {
        if !seen.insert(root) {
            continue;
        }
        let mut n = node(root);
        n.cycle = waits(root);
        grow(&mut n, &under, &mut seen, &node);
        chains.push(n);
    }
    let mut lock_waits: Vec<WaitCount> = Vec::new();
    for e in &edges {
        match lock_waits.iter_mut().find(|w| w.lock_type == e.lock) {
            Some(w) => w.count += 1,
            None => lock_waits.push(WaitCount {
                lock_type: e.lock.into(),
                count: 1,
            }),
        }
    }
    let line = |id: u64, duration_ms: u64, query: Option<&str>| Line {
        connection_id: id,
        user: snap
            .sessions
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.user.clone()),
        duration_ms,
        transaction_age_ms: trx_age(id),
        query: query.map(obfuscate).unwrap_or_default(),
    };
    let idle_in_transaction = trx
        .iter()
        .filter_map(|t| {
            let s = snap
                .sessions
                .iter()
                .find(|s| s.id == t.connection && s.command == "Sleep")?;
            Some(line(
                t.connection,
                s.time_ms.unwrap_or(0),
                t.query.as_deref(),
            ))
        })
        .collect();
    let long_ms = long_query.as_millis() as u64;
    let long_queries = snap
        .sessions
        .iter()
        .filter(|s| {
            s.command == "Query" && s.time_ms.is_some_and(|t| t >= long_ms) && s.info.is_some()
        })
        .map(|s| line(s.id, s.time_ms.unwrap_or(0), s.info.as_deref()))
        .collect();
    let longest = trx
        .iter()
        .filter_map(|t| Some((t.connection, t.age_ms?)))
        .max_by_key(|&(_, age)| age);
    Report {
        server,
        taken_at,
        long_query_threshold_s: long_query.as_secs_f64(),
        chains,
        lock_waits,
        transactions: Transactions {
            open: trx.len(),
            longest,
            idle_in_transaction,
            deadlocks,
        },
        long_queries,
        metadata_blockers_unknown: mdl_missing,
    }
}

fn who(user: &Option<String>, host: &Option<String>) -> String {
    format!(
        "{}@{}",
        user.as_deref().unwrap_or("?"),
        host.as_deref().unwrap_or("?")
    )
}

fn write_node(out: &mut String, n: &Node, prefix: &str, branch: &str, child_prefix: &str) {
    let mut head = format!("connection {}", n.connection_id);
    if n.unknown {
        head.push_str(" (no longer in PROCESSLIST)");
    } else {
        let _ = write!(
            head,
            " [{}] {}",
            who(&n.user, &n.host),
            n.state.as_deref().unwrap_or("?")
        );
        if let Some(on) = &n.waiting_on {
            let ids: Vec<String> = n.waiting_for.iter().map(u64::to_string).collect();
            let whom = if ids.is_empty() {
                String::new()
            } else {
                format!(" held by {}", ids.join(", "))
            };
            let _ = write!(head, ", waiting for a {on}{whom}");
        }
        if let Some(x) = n.transaction_age_ms {
            let _ = write!(head, "; transaction open {}", fmt_ms(x as f64));
        }
    }
    if n.cycle {
        head.push_str("  ** waits in a cycle (deadlock) **");
    }
    let _ = writeln!(out, "{prefix}{branch}{head}");
    if let Some(q) = &n.query {
        let age = n
            .query_age_ms
            .map(|a| format!(" (running {})", fmt_ms(a as f64)))
            .unwrap_or_default();
        let label = if n.query_age_ms.is_some() {
            "query"
        } else {
            "last query"
        };
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
        "dbtel contention report, {} (MariaDB, {})\n",
        r.taken_at, r.server
    );
    if r.chains.is_empty() {
        let _ = writeln!(out, "Blocking chains: none");
    } else {
        let waiting: usize = r
            .chains
            .iter()
            .map(|c| c.size() - 1 + usize::from(c.cycle))
            .sum();
        let _ = writeln!(
            out,
            "Blocking chains: {} ({waiting} sessions waiting)",
            r.chains.len()
        );
        for c in &r.chains {
            write_node(&mut out, c, "  ", "", "");
        }
    }
    if r.metadata_blockers_unknown {
        let _ = writeln!(
            out,
            "  (metadata lock holders unknown: {})",
            queries::NO_MDL_TABLE
        );
    }
    let _ = writeln!(out);
    if r.lock_waits.is_empty() {
        let _ = writeln!(out, "Lock waits: none");
    } else {
        let _ = writeln!(out, "Lock waits:");
        for w in &r.lock_waits {
            let _ = writeln!(out, "  {:<9} {}", w.lock_type, w.count);
        }
    }
    let _ = writeln!(out);
    let t = &r.transactions;
    let longest = t
        .longest
        .map(|(c, age)| format!(", longest {} (connection {c})", fmt_ms(age as f64)))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "Transactions: {} open{longest}; {} idle in transaction; {} deadlocks so far",
        t.open,
        t.idle_in_transaction.len(),
        t.deadlocks
    );
    for s in &t.idle_in_transaction {
        let q = if s.query.is_empty() {
            String::new()
        } else {
            format!(": {}", clip(&s.query))
        };
        let _ = writeln!(
            out,
            "  idle in transaction: connection {} [{}] for {}{q}",
            s.connection_id,
            s.user.as_deref().unwrap_or("?"),
            fmt_ms(s.duration_ms as f64)
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
                "  connection {} [{}] {}: {}",
                q.connection_id,
                q.user.as_deref().unwrap_or("?"),
                fmt_ms(q.duration_ms as f64),
                clip(&q.query)
            );
        }
    }
    out
}

/// `dbtel-agent contention --server-pid PID` of a MariaDB server: prints the report.
pub fn run(
    pid: u32,
    file: Option<&std::path::Path>,
    long_query: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let cfg = MysqlCatalogConfig::for_server(pid, file)?;
    let server = cfg.describe();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let report = rt.block_on(async {
        let mut conn = cfg.connect().await.map_err(anyhow::Error::msg)?;
        let (snap, mdl_missing) = queries::lock_snapshot(&mut conn, true, true).await?;
        let trx = queries::transactions(&mut conn).await?;
        let deadlocks = queries::deadlocks(&mut conn).await?;
        let _ = conn.disconnect().await;
        let taken_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        anyhow::Ok(build_report(
            server.clone(),
            taken_at,
            &snap,
            &trx,
            deadlocks,
            long_query,
            mdl_missing,
        ))
    })?;
    let text = if json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        format_text(&report)
    };
    // A closed pipe (`| head`) is no error.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    Ok(())
}

#[cfg(test)]
#[path = "contention_tests.rs"]
mod tests;
