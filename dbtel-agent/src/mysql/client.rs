//! The MySQL/MariaDB client library as an engine: claims the library in a
//! process, decodes its records and turns them into spans; and the records
//! of the server sites (mariadbd), whose spans join the client's by the
//! server's connection id.

use std::{collections::HashSet, path::Path};

use dbtel_common::Kind;

use crate::{
    engine::{ClaimError, Engine, Layout, Plan},
    events::{self, DecodeError},
    pipeline::{dbspan::DbSpan, span::IdGen, sql::Text},
};

use super::{
    catalog::worker::{Catalog, Reply, Settings},
    discover,
    reconstruct::Reconstructor,
    records,
    server::errmsg::ErrorFormats,
    server::reconstruct::{ClientQuery, Tracker},
};

pub struct Client {
    recon: Reconstructor,
    server: Tracker,
    catalog: CatalogState,
}

/// How long attaching to a server waits for its catalog connection.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The catalog worker, started when the first traced server is seen.
enum CatalogState {
    Off,
    NotStarted(Settings),
    Running(Catalog, HashSet<u32>),
}

impl Client {
    pub fn new(text: Text, catalog: Settings) -> Self {
        // The server sites are placed in mariadbd only.
        let mut server = Tracker::new("mariadb", text, IdGen::random());
        server.asking = catalog.enabled;
        Client {
            recon: Reconstructor::new(text),
            server,
            catalog: if catalog.enabled {
                CatalogState::NotStarted(catalog)
            } else {
                CatalogState::Off
            },
        }
    }

    /// Deterministic identifiers, for tests.
    #[cfg(test)]
    pub fn with_seed(seed: u64, text: Text) -> Self {
        Client {
            recon: Reconstructor::with_seed(seed, text),
            server: Tracker::new("mariadb", text, IdGen::seeded(seed + 1)),
            catalog: CatalogState::Off,
        }
    }

    /// A hit from server `pid`: its catalog connects (once), the waits that
    /// began are asked about.
    fn ask_catalog(&mut self, pid: u32) {
        if let CatalogState::NotStarted(settings) = &self.catalog {
            self.catalog = match Catalog::start(settings.clone()) {
                Ok(c) => CatalogState::Running(c, HashSet::new()),
                Err(e) => {
                    log::warn!(
                        "no MariaDB catalog thread ({e}): lock waits will not name their blockers"
                    );
                    self.server.asking = false;
                    CatalogState::Off
                }
            };
        }
        let CatalogState::Running(catalog, servers) = &mut self.catalog else {
            return;
        };
        if servers.insert(pid) {
            catalog.server(pid, CONNECT_WAIT);
        }
        for ask in self.server.asks.drain(..) {
            catalog.ask(ask);
        }
        for (server, connection) in self.server.session_asks.drain(..) {
            catalog.session(server, connection);
        }
    }

    /// The catalog's answers so far, kept for their waits' spans.
    fn take_answers(&mut self, out: &mut Vec<DbSpan>) {
        let CatalogState::Running(catalog, _) = &mut self.catalog else {
            return;
        };
        for reply in catalog.replies() {
            match reply {
                Reply::Blocked {
                    ask,
                    facts: Some(f),
                } => {
                    let recon = &self.recon;
                    self.server.blocked(ask, f, &|id| recon.txn_on(id));
                }
                Reply::Blocked { facts: None, .. } => {}
                Reply::Dropped(n) => {
                    log::warn!("{n} lock waits not looked up: too many pending at once")
                }
                Reply::Session {
                    server,
                    connection,
                    session,
                } => self.server.session((server, connection), session, out),
                Reply::Connected { .. } => {}
            }
        }
    }
}

impl Engine for Client {
    fn name(&self) -> &'static str {
        "MySQL/MariaDB client library"
    }

    fn id(&self) -> dbtel_common::Engine {
        dbtel_common::Engine::Mysql
    }

    fn claim(&self, pid: u32, path: &str, host: &Path) -> Result<Option<Plan>, ClaimError> {
        // A server (mariadbd) first: it defines no client library.
        if let Some(plan) = super::server::target::claim(pid, path, host)? {
            return Ok(Some(plan));
        }
        discover::claim(pid, path, host)
    }

    fn on_record(&mut self, data: &[u8], out: &mut Vec<DbSpan>) -> Result<u32, DecodeError> {
        let (h, at) = events::header(data)?;
        if Kind::from_u16(h.kind) == Some(Kind::MyServer) {
            let hit = events::server_hit(&h, at, data)?;
            self.take_answers(out);
            // Both asked of the client side, one after the other.
            let recon = std::cell::RefCell::new(&mut self.recon);
            let mut client = |q: ClientQuery| match q {
                ClientQuery::InFlight(id) => recon.borrow().in_flight_on(id),
                ClientQuery::Prepare(id, text) => recon.borrow_mut().prepare_on(id, text),
            };
            let text = |id: u64| recon.borrow().text_on(id);
            self.server.on_hit(&hit, &mut client, &text, out);
            self.ask_catalog(at.pid);
            return Ok(at.pid);
        }
        let rec = records::decode(data)?;
        self.recon.on_record(rec, out);
        Ok(at.pid)
    }

    /// A server traced: its catalog connects now, before its first wait or session.
    fn attached(&mut self, plan: &Plan) {
        if matches!(plan.layout, Layout::Sites(_)) {
            match ErrorFormats::of_server(plan.pid) {
                Ok(f) => self.server.set_formats(plan.pid, f),
                Err(e) => log::warn!(
                    "MariaDB server {}: errors will carry their number only: {e}",
                    plan.pid
                ),
            }
            self.ask_catalog(plan.pid);
        }
    }

    fn tick(&mut self, now_ns: u64, out: &mut Vec<DbSpan>) {
        self.take_answers(out);
        self.server.release_held(now_ns, out);
        self.recon.tick(now_ns, out);
    }

    fn forget(&mut self, pid: u32, ts_ns: u64, out: &mut Vec<DbSpan>) {
        self.recon.process_exited(pid, ts_ns, out);
        self.server.process_exited(pid, ts_ns, out);
    }

    fn in_flight(&self) -> usize {
        self.recon.in_flight() + self.server.in_flight()
    }

    fn take_retraces(&mut self, out: &mut Vec<crate::pipeline::txn::Retrace>) {
        out.extend(self.recon.take_retraces());
    }

    /// The server's count where one is traced (it sees every client); the
    /// clients' otherwise (their server's flavour is not known here: `mysql`).
    fn open_transactions(&self, out: &mut Vec<(&'static str, u64)>) {
        if self.server.traces_servers() {
            out.push((self.server.system(), self.server.open_transactions()));
        } else {
            if self.recon.tracks_connections() {
                out.push(("mysql", self.recon.open_transactions()));
            }
        }
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
