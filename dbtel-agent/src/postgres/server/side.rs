//! The server side of the agent's loop: traced postmasters, what their
//! backends do (backend::Tracker), catalog lookups made the moment a lock wait
//! starts, and lock-wait spans held until those answers are in.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry::KeyValue;
use tokio::sync::{mpsc, watch, Notify};

use crate::{
    events::{Origin, ServerHit},
    host::pidns::PidNamespaces,
    pipeline::span::{self, IdGen, Ids},
    pipeline::{dbspan::DbSpan, sql::FactsCache},
    postgres::catalog::{self, Catalog, CatalogConfig, Snapshot},
    postgres::libpq::reconstruct::Reconstructor,
    postgres::server::backend::{ClientIds, LockTag, Notice, ServerSpan, Tracker},
    postgres::server::spans::{self, BackendDesc, WaitFacts},
    postgres::server::target::ServerTarget,
};

/// How long a backend sends nothing after a statement completed before the
/// statement is closed without its (unsent) idle report: longer than any
/// gap between EndCommand and the records of a Sync's commit.
const QUIET_AFTER_COMPLETION: Duration = Duration::from_millis(500);

/// What the traced client side knows of the connection a backend serves.
fn client_ids(recon: &Reconstructor, pids: &PidNamespaces, pid: u32) -> Option<ClientIds> {
    recon.client_context(pids.ns(pid)).map(|c| ClientIds {
        query: c.query,
        txn: c.txn,
    })
}

#[derive(Debug, Clone)]
pub struct CatalogSettings {
    /// libpq-style `key=value` file; else the PG* environment variables.
    pub config_file: Option<PathBuf>,
    pub period: Duration,
    /// Off: no catalog connection at all (spans lack names and blockers).
    pub enabled: bool,
}

enum Lookup {
    Pending,
    Known(Arc<BackendDesc>),
    /// Gone before the catalog saw it.
    Unknown,
}

/// A traced server's catalog connection and the poller's latest snapshot.
struct ServerCatalog {
    catalog: Arc<Catalog>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
}

/// Where the catalog tasks answer. A lock wait's answers also wake the loop:
/// its blockers must be asked while it still waits, not at the ring's next
/// tick (100 ms). Backends' answers wait for the tick (one per connection).
#[derive(Clone)]
struct ReplyTx {
    tx: mpsc::UnboundedSender<Reply>,
    wake: Arc<Notify>,
}

impl ReplyTx {
    fn send(&self, r: Reply) {
        let wake = !matches!(r, Reply::Backend { .. });
        if self.tx.send(r).is_ok() && wake {
            self.wake.notify_one();
        }
    }
}

enum Reply {
    /// A wait's grace period is over: look its blockers up if it still waits.
    Due {
        postmaster: u32,
        wait: Ids,
        pid: u32,
        tag: LockTag,
        /// When the wait was seen (the debug log says how long each step took).
        seen: std::time::Instant,
    },
    Wait {
        postmaster: u32,
        wait: u64,
        facts: WaitFacts,
        seen: std::time::Instant,
    },
    Backend {
        pid: u32,
        info: Option<catalog::Backend>,
    },
}

/// Backends looked up, by PID: `None` while the question is out. Bounded by
/// starting over (a lookup is one indexed catalog query).
const MAX_BACKENDS: usize = 10_000;

