//! The catalog connection to traced MariaDB servers: a thread of its own
//! (a current-thread tokio runtime driving mysql_async), so the main loop
//! never waits on a server. It is asked about lock waits as they begin;
//! after a short grace (most waits end sooner) it reads one snapshot of
//! the server's lock tables for every wait asked about meanwhile, and
//! answers for those still on.
//!
//! Its statements start with [`MARKER`]: the server side drops the spans of
//! the connection that sends them, so the agent never traces itself.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use mysql_async::{prelude::*, Conn};
use tokio::sync::mpsc;

use super::{
    blockers::{Ask, Snapshot, WaitFacts},
    config::MysqlCatalogConfig,
    queries::{self, MARKER},
};
use crate::mysql::server::{reconstruct::Session, spans::LockType};

/// How long a wait lasts before its blockers are looked up (as PostgreSQL's).
const WAIT_GRACE: Duration = Duration::from_millis(20);
/// Waits asked about and not yet looked up; past it, asks are dropped (counted).
const PENDING_MAX: usize = 4096;
/// After a failed connection, the next attempt waits this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// A snapshot query taking longer is abandoned (the server is stuck).
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How the agent reaches traced servers' catalogs.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Off: no connection (lock waits without blockers).
    pub enabled: bool,
    /// A MySQL option file (--catalog-config); else ~/.my.cnf.
    pub file: Option<PathBuf>,
}

enum Msg {
    Server(u32),
    Ask(Ask),
    /// Who connection (server, id) is.
    Session(u32, u64),
}

/// What the worker tells the main loop.
#[derive(Debug)]
pub enum Reply {
    /// One per ask: None when the wait was over (or the catalog unreachable).
    Blocked { ask: Ask, facts: Option<WaitFacts> },
    /// Asks dropped because too many were pending.
    Dropped(u64),
    /// A server's connection attempt ended (ok or not: said in the log).
    Connected { server: u32 },
    /// One per session asked for: None when it is gone (or no catalog).
    Session {
        server: u32,
        connection: u64,
        session: Option<Session>,
    },
}

/// The main loop's handle on the worker.
pub struct Catalog {
    tx: mpsc::UnboundedSender<Msg>,
    rx: std_mpsc::Receiver<Reply>,
    /// Replies received while waiting for a connection.
    backlog: Vec<Reply>,
    /// Asks sent whose round has not answered yet (replies are looked for
    /// only while some are).
    pub outstanding: usize,
}

impl Catalog {
    pub fn start(settings: Settings) -> std::io::Result<Catalog> {
        let (tx, msgs) = mpsc::unbounded_channel();
        let (replies, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("dbtel-mysql-catalog".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime");
                rt.block_on(run(settings, msgs, replies));
            })?;
        Ok(Catalog {
            tx,
            rx,
            backlog: Vec::new(),
            outstanding: 0,
        })
    }

    /// A server is traced: its catalog connects now, and the caller waits
    /// (at most `timeout`) so that sessions beginning from now on are
    /// looked up while they last.
    pub fn server(&mut self, pid: u32, timeout: Duration) {
        if self.tx.send(Msg::Server(pid)).is_err() {
            return;
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(Reply::Connected { server }) if server == pid => return,
                Ok(Reply::Connected { .. }) => {}
                Ok(other) => self.backlog.push(other),
                Err(_) => return,
            }
        }
    }

    pub fn ask(&mut self, ask: Ask) {
        if self.tx.send(Msg::Ask(ask)).is_ok() {
            self.outstanding += 1;
        }
    }

    pub fn session(&mut self, server: u32, connection: u64) {
        if self.tx.send(Msg::Session(server, connection)).is_ok() {
            self.outstanding += 1;
        }
    }

    /// Replies so far (none looked for when nothing is outstanding).
    pub fn replies(&mut self) -> Vec<Reply> {
        if self.outstanding == 0 && self.backlog.is_empty() {
            return Vec::new();
        }
        let mut got = std::mem::take(&mut self.backlog);
        got.extend(
            self.rx
                .try_iter()
                .filter(|r| !matches!(r, Reply::Connected { .. })),
        );
        for r in &got {
            let answered = match r {
                Reply::Blocked { .. } | Reply::Session { .. } => 1,
                Reply::Dropped(n) => *n as usize,
                Reply::Connected { .. } => 0,
            };
            self.outstanding = self.outstanding.saturating_sub(answered);
        }
        got
    }
}

