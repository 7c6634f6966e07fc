//! The PostgreSQL catalog side of contention tracing: a small SQL client that
//! asks the server who is connected, who waits for whom, and what a lock
//! tag's relation OID is called.
//!
//! Connection settings come from the libpq environment variables or from a
//! conninfo file, never from the command line, and the password never appears
//! in `Debug` output or in an error. Connections are opened lazily and opened
//! again after a failure; one connection per database is kept for relation
//! names, because `pg_class` is per database.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use tokio_postgres::{Client, NoTls, Row};

mod config;
mod snapshot;

pub use config::{
    parse_conninfo, parse_postmaster_pid, passfile_lookup, server_defaults, CatalogConfig,
};
pub use snapshot::{
    Backend, Blocker, IdleInTransaction, LongQuery, Relation, Snapshot, Stats, WaitCount,
};

/// Errors of the catalog client. None of them carries the password.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog configuration {origin}: {msg}")]
    Config { origin: String, msg: String },
    #[error("cannot connect to PostgreSQL ({target}): {msg}")]
    Connect { target: String, msg: String },
    #[error("catalog query ({what}) failed: {msg}")]
    Query { what: &'static str, msg: String },
    #[error("no database with OID {0}")]
    NoDatabase(u32),
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// The message of a tokio-postgres error and its causes, without any of the
/// connection parameters (tokio-postgres never puts the password in them).
fn pg_msg(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// Warns at most once per period, counting what it held back.
struct RateLimited {
    period: Duration,
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
}

impl RateLimited {
    fn new(period: Duration) -> Self {
        RateLimited {
            period,
            last: Mutex::new(None),
            held: AtomicU64::new(0),
        }
    }
    fn warn(&self, msg: &dyn fmt::Display) {
        let mut last = self.last.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < self.period) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let held = self.held.swap(0, Ordering::Relaxed);
        if held > 0 {
            log::warn!("{msg} ({held} similar warnings suppressed)");
        } else {
            log::warn!("{msg}");
        }
    }
}

/// A catalog connection and the backend serving it.
#[derive(Clone)]
struct Conn {
    client: Arc<Client>,
    pid: i32,
}

/// Most per-database connections kept open at once (each is a backend on the server).
const MAX_DB_CONNECTIONS: usize = 8;
/// Relation names cached before the cache starts over.
const MAX_RELATIONS: usize = 10_000;

/// An async catalog client, shareable (`Arc<Catalog>`) between tasks.
pub struct Catalog {
    cfg: CatalogConfig,
    long_query: Duration,
    main: tokio::sync::Mutex<Option<Conn>>,
    /// Connections to other databases, by database OID.
    per_db: tokio::sync::Mutex<HashMap<u32, Conn>>,
    /// Backend pids of the catalog's own connections, left out of [`backends`](Self::backends).
    own_pids: Mutex<std::collections::HashSet<i32>>,
    db_names: Mutex<HashMap<u32, String>>,
    relations: Mutex<HashMap<(u32, u32), Relation>>,
    warn: RateLimited,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

const ACTIVITY_COLUMNS: &str = "a.pid, a.usename::text, coalesce(a.application_name, ''), host(a.client_addr), a.client_port, \
     a.datname::text, a.state, coalesce(a.backend_type, ''), \
     (extract(epoch from now() - a.xact_start) * 1000)::float8, \
     (extract(epoch from now() - a.query_start) * 1000)::float8, \
     (extract(epoch from now() - a.state_change) * 1000)::float8, \
     a.backend_xid::text::int8, a.wait_event_type, a.wait_event, coalesce(a.query, '')";

fn backend_from_row(r: &Row) -> Backend {
    Backend {
        pid: r.get(0),
        usename: r.get(1),
        application_name: r.get(2),
        client_addr: r.get(3),
        client_port: r.get(4),
        datname: r.get(5),
        state: r.get(6),
        backend_type: r.get(7),
        xact_age_ms: r.get(8),
        query_age_ms: r.get(9),
        state_age_ms: r.get(10),
        backend_xid: r.get::<_, Option<i64>>(11).map(|x| x as u32),
        wait_event_type: r.get(12),
        wait_event: r.get(13),
        query: r.get(14),
    }
}

impl Catalog {
    /// A client that connects on first use. Long-query threshold: 5 s.
    pub fn new(cfg: CatalogConfig) -> Catalog {
        Catalog {
            cfg,
            long_query: Duration::from_secs(5),
            main: tokio::sync::Mutex::new(None),
            per_db: tokio::sync::Mutex::new(HashMap::new()),
            own_pids: Mutex::new(Default::default()),
            db_names: Mutex::new(HashMap::new()),
            relations: Mutex::new(HashMap::new()),
            warn: RateLimited::new(Duration::from_secs(60)),
        }
    }

    /// Queries active for at least `d` count as long in [`stats`](Self::stats).
    pub fn with_long_query(mut self, d: Duration) -> Catalog {
        self.long_query = d;
        self
    }

    pub fn config(&self) -> &CatalogConfig {
        &self.cfg
    }

    /// Backend PIDs of this client's own connections (not to be traced).
    pub fn own_pids(&self) -> Vec<i32> {
        self.own_pids.lock().unwrap().iter().copied().collect()
    }

    /// Logs a warning about a failed catalog operation, at most once a minute.
    pub fn warn_rate_limited(&self, e: &CatalogError) {
        self.warn.warn(&format_args!("catalog: {e}"));
    }

    async fn connect(&self, cfg: &CatalogConfig) -> Result<Conn> {
        let (client, conn) =
            cfg.pg_config()
                .connect(NoTls)
                .await
                .map_err(|e| CatalogError::Connect {
                    target: cfg.target(),
                    msg: pg_msg(&e),
                })?;
        let target = cfg.target();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("catalog connection ({target}) ended: {}", pg_msg(&e));
            }
        });
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(|e| CatalogError::Query {
                what: "connection setup",
                msg: pg_msg(&e),
            })?
            .get(0);
        self.own_pids.lock().unwrap().insert(pid);
        log::debug!("catalog connected ({}), backend pid {pid}", cfg.target());
        Ok(Conn {
            client: Arc::new(client),
            pid,
        })
    }

    fn forget(&self, conn: &Conn) {
        self.own_pids.lock().unwrap().remove(&conn.pid);
    }

    /// The main connection, opened (again) when there is none or it broke.
    async fn client(&self) -> Result<Arc<Client>> {
        let mut slot = self.main.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.client.clone());
        }
        if let Some(old) = slot.take() {
            self.forget(&old);
        }
        let c = self.connect(&self.cfg).await?;
        *slot = Some(c.clone());
        Ok(c.client)
    }

    /// Connects now (instead of at first use), so that a bad configuration shows at once.
    pub async fn check(&self) -> Result<()> {
        let c = self.client().await?;
        c.simple_query("SELECT 1")
            .await
            .map_err(|e| CatalogError::Query {
                what: "connection check",
                msg: pg_msg(&e),
            })?;
        Ok(())
    }

    async fn query(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let c = self.client().await?;
        c.query(sql, params).await.map_err(|e| CatalogError::Query {
            what,
            msg: pg_msg(&e),
        })
    }

    /// The name of database `db_oid` (cached: databases are rarely renamed).
    pub async fn database_name(&self, db_oid: u32) -> Result<String> {
        if let Some(n) = self.db_names.lock().unwrap().get(&db_oid) {
            return Ok(n.clone());
        }
        let rows = self
            .query(
                "database name",
                "SELECT datname::text FROM pg_database WHERE oid = $1",
                &[&db_oid],
            )
            .await?;
        let name: String = rows.first().ok_or(CatalogError::NoDatabase(db_oid))?.get(0);
        self.db_names.lock().unwrap().insert(db_oid, name.clone());
        Ok(name)
    }

    /// A connection to database `db_oid`: the main one when it is that database
    /// (or for shared catalogs, OID 0), else a kept per-database connection.
    async fn client_for(&self, db_oid: u32) -> Result<Arc<Client>> {
        if db_oid == 0 {
            return self.client().await;
        }
        let name = self.database_name(db_oid).await?;
        if name == self.cfg.dbname {
            return self.client().await;
        }
        let mut map = self.per_db.lock().await;
        if let Some(c) = map.get(&db_oid).filter(|c| !c.client.is_closed()) {
            return Ok(c.client.clone());
        }
        map.retain(|_, c| {
            let open = !c.client.is_closed();
            if !open {
                self.forget(c);
            }
            open
        });
        if map.len() >= MAX_DB_CONNECTIONS {
            // Drop one at random; it reconnects when its database comes up again.
            let k = *map.keys().next().unwrap();
            if let Some(old) = map.remove(&k) {
                self.forget(&old);
            }
        }
        let c = self.connect(&self.cfg.with_dbname(&name)).await?;
        map.insert(db_oid, c.clone());
        Ok(c.client)
    }

    /// Schema and name of relation `rel_oid` in database `db_oid` (as in a
    /// lock tag: database 0 for shared catalogs). None when no such relation
    /// is visible (dropped, or created by a transaction not yet committed).
    pub async fn relation_name(&self, db_oid: u32, rel_oid: u32) -> Result<Option<Relation>> {
        if let Some(r) = self.relations.lock().unwrap().get(&(db_oid, rel_oid)) {
            return Ok(Some(r.clone()));
        }
        let c = self.client_for(db_oid).await?;
        let row = c
            .query_opt(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
                &[&rel_oid],
            )
            .await
            .map_err(|e| CatalogError::Query { what: "relation name", msg: pg_msg(&e) })?;
        // Not found is not cached: the relation may be committed a moment later.
        let Some(row) = row else { return Ok(None) };
        let rel = Relation {
            schema: row.get(0),
            name: row.get(1),
        };
        let mut cache = self.relations.lock().unwrap();
        if cache.len() >= MAX_RELATIONS {
            cache.clear();
        }
        cache.insert((db_oid, rel_oid), rel.clone());
        Ok(Some(rel))
    }

    /// The backends `waiting_pid` waits for, in pg_blocking_pids order.
    ///
    /// pg_blocking_pids briefly locks the lock manager's partitions, so it is
    /// asked for one waiter at a time, when a wait is seen, and never polled
    /// for every backend.
    pub async fn blockers(&self, waiting_pid: i32) -> Result<Vec<Blocker>> {
        let rows = self
            .query(
                "blockers",
                "SELECT a.pid, coalesce(a.query, ''), coalesce(a.state, ''), \
                        (extract(epoch from now() - a.xact_start) * 1000)::float8, \
                        (extract(epoch from now() - a.query_start) * 1000)::float8, \
                        a.usename::text, coalesce(a.application_name, ''), host(a.client_addr), a.client_port, \
                        a.wait_event_type, a.wait_event \
                 FROM unnest(pg_blocking_pids($1)) WITH ORDINALITY AS b(pid, ord) \
                 JOIN pg_stat_activity a ON a.pid = b.pid \
                 ORDER BY b.ord",
                &[&waiting_pid],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Blocker {
                pid: r.get(0),
                query: r.get(1),
                state: r.get(2),
                xact_age_ms: r.get(3),
                query_age_ms: r.get(4),
                usename: r.get(5),
                application_name: r.get(6),
                client_addr: r.get(7),
                client_port: r.get(8),
                wait_event_type: r.get(9),
                wait_event: r.get(10),
            })
            .collect())
    }

    /// The row a backend waits to lock, as (database OID, relation OID): a
    /// row-lock wait is a wait on the holder's transaction id, which names no
    /// table, but the waiter holds the tuple lock on the row meanwhile.
    pub async fn tuple_lock_of(&self, pid: i32) -> Result<Option<(u32, u32)>> {
        let rows = self
            .query(
                "tuple lock",
                "SELECT database, relation FROM pg_locks                  WHERE pid = $1 AND locktype = 'tuple' AND granted LIMIT 1",
                &[&pid],
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|r| Some((r.get::<_, Option<u32>>(0)?, r.get::<_, Option<u32>>(1)?))))
    }

    /// For every backend waiting on a heavyweight lock: (its pid, the pids it
    /// waits for). pg_blocking_pids runs only for the waiters.
    pub async fn blocking_graph(&self) -> Result<Vec<(i32, Vec<i32>)>> {
        let rows = self
            .query(
                "blocking graph",
                "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, Vec<i32>>(1)))
            .filter(|(_, b)| !b.is_empty())
            .collect())
    }

    /// Backend `pid`, if it is connected to a database.
    pub async fn backend(&self, pid: i32) -> Result<Option<Backend>> {
        let sql = format!("SELECT {ACTIVITY_COLUMNS} FROM pg_stat_activity a WHERE a.pid = $1 AND a.datid IS NOT NULL");
        Ok(self
            .query("backend", &sql, &[&pid])
            .await?
            .first()
            .map(backend_from_row))
    }

    /// Every backend connected to a database (client backends, autovacuum
    /// workers, …), except the catalog's own connections. One scan of
    /// pg_stat_activity, which reads shared memory and takes no locks.
    pub async fn backends(&self) -> Result<Vec<Backend>> {
        let sql =
            format!("SELECT {ACTIVITY_COLUMNS} FROM pg_stat_activity a WHERE a.datid IS NOT NULL");
        let rows = self.query("backends", &sql, &[]).await?;
        let own = self.own_pids.lock().unwrap().clone();
        Ok(rows
            .iter()
            .map(backend_from_row)
            .filter(|b| !own.contains(&b.pid))
            .collect())
    }

    /// Deadlocks detected so far, over all databases.
    pub async fn deadlocks(&self) -> Result<i64> {
        let rows = self
            .query(
                "deadlocks",
                "SELECT coalesce(sum(deadlocks), 0)::int8 FROM pg_stat_database",
                &[],
            )
            .await?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    /// Transaction and lock-wait figures, now.
    pub async fn stats(&self) -> Result<Stats> {
        let backends = self.backends().await?;
        let deadlocks = self.deadlocks().await?;
        Ok(Stats::from_backends(&backends, deadlocks, self.long_query))
    }

    /// Backends and stats from the same pg_stat_activity read.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let backends = self.backends().await?;
        let deadlocks = self.deadlocks().await?;
        let stats = Stats::from_backends(&backends, deadlocks, self.long_query);
        Ok(Snapshot {
            taken_at: Some(SystemTime::now()),
            backends: backends.into_iter().map(|b| (b.pid, b)).collect(),
            stats,
        })
    }
}