pub struct ServerSide {
    pub tracker: Tracker,
    /// Postmaster PID → target.
    pub servers: BTreeMap<u32, ServerTarget>,
    settings: CatalogSettings,
    /// By postmaster: each server reached with the settings it was given
    /// (see [`ServerSide::add_server`]).
    catalogs: BTreeMap<u32, ServerCatalog>,
    tx: ReplyTx,
    rx: mpsc::UnboundedReceiver<Reply>,
    /// Catalog answers by wait span id; `None` while the question is out.
    facts: HashMap<u64, Option<WaitFacts>>,
    lookups_in_flight: usize,
    /// Backends gone whose catalog answer is still needed by held spans.
    exited: Vec<u32>,
    /// (backend, transaction start in s) already warned about.
    idle_warned: std::collections::HashSet<(u32, i32, u64)>,
    /// Links to the blockers' transactions, by wait span id.
    links: HashMap<u64, Vec<span::Link>>,
    /// Who each backend serves (pg_stat_activity), looked up at first sight:
    /// the poller alone misses short sessions.
    backends: crate::FastMap<u32, Lookup>,
    /// Who each session serves as its backend said at connection (database,
    /// user, application name): for sessions gone before the catalog saw them.
    sessions: HashMap<u32, Arc<BackendDesc>>,
    /// Finished spans whose catalog answers are not in yet.
    held: Vec<(ServerSpan, Instant)>,
    /// The other buffer of the flush (the two swap; both keep their capacity).
    held_spare: Vec<(ServerSpan, Instant)>,
    spans: Vec<ServerSpan>,
    notices: Vec<Notice>,
    /// What of query texts goes into events (deadlock reports).
    text: crate::pipeline::sql::Text,
    /// Backends' PIDs as their server knows them (a server in a container).
    pids: PidNamespaces,
}