struct Server {
    conn: Option<Conn>,
    failed_at: Option<Instant>,
    /// METADATA_LOCK_INFO missing (said once).
    no_mdl_table: bool,
}

/// What the worker has been asked and not yet answered.
#[derive(Default)]
struct Inbox {
    /// New servers to connect to.
    servers: Vec<u32>,
    waits: Vec<Ask>,
    sessions: Vec<(u32, u64)>,
    dropped: u64,
}

impl Inbox {
    fn put(&mut self, m: Msg) {
        match m {
            Msg::Server(pid) => self.servers.push(pid),
            Msg::Ask(a) if self.waits.len() < PENDING_MAX => self.waits.push(a),
            Msg::Ask(_) => self.dropped += 1,
            Msg::Session(server, id) => self.sessions.push((server, id)),
        }
    }

    /// Everything sent meanwhile.
    fn drain(&mut self, msgs: &mut mpsc::UnboundedReceiver<Msg>) {
        while let Ok(m) = msgs.try_recv() {
            self.put(m);
        }
    }
}

async fn run(
    settings: Settings,
    mut msgs: mpsc::UnboundedReceiver<Msg>,
    replies: std_mpsc::Sender<Reply>,
) {
    let mut servers: HashMap<u32, Server> = HashMap::new();
    let mut inbox = Inbox::default();
    while let Some(m) = msgs.recv().await {
        inbox.put(m);
        inbox.drain(&mut msgs);
        let new: Vec<u32> = inbox.servers.drain(..).collect();
        for &pid in &new {
            servers.entry(pid).or_insert(Server {
                conn: None,
                failed_at: None,
                no_mdl_table: false,
            });
        }
        connect_all(&settings, &mut servers).await;
        for server in new {
            let _ = replies.send(Reply::Connected { server });
        }
        // Sessions at once: a short one may soon be gone.
        look_up_sessions(&mut servers, &mut inbox.sessions, &replies).await;
        if inbox.waits.is_empty() {
            continue;
        }
        tokio::time::sleep(WAIT_GRACE).await;
        inbox.drain(&mut msgs);
        look_up_sessions(&mut servers, &mut inbox.sessions, &replies).await;
        if inbox.dropped > 0 {
            let _ = replies.send(Reply::Dropped(std::mem::take(&mut inbox.dropped)));
        }
        round(&mut servers, &mut inbox.waits, &replies).await;
    }
    for (_, s) in servers {
        if let Some(c) = s.conn {
            let _ = c.disconnect().await;
        }
    }
}

/// Connects to every server not connected (waiting RETRY_AFTER after a failure).
async fn connect_all(settings: &Settings, servers: &mut HashMap<u32, Server>) {
    for (&pid, s) in servers.iter_mut() {
        if s.conn.is_some() || s.failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER) {
            continue;
        }
        match connect(settings, pid).await {
            Ok((conn, how)) => {
                log::info!("MariaDB server {pid}: catalog connected ({how})");
                (s.conn, s.failed_at) = (Some(conn), None);
            }
            Err(e) => {
                if s.failed_at.is_none() {
                    log::warn!("MariaDB server {pid}: no catalog connection, lock waits will not name their blockers: {e}");
                }
                s.failed_at = Some(Instant::now());
            }
        }
    }
}

/// `check`: the catalog connects and reads what blockers are found with.
pub async fn check(pid: u32, file: Option<&std::path::Path>) -> Result<String, String> {
    let settings = Settings {
        enabled: true,
        file: file.map(Into::into),
    };
    let (mut conn, how) = tokio::time::timeout(Duration::from_secs(3), connect(&settings, pid))
        .await
        .map_err(|_| "the catalog did not answer within 3 s".to_string())??;
    let got = queries::lock_snapshot(&mut conn, true, true).await;
    let _ = conn.disconnect().await;
    match got {
        Ok((_, false)) => Ok(format!("catalog reachable ({how}), lock tables readable")),
        Ok((_, true)) => Ok(format!(
            "catalog reachable ({how}); metadata lock waits will not name their blockers: {}",
            queries::NO_MDL_TABLE
        )),
        Err(e) => Err(format!("catalog {how} cannot read the lock tables: {e}")),
    }
}

