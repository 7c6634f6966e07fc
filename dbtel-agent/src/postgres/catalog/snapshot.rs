//! What the catalog tells: relations, blockers, backends (pg_stat_activity
//! rows) and server-wide contention figures, published as a Snapshot.

use std::{
    collections::HashMap,
    fmt,
    time::{Duration, SystemTime},
};

use serde::Serialize;

/// A relation named by a lock tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Relation {
    pub schema: String,
    pub name: String,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A backend holding a lock another one waits for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blocker {
    pub pid: i32,
    /// Raw text of the current (state active) or last query: obfuscate before exporting.
    pub query: String,
    pub state: String,
    /// How long its transaction has been open.
    pub xact_age_ms: Option<f64>,
    /// How long since its current or last query started.
    pub query_age_ms: Option<f64>,
    pub usename: Option<String>,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub client_port: Option<i32>,
    pub wait_event_type: Option<String>,
    pub wait_event: Option<String>,
}

/// One row of pg_stat_activity (a backend connected to a database).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Backend {
    pub pid: i32,
    pub usename: Option<String>,
    pub application_name: String,
    /// Client IP; None for unix sockets.
    pub client_addr: Option<String>,
    /// -1 for unix sockets, None when unknown.
    pub client_port: Option<i32>,
    pub datname: Option<String>,
    /// `active`, `idle`, `idle in transaction`, … (None: not a client backend or no permission).
    pub state: Option<String>,
    pub backend_type: String,
    pub xact_age_ms: Option<f64>,
    pub query_age_ms: Option<f64>,
    /// Time in the current state (idle in transaction for how long).
    pub state_age_ms: Option<f64>,
    /// Top-level transaction ID, once the transaction has written.
    pub backend_xid: Option<u32>,
    pub wait_event_type: Option<String>,
    pub wait_event: Option<String>,
    /// Raw text of the current or last query: obfuscate before exporting.
    pub query: String,
}

impl Backend {
    pub fn in_transaction(&self) -> bool {
        self.xact_age_ms.is_some()
    }
    pub fn waits_for_lock(&self) -> bool {
        self.wait_event_type.as_deref() == Some("Lock")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleInTransaction {
    pub pid: i32,
    pub duration_ms: f64,
    pub xact_age_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LongQuery {
    pub pid: i32,
    pub duration_ms: f64,
    pub state: Option<String>,
    /// Raw text: obfuscate before exporting.
    pub query: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitCount {
    pub wait_event_type: String,
    pub wait_event: String,
    pub count: u32,
}

/// Server-wide contention figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Backends with an open transaction.
    pub active_transactions: u32,
    /// (pid, age in ms) of the oldest open transaction.
    pub longest_transaction: Option<(i32, f64)>,
    pub idle_in_transaction: Vec<IdleInTransaction>,
    /// Active queries running longer than the threshold, longest first.
    pub long_queries: Vec<LongQuery>,
    /// Sum of pg_stat_database.deadlocks since the statistics were last reset.
    pub deadlocks: i64,
    /// Backends waiting on a lock (Lock, LWLock, BufferPin), by wait event, most first.
    pub lock_waits: Vec<WaitCount>,
}

impl Stats {
    /// The figures derivable from pg_stat_activity rows; pure, so the poller
    /// needs one activity query per period and not one per figure.
    pub fn from_backends<'a>(
        backends: impl IntoIterator<Item = &'a Backend>,
        deadlocks: i64,
        long_query: Duration,
    ) -> Stats {
        let threshold = long_query.as_secs_f64() * 1000.0;
        let mut s = Stats {
            deadlocks,
            ..Stats::default()
        };
        let mut waits: HashMap<(String, String), u32> = HashMap::new();
        for b in backends {
            if let Some(age) = b.xact_age_ms {
                s.active_transactions += 1;
                if s.longest_transaction.is_none_or(|(_, a)| age > a) {
                    s.longest_transaction = Some((b.pid, age));
                }
            }
            match b.state.as_deref() {
                Some("idle in transaction") | Some("idle in transaction (aborted)") => {
                    s.idle_in_transaction.push(IdleInTransaction {
                        pid: b.pid,
                        duration_ms: b.state_age_ms.unwrap_or(0.0),
                        xact_age_ms: b.xact_age_ms,
                    })
                }
                Some("active") if b.query_age_ms.is_some_and(|a| a >= threshold) => {
                    s.long_queries.push(LongQuery {
                        pid: b.pid,
                        duration_ms: b.query_age_ms.unwrap_or(0.0),
                        state: b.state.clone(),
                        query: b.query.clone(),
                    })
                }
                _ => {}
            }
            if let (Some(t), Some(e)) = (&b.wait_event_type, &b.wait_event) {
                if matches!(t.as_str(), "Lock" | "LWLock" | "BufferPin") {
                    *waits.entry((t.clone(), e.clone())).or_default() += 1;
                }
            }
        }
        s.idle_in_transaction
            .sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
        s.long_queries
            .sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
        s.lock_waits = waits
            .into_iter()
            .map(|((t, e), count)| WaitCount {
                wait_event_type: t,
                wait_event: e,
                count,
            })
            .collect();
        s.lock_waits.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| {
                (&a.wait_event_type, &a.wait_event).cmp(&(&b.wait_event_type, &b.wait_event))
            })
        });
        s
    }
}

/// What the poller publishes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// None until the first successful refresh.
    pub taken_at: Option<SystemTime>,
    pub backends: HashMap<i32, Backend>,
    pub stats: Stats,
}

// ---------------------------------------------------------------------------
// The client