impl ServerSide {
    pub fn new(settings: CatalogSettings, text: crate::pipeline::sql::Text) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        ServerSide {
            tracker: Tracker::new(IdGen::random()),
            servers: BTreeMap::new(),
            settings,
            catalogs: BTreeMap::new(),
            tx: ReplyTx {
                tx,
                wake: Arc::new(Notify::new()),
            },
            rx,
            facts: HashMap::new(),
            links: HashMap::new(),
            lookups_in_flight: 0,
            exited: Vec::new(),
            idle_warned: Default::default(),
            backends: Default::default(),
            sessions: HashMap::new(),
            held: Vec::new(),
            held_spare: Vec::new(),
            spans: Vec::new(),
            notices: Vec::new(),
            text,
            pids: PidNamespaces::default(),
        }
    }

    /// Starts a catalog client for the server (connection settings from the
    /// environment or the file, defaults from the server's postmaster.pid).
    /// Settings given explicitly (a file, PGHOST, PGPORT, PGSERVICE) reach
    /// one server: the first traced; without them each server is reached
    /// through its own socket.
    pub async fn add_server(&mut self, t: ServerTarget) -> anyhow::Result<()> {
        let explicit = self.settings.config_file.is_some()
            || ["PGHOST", "PGPORT", "PGSERVICE"]
                .iter()
                .any(|v| std::env::var_os(v).is_some());
        if self.settings.enabled
            && (self.catalogs.is_empty() || !explicit)
            && !self.catalogs.contains_key(&t.postmaster)
        {
            let defaults = catalog::server_defaults(t.postmaster);
            let cfg = CatalogConfig::load(self.settings.config_file.as_deref(), defaults)?;
            let cat = Arc::new(Catalog::new(cfg));
            match tokio::time::timeout(Duration::from_secs(5), cat.check()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!("catalog unavailable ({e}); lock waits will lack relation names and blockers until it answers"),
                Err(_) => log::warn!("catalog: no answer within 5 s; lock waits will lack relation names and blockers until it answers"),
            }
            self.seed_backends(t.postmaster, &cat).await;
            let (_task, snapshot) = catalog::spawn_poller(cat.clone(), self.settings.period);
            self.catalogs.insert(
                t.postmaster,
                ServerCatalog {
                    catalog: cat,
                    snapshot,
                },
            );
        }
        if t.sites
            .iter()
            .any(|s| s.spec.probe == dbtel_common::site::ERRSTART)
        {
            self.tracker.errors_by_level = true;
        }
        if t.sites
            .iter()
            .any(|s| s.spec.probe == dbtel_common::site::COMMAND_DONE)
        {
            self.tracker.completes_statements(t.postmaster);
        }
        self.servers.insert(t.postmaster, t);
        Ok(())
    }

    /// The backends connected before the attach, known from the start: a
    /// session that runs a few statements and leaves could be gone before a
    /// lookup at its first statement answered (new ones say who they are as
    /// they start: site::SESSION_*).
    async fn seed_backends(&mut self, postmaster: u32, cat: &Catalog) {
        let list = match tokio::time::timeout(Duration::from_secs(2), cat.backends()).await {
            Ok(Ok(list)) => list,
            Ok(Err(e)) => return cat.warn_rate_limited(&e),
            Err(_) => return log::debug!("catalog: backends at attach: no answer within 2 s"),
        };
        self.learn_processes(postmaster);
        for b in list.into_iter().take(MAX_BACKENDS) {
            if !self.pids.knows(postmaster, b.pid) {
                continue; // gone since, or not this server's
            }
            let host = self.pids.host(postmaster, b.pid);
            self.backends
                .insert(host, Lookup::Known(Arc::new(BackendDesc::new(b))));
        }
    }

    /// Every process of the server, in both directions of the PID map.
    fn learn_processes(&mut self, postmaster: u32) {
        for pid in crate::postgres::server::target::processes_of(postmaster) {
            self.pids.learn(pid, postmaster);
        }
    }

    fn catalog(&self, postmaster: u32) -> Option<Arc<Catalog>> {
        self.catalogs.get(&postmaster).map(|c| c.catalog.clone())
    }

    /// The catalogs' own sessions: their backends must not be traced
    /// (postmaster, PID as the server knows it).
    fn own_backends(&self) -> Vec<(u32, i32)> {
        self.catalogs
            .iter()
            .flat_map(|(pm, c)| c.catalog.own_pids().into_iter().map(move |ns| (*pm, ns)))
            .collect()
    }

    /// Open transactions of client backends per database, from each traced
    /// server's latest catalog snapshot (the catalog's own sessions left out).
    pub fn open_transactions(&self, out: &mut Vec<(String, u64)>) {
        let own = self.own_backends();
        for (pm, c) in &self.catalogs {
            let snap = c.snapshot.borrow().clone();
            for (pid, b) in &snap.backends {
                if b.in_transaction()
                    && b.backend_type == "client backend"
                    && !own.contains(&(*pm, *pid))
                {
                    let db = b.datname.clone().unwrap_or_default();
                    match out.iter_mut().find(|(d, _)| *d == db) {
                        Some(e) => e.1 += 1,
                        None => out.push((db, 1)),
                    }
                }
            }
        }
    }

    /// Whether a catalog watches a traced server (its snapshot is the
    /// source of open transactions).
    pub fn has_catalog(&self) -> bool {
        !self.catalogs.is_empty()
    }

    /// The catalogs' own backends by host PID (learnt if they are new).
    pub fn own_backends_on_host(&mut self) -> Vec<u32> {
        let own = self.own_backends();
        for (server, ns) in &own {
            if !self.pids.knows(*server, *ns) {
                self.learn_processes(*server);
            }
        }
        own.into_iter()
            .map(|(server, ns)| self.pids.host(server, ns))
            .collect()
    }

    pub fn on_hit(&mut self, mut hit: ServerHit, recon: &mut Reconstructor) {
        self.pids.learn(hit.at.pid, hit.at.conn as u32);
        // The statement's completion, held back by the kernel side, came first.
        if let Some(held) = hit.held.take() {
            self.track(ServerHit::completion(hit.at, held), recon);
        }
        if matches!(
            hit.site,
            dbtel_common::site::SESSION_DATABASE
                | dbtel_common::site::SESSION_USER
                | dbtel_common::site::APPLICATION_NAME
        ) {
            return self.on_session(&hit);
        }
        if hit.site == dbtel_common::site::STATEMENT_STATUS && hit.text.is_some() {
            self.look_up(hit.at.conn as u32, hit.at.pid);
        }
        self.track(hit, recon);
    }

    /// A statement's hit (its backend's PIDs learnt) through the tracker.
    fn track(&mut self, hit: ServerHit, recon: &mut Reconstructor) {
        // The client's query this statement is (a pipeline sends several ahead).
        if let Some(after_error) = self.tracker.begins_statement(&hit) {
            recon.server_began(self.pids.ns(hit.at.pid), after_error);
        }
        let pids = &self.pids;
        let client = |pid: u32| client_ids(recon, pids, pid);
        self.tracker
            .on_hit(hit, &client, &mut self.spans, &mut self.notices);
        // Acted on at once: the next hit may close the wait these refer to.
        let notices = std::mem::take(&mut self.notices);
        for n in notices {
            match n {
                Notice::WaitStarted {
                    pid,
                    postmaster,
                    wait,
                    under_client,
                    tag,
                    ts_ns,
                } => {
                    if under_client {
                        for name in ["contention_detected", "lock_contention_detected"] {
                            recon.annotate(
                                self.pids.ns(pid),
                                span::Event {
                                    name,
                                    ts_ns,
                                    attributes: lock_attributes(&tag),
                                },
                            );
                        }
                    }
                    self.ask(postmaster, pid, wait, tag);
                }
                Notice::Deadlock {
                    pid,
                    postmaster,
                    wait,
                    ts_ns,
                } => self.deadlock(postmaster, pid, wait, ts_ns, recon),
            }
        }
    }

    pub fn on_exit(&mut self, at: Origin) {
        self.tracker.exited(at.pid, at.ts_ns, &mut self.spans);
        // Forgotten once its spans are out, so that a reused PID is asked anew.
        self.exited.push(at.pid);
    }

    /// Notified when a lock wait's reply (due, or answered) comes in: the
    /// loop then takes it. Backends' answers do not notify (see ReplyTx).
    pub fn replies_waiting(&self) -> Arc<Notify> {
        self.tx.wake.clone()
    }

    /// Catalog answers that came in since the last call.
    pub fn take_replies(&mut self, recon: &Reconstructor) {
        while let Ok(r) = self.rx.try_recv() {
            match r {
                Reply::Due {
                    postmaster,
                    wait,
                    pid,
                    tag,
                    seen,
                } => {
                    if self.facts.contains_key(&wait.span_id) {
                        self.look_up_wait(postmaster, pid, wait, tag, seen);
                    }
                }
                // An answer that came after its wait was exported has nowhere to go.
                Reply::Wait { wait, .. } if !self.facts.contains_key(&wait) => {
                    self.lookups_in_flight -= 1
                }
                Reply::Wait {
                    postmaster,
                    wait,
                    facts,
                    seen,
                } => {
                    self.lookups_in_flight -= 1;
                    log::debug!(
                        "lock wait {wait:x}: catalog answer taken {} ms after the wait was seen ({} blockers)",
                        seen.elapsed().as_millis(),
                        facts.blockers.len()
                    );
                    let links = self.blocker_links(postmaster, &facts, recon);
                    self.links.insert(wait, links);
                    self.facts.insert(wait, Some(facts));
                }
                Reply::Backend { pid, info } => {
                    // Not found (gone already): the poller's snapshot may still know it.
                    self.backends.insert(
                        pid,
                        info.map_or(Lookup::Unknown, |b| {
                            Lookup::Known(Arc::new(BackendDesc::new(b)))
                        }),
                    );
                }
            }
        }
    }

    /// Hands over finished spans (to `out`) once the catalog's answers about
    /// them are in (or they have waited long enough).
    pub fn flush(&mut self, cache: &mut FactsCache, force: bool, out: &mut Vec<DbSpan>) {
        let now = Instant::now();
        // The catalog's own sessions (a reconnect is traced until housekeeping
        // untraces it; a new backend's spans are held until it is looked up).
        let own = self.own_backends();
        out.reserve(self.held.len() + self.spans.len());
        // Held ones first (older), then the new ones, each moved once; the
        // buffers swap and keep their capacity (regrown from nothing at each
        // flush, they moved every span at each doubling).
        let mut pending = std::mem::replace(&mut self.held, std::mem::take(&mut self.held_spare));
        for (s, since) in pending.drain(..) {
            self.pass(s, since, now, force, &own, cache, out);
        }
        self.held_spare = pending;
        let mut new = std::mem::take(&mut self.spans);
        for s in new.drain(..) {
            self.pass(s, now, now, force, &own, cache, out);
        }
        self.spans = new;
        if self.exited.is_empty() {
            return;
        }
        let held: std::collections::HashSet<u32> = self.held.iter().map(|(s, _)| s.pid()).collect();
        let (backends, sessions, pids) = (&mut self.backends, &mut self.sessions, &mut self.pids);
        self.exited.retain(|pid| {
            let keep = held.contains(pid) || matches!(backends.get(pid), Some(Lookup::Pending));
            if !keep {
                backends.remove(pid);
                sessions.remove(pid);
                pids.forget(*pid);
            }
            keep
        });
    }

    /// One finished span: made (to `out`), held for the catalog, or dropped
    /// (the catalog's own sessions, parallel workers' copies).
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &mut self,
        s: ServerSpan,
        since: Instant,
        now: Instant,
        force: bool,
        own: &[(u32, i32)],
        cache: &mut FactsCache,
        out: &mut Vec<DbSpan>,
    ) {
        let (pm, pid) = (s.postmaster(), s.pid());
        // Borrowed where known: no reference count taken per span.
        let lookup = self.backends.get(&pid);
        let pending = matches!(lookup, Some(Lookup::Pending));
        let known = match lookup {
            Some(Lookup::Known(b)) => Some(&**b),
            _ => None,
        };
        let unlooked = match known {
            Some(_) => None,
            None => self.unlooked_info(pm, pid),
        };
        let info = known.or(unlooked.as_deref());
        // Parallel workers report their leader's statement and never go
        // idle: the leader's span is the one that counts.
        let ns = self.pids.ns(pid);
        if own.contains(&(pm, ns)) || info.is_some_and(|b| b.info.backend_type == "parallel worker")
        {
            if let ServerSpan::Wait(w) = &s {
                self.facts.remove(&w.ids.span_id);
                self.links.remove(&w.ids.span_id);
            }
            return;
        }
        let waiting = pending
            || matches!(&s, ServerSpan::Wait(w) if matches!(self.facts.get(&w.ids.span_id), Some(None)));
        if waiting && !force && now.duration_since(since) < crate::pipeline::FACTS_DEADLINE {
            self.held.push((s, since));
            return;
        }
        out.push(match s {
            ServerSpan::Query(q) => spans::query_span(q, ns, cache, info),
            ServerSpan::Txn(t) => spans::txn_span(t, ns, info),
            ServerSpan::Wait(w) => {
                let id = w.ids.span_id;
                let facts = self.facts.remove(&id).flatten().unwrap_or_default();
                let links = self.links.remove(&id).unwrap_or_default();
                spans::wait_span(w, ns, &facts, cache, links)
            }
        });
    }

    /// Completed statements of backends quiet for QUIET_AFTER_COMPLETION are
    /// closed (their idle report is not sent: see dbtel_common::repeat).
    /// `held`: the completion the kernel side holds for a backend.
    pub fn close_quiet(
        &mut self,
        now_ns: u64,
        recon: &Reconstructor,
        held: &mut dyn FnMut(u32) -> Option<dbtel_common::Held>,
    ) {
        let pids = &self.pids;
        let client = |pid: u32| client_ids(recon, pids, pid);
        let since = now_ns.saturating_sub(QUIET_AFTER_COMPLETION.as_nanos() as u64);
        self.tracker
            .close_quiet(since, &client, held, &mut self.spans);
    }

    /// Backends whose exit record was lost (ring buffer full): close their
    /// state rather than hand it to a process that reuses the PID.
    pub fn sweep_dead(&mut self, now_ns: u64) {
        for pid in self.tracker.pids() {
            if !crate::host::process::process_exists(pid) {
                self.tracker.exited(pid, now_ns, &mut self.spans);
                self.exited.push(pid);
            }
        }
    }

    /// A postmaster is gone (or no longer traced): close its backends' spans.
    pub fn server_gone(&mut self, postmaster: u32, ts_ns: u64, exited: bool) {
        self.tracker
            .server_gone(postmaster, ts_ns, exited, &mut self.spans);
        self.servers.remove(&postmaster);
    }

    /// Closes a gone server's catalog connection, once its last spans are out
    /// (its poller stops with it; a restarted server gets a new one).
    pub fn drop_catalog(&mut self, postmaster: u32) {
        self.catalogs.remove(&postmaster);
    }
}

fn lock_attributes(tag: &LockTag) -> Vec<KeyValue> {
    vec![
        KeyValue::new("db.postgresql.lock.type", tag.type_name()),
        KeyValue::new("db.postgresql.lock.mode", tag.mode_name()),
    ]
}

#[path = "side_waits.rs"]
mod waits;

#[path = "side_backends.rs"]
mod backends;
#[path = "side_idle.rs"]
mod idle;