/// Refreshes a [`Snapshot`] every `period` (first one at once). Errors are
/// logged (at most once a minute) and the last good snapshot stays published;
/// the task runs until aborted or until every receiver is dropped.
pub fn spawn_poller(
    cat: Arc<Catalog>,
    period: Duration,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<Arc<Snapshot>>,
) {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match cat.snapshot().await {
                Ok(s) => {
                    if tx.send(Arc::new(s)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if tx.is_closed() {
                        return;
                    }
                    cat.warn_rate_limited(&e);
                }
            }
        }
    });
    (task, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn backend(
        pid: i32,
        state: &str,
        xact: Option<f64>,
        query: Option<f64>,
        wait: Option<(&str, &str)>,
    ) -> Backend {
        Backend {
            pid,
            usename: Some("postgres".into()),
            application_name: "psql".into(),
            client_addr: None,
            client_port: Some(-1),
            datname: Some("postgres".into()),
            state: Some(state.into()),
            backend_type: "client backend".into(),
            xact_age_ms: xact,
            query_age_ms: query,
            state_age_ms: query,
            backend_xid: None,
            wait_event_type: wait.map(|w| w.0.into()),
            wait_event: wait.map(|w| w.1.into()),
            query: format!("select {pid}"),
        }
    }

    #[test]
    fn stats_from_backends() {
        let bs = [
            backend(
                1,
                "idle in transaction",
                Some(9000.0),
                Some(8000.0),
                Some(("Client", "ClientRead")),
            ),
            backend(
                2,
                "active",
                Some(7000.0),
                Some(7000.0),
                Some(("Lock", "transactionid")),
            ),
            backend(
                3,
                "active",
                Some(6000.0),
                Some(6000.0),
                Some(("Lock", "tuple")),
            ),
            backend(4, "active", Some(10.0), Some(10.0), Some(("Lock", "tuple"))),
            backend(
                5,
                "idle",
                None,
                Some(100000.0),
                Some(("Client", "ClientRead")),
            ),
        ];
        let s = Stats::from_backends(&bs, 3, Duration::from_secs(5));
        assert_eq!(s.active_transactions, 4);
        assert_eq!(s.longest_transaction, Some((1, 9000.0)));
        assert_eq!(
            s.idle_in_transaction,
            vec![IdleInTransaction {
                pid: 1,
                duration_ms: 8000.0,
                xact_age_ms: Some(9000.0)
            }]
        );
        assert_eq!(
            s.long_queries.iter().map(|q| q.pid).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(s.deadlocks, 3);
        let w: Vec<(&str, &str, u32)> = s
            .lock_waits
            .iter()
            .map(|w| (w.wait_event_type.as_str(), w.wait_event.as_str(), w.count))
            .collect();
        assert_eq!(w, vec![("Lock", "tuple", 2), ("Lock", "transactionid", 1)]);
    }

    #[test]
    fn warnings_are_rate_limited() {
        let r = RateLimited::new(Duration::from_secs(3600));
        r.warn(&"one");
        r.warn(&"two");
        r.warn(&"three");
        assert_eq!(r.held.load(Ordering::Relaxed), 2);
    }
}
