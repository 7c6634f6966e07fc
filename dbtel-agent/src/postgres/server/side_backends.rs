//! Who each backend serves: what it said as its session started (database,
//! user, application name), else the catalog's answer, asked once per backend.

use std::sync::Arc;

use super::{Lookup, Reply, ServerSide, MAX_BACKENDS};
use crate::{events::ServerHit, postgres::catalog, postgres::server::spans::BackendDesc};

impl ServerSide {
    /// A backend not looked up yet: the poller's snapshot, else what it said
    /// as it started (a known backend is read from `backends` in place).
    pub(super) fn unlooked_info(&self, postmaster: u32, pid: u32) -> Option<Arc<BackendDesc>> {
        let polled = self.catalogs.get(&postmaster).and_then(|c| {
            c.snapshot
                .borrow()
                .backends
                .get(&self.pids.ns(pid))
                .cloned()
        });
        polled
            .map(|b| Arc::new(BackendDesc::new(b)))
            .or_else(|| self.sessions.get(&pid).cloned())
    }

    /// What a backend said about its session as it started (see site::SESSION_*).
    pub(super) fn on_session(&mut self, hit: &ServerHit) {
        use dbtel_common::site;
        if self.sessions.len() >= MAX_BACKENDS && !self.sessions.contains_key(&hit.at.pid) {
            return;
        }
        let pid = hit.at.pid;
        let d = self.sessions.entry(pid).or_insert_with(|| {
            Arc::new(BackendDesc::new(catalog::Backend {
                pid: self.pids.ns(pid),
                ..Default::default()
            }))
        });
        let d = Arc::make_mut(d);
        let mut b = std::mem::take(&mut d.info);
        let text = hit.text.as_deref().map(str::to_owned);
        match hit.site {
            site::SESSION_DATABASE => b.datname = text,
            site::SESSION_USER => {
                // Background workers start without a user name.
                if text.is_some() {
                    b.backend_type = "client backend".into();
                }
                b.usename = text;
            }
            _ => b.application_name = text.unwrap_or_default(),
        }
        *d = BackendDesc::new(b);
    }

    /// Asks the catalog about a backend seen for the first time.
    pub(super) fn look_up(&mut self, postmaster: u32, pid: u32) {
        // Asked for every statement: the known backend returns before any Arc is cloned.
        if self.backends.contains_key(&pid) {
            return;
        }
        let Some(cat) = self.catalog(postmaster) else {
            return;
        };
        if self.backends.len() >= MAX_BACKENDS {
            self.backends.retain(|_, v| matches!(v, Lookup::Pending));
        }
        self.backends.insert(pid, Lookup::Pending);
        let tx = self.tx.clone();
        let ns = self.pids.ns(pid);
        tokio::spawn(async move {
            let info = match cat.backend(ns).await {
                Ok(b) => b,
                Err(e) => {
                    cat.warn_rate_limited(&e);
                    None
                }
            };
            tx.send(Reply::Backend { pid, info });
        });
    }
}
