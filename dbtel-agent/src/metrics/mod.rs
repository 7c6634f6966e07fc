//! Metrics derived from every finished span, before sampling: the
//! OpenTelemetry database conventions' instruments, the names users of
//! in-process libraries query, and the agent's own figures. The main loop
//! records into a store it shares with the `/metrics` handler (one lock per
//! batch of spans, never per scrape line).

pub mod cardinality;
pub mod from_spans;
pub mod instruments;
pub mod otlp;
pub mod own;
pub mod prometheus;
pub mod recent;
pub mod store;

use std::sync::{Arc, Mutex};

use crate::pipeline::dbspan::DbSpan;
use instruments::id;
use own::Own;
use store::Store;

/// Distinct `db.query.summary` (and table) label values kept by default.
pub const DEFAULT_MAX_SUMMARIES: usize = 200;

/// What the main loop and the readers (HTTP, OTLP) share.
#[derive(Debug, Default)]
pub struct Shared {
    pub store: Mutex<Store>,
    pub own: Mutex<Own>,
    /// OTLP pushes that succeeded and failed.
    pushes: [std::sync::atomic::AtomicU64; 2],
}

impl Shared {
    pub fn pushed(&self, ok: bool) {
        self.pushes[usize::from(!ok)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// (succeeded, failed) OTLP pushes.
    pub fn pushes(&self) -> (u64, u64) {
        let get = |i: usize| self.pushes[i].load(std::sync::atomic::Ordering::Relaxed);
        (get(0), get(1))
    }

    /// The exposition text of everything now.
    pub fn prometheus_text(&self) -> String {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let own = self.own.lock().unwrap_or_else(|e| e.into_inner()).clone();
        prometheus::render(&store, &own)
    }
}

#[derive(Debug)]
pub struct Metrics {
    shared: Arc<Shared>,
    limits: from_spans::Limits,
}

impl Metrics {
    pub fn new(max_summaries: usize) -> Self {
        Metrics {
            shared: Arc::default(),
            limits: from_spans::Limits::new(max_summaries),
        }
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Records finished spans; `slow[i]` says whether `spans[i]` was slow.
    pub fn record(&mut self, spans: &[DbSpan], slow: &[bool]) {
        if spans.is_empty() {
            return;
        }
        let mut store = self.shared.store.lock().unwrap_or_else(|e| e.into_inner());
        for (s, slow) in spans.iter().zip(slow) {
            from_spans::record(s, *slow, &mut store, &mut self.limits);
        }
    }

    /// N+1 detections, counted by system and (capped) summary.
    pub fn detections(&mut self, found: &[crate::detect::nplusone::Detection]) {
        if found.is_empty() {
            return;
        }
        let mut store = self.shared.store.lock().unwrap_or_else(|e| e.into_inner());
        for d in found {
            let summary = self.limits.summary.admit(&d.summary);
            store.add(id::N_PLUS_ONE, &[&d.system, summary], 1.0);
        }
    }

    /// Open transactions now, per (db.system.name, db.namespace).
    pub fn set_active_transactions(&self, open: &[(&str, &str, u64)]) {
        let mut store = self.shared.store.lock().unwrap_or_else(|e| e.into_inner());
        store.zero_gauges(id::TXN_ACTIVE);
        let mut admitted: Vec<(&str, &str, u64)> = Vec::with_capacity(open.len());
        for &(system, ns, n) in open {
            match admitted
                .iter_mut()
                .find(|(s, x, _)| *s == system && *x == ns)
            {
                Some(a) => a.2 += n,
                None => admitted.push((system, ns, n)),
            }
        }
        for (system, ns, n) in admitted {
            store.set(id::TXN_ACTIVE, &[system, ns], n as f64);
        }
    }

    pub fn set_own(&self, own: Own) {
        *self.shared.own.lock().unwrap_or_else(|e| e.into_inner()) = own;
    }
}