async fn connect(settings: &Settings, pid: u32) -> Result<(Conn, String), String> {
    let cfg =
        MysqlCatalogConfig::for_server(pid, settings.file.as_deref()).map_err(|e| e.to_string())?;
    let how = cfg.describe();
    let mut conn = cfg.connect().await?;
    // The server it reached must be the traced one: its session runs on one of its threads.
    let q = format!(
        "{MARKER} SELECT TID FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()"
    );
    let tid: Option<u64> = conn
        .query_first(q)
        .await
        .map_err(|e| format!("{how}: {e}"))?;
    let ours = tid.is_some_and(|t| std::path::Path::new(&format!("/proc/{pid}/task/{t}")).exists());
    if !ours {
        let _ = conn.disconnect().await;
        return Err(format!("{how} reaches another server than process {pid} (set the socket in --catalog-config or ~/.my.cnf)"));
    }
    Ok((conn, how))
}

/// One snapshot per server with waits pending; an answer for each wait still on.
/// (Servers were connected, as far as they can be, at the top of the loop.)
async fn round(
    servers: &mut HashMap<u32, Server>,
    pending: &mut Vec<Ask>,
    replies: &std_mpsc::Sender<Reply>,
) {
    let asks = std::mem::take(pending);
    let mut by_server: HashMap<u32, Vec<Ask>> = HashMap::new();
    for a in asks {
        by_server.entry(a.server).or_default().push(a);
    }
    for (pid, asks) in by_server {
        let snap = match servers.get_mut(&pid) {
            Some(s) if s.conn.is_some() => {
                let mdl = asks.iter().any(|a| a.lock == LockType::Metadata);
                let innodb = asks.iter().any(|a| a.lock != LockType::Metadata);
                match tokio::time::timeout(QUERY_TIMEOUT, snapshot(s, innodb, mdl)).await {
                    Ok(Ok(snap)) => Some(snap),
                    Ok(Err(e)) => {
                        log::warn!(
                            "MariaDB server {pid}: catalog query failed (reconnecting): {e}"
                        );
                        (s.conn, s.failed_at) = (None, None);
                        None
                    }
                    Err(_) => {
                        log::warn!("MariaDB server {pid}: catalog query timed out (reconnecting)");
                        (s.conn, s.failed_at) = (None, Some(Instant::now()));
                        None
                    }
                }
            }
            _ => None,
        };
        for ask in asks {
            let facts = snap.as_ref().and_then(|s| s.facts(&ask));
            let _ = replies.send(Reply::Blocked { ask, facts });
        }
    }
}

/// Who each session asked for is, one query per server.
async fn look_up_sessions(
    servers: &mut HashMap<u32, Server>,
    asked: &mut Vec<(u32, u64)>,
    replies: &std_mpsc::Sender<Reply>,
) {
    let mut by_server: HashMap<u32, Vec<u64>> = HashMap::new();
    for (server, id) in asked.drain(..) {
        by_server.entry(server).or_default().push(id);
    }
    for (pid, ids) in by_server {
        let mut found: HashMap<u64, Session> = HashMap::new();
        if let Some(conn) = servers.get_mut(&pid).and_then(|s| s.conn.as_mut()) {
            let list: Vec<String> = ids.iter().map(u64::to_string).collect();
            let q = format!(
                "{MARKER} SELECT ID, USER, HOST, DB FROM information_schema.PROCESSLIST WHERE ID IN ({})",
                list.join(",")
            );
            type Row = (u64, Option<String>, Option<String>, Option<String>);
            match tokio::time::timeout(QUERY_TIMEOUT, conn.query::<Row, _>(q)).await {
                Ok(Ok(rows)) => {
                    for (id, user, host, db) in rows {
                        let s = Session {
                            user: user.unwrap_or_default(),
                            host: host.unwrap_or_default(),
                            db,
                            ip: None,
                        };
                        found.insert(id, s);
                    }
                }
                Ok(Err(e)) => log::debug!("MariaDB server {pid}: session lookup failed: {e}"),
                Err(_) => log::debug!("MariaDB server {pid}: session lookup timed out"),
            }
        }
        for id in ids {
            let session = found.remove(&id);
            let _ = replies.send(Reply::Session {
                server: pid,
                connection: id,
                session,
            });
        }
    }
}

async fn snapshot(s: &mut Server, innodb: bool, mdl: bool) -> Result<Snapshot, mysql_async::Error> {
    let conn = s.conn.as_mut().expect("connected");
    let (snap, mdl_missing) = queries::lock_snapshot(conn, innodb, mdl && !s.no_mdl_table).await?;
    if mdl_missing && !s.no_mdl_table {
        s.no_mdl_table = true;
        log::warn!(
            "metadata lock waits will not name their blockers: {}",
            queries::NO_MDL_TABLE
        );
    }
    Ok(snap)
}
