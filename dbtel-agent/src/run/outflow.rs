//! Where finished spans leave the engines: detectors mark them, metrics
//! count every one (before sampling), then the exporter samples and sends.
//! The agent's own figures are published from here too.

use std::sync::atomic::Ordering;

use dbtel_common::counter;

use super::{Agent, Summary};
use crate::{detect, export::Exporter, metrics::own::Own, pipeline::dbspan::DbSpan};

/// Which held spans to let go of.
#[derive(Clone, Copy)]
enum Held {
    /// Those that waited their longest by now (monotonic ns).
    Due(u64),
    /// Those of a process that is gone.
    Of(u32),
    /// All (exit).
    All,
}

/// The stages' buffers, kept from one flush to the next: spans move through
/// memory still in cache (vectors allocated per flush made each move of a
/// span between stages about twice as dear).
#[derive(Default)]
pub(super) struct Stages {
    pub ready: Vec<DbSpan>,
    /// The retracer's other buffer (when it holds spans back).
    passed: Vec<DbSpan>,
    kept: Vec<DbSpan>,
}

/// Capacity a stage buffer keeps (a burst's larger one is let go).
const KEPT_CAPACITY: usize = 4096;

/// `v` (empty) to keep for the next flush, unless a burst made it large.
fn reuse(v: Vec<DbSpan>) -> Vec<DbSpan> {
    debug_assert!(v.is_empty());
    if v.capacity() > KEPT_CAPACITY {
        Vec::new()
    } else {
        v
    }
}

impl Agent {
    /// Every finished span passes here once: the N+1 detector may hold a
    /// span until its run is over (bounded: see detect::nplusone).
    pub(super) fn hand_on(&mut self, mut ready: Vec<DbSpan>) {
        let mut moved = self.recon.take_retraces();
        moved.append(&mut self.server.tracker.retraces);
        for e in &mut self.engines {
            e.take_retraces(&mut moved);
        }
        for r in moved {
            self.retracer.learn(r);
        }
        let now = crate::export::Clock::monotonic_now_ns();
        let mut scratch = std::mem::take(&mut self.stages.passed);
        self.retracer.pass_all(&mut ready, now, &mut scratch);
        self.stages.passed = reuse(scratch);
        let mut found = Vec::new();
        self.n_plus_one.observe_all(&mut ready, &mut found);
        self.pass_on(&mut ready, &found);
        self.stages.ready = reuse(ready);
    }

    /// Periodic: BEGINs and N+1 bursts that waited long enough, traces
    /// whose root did not come, go on.
    pub(super) fn detectors_tick(&mut self, now_ns: u64) {
        self.release(Held::Due(now_ns));
    }

    /// A process is gone: what the outflow holds of it goes on now, while
    /// its export pipeline (and resource) still exists.
    pub(super) fn release_held(&mut self, pid: u32) {
        self.release(Held::Of(pid));
        self.exporter.flush_now();
    }

    /// At exit: everything the detectors hold.
    pub(super) fn detectors_flush(&mut self) {
        self.release(Held::All);
        self.exporter.flush_now();
    }

    /// What each holding stage lets go of `which` goes through the stages
    /// after it, in the outflow's order.
    fn release(&mut self, which: Held) {
        let mut parked = Vec::new();
        match which {
            Held::Due(now) => self.retracer.tick(now, &mut parked),
            Held::Of(pid) => self.retracer.release_pid(pid, &mut parked),
            Held::All => self.retracer.flush(&mut parked),
        }
        let (mut out, mut found) = (Vec::new(), Vec::new());
        for s in parked {
            self.n_plus_one.observe(s, &mut out, &mut found);
        }
        match which {
            Held::Due(now) => self.n_plus_one.tick(now, &mut out, &mut found),
            Held::Of(pid) => self.n_plus_one.end_process(pid, &mut out, &mut found),
            Held::All => self.n_plus_one.flush_all(&mut out, &mut found),
        }
        self.pass_on(&mut out, &found);
        let mut kept = Vec::new();
        match which {
            Held::Due(now) => self.gate.tick(now, &mut kept),
            Held::Of(pid) => self.gate.release_pid(pid, &mut kept),
            Held::All => self.gate.flush_all(&mut kept),
        }
        self.emit(kept);
    }

    /// `ready` is left empty.
    fn pass_on(&mut self, ready: &mut Vec<DbSpan>, found: &[crate::detect::nplusone::Detection]) {
        self.metrics.detections(found);
        self.summary.spans_made += ready.len() as u64;
        let mut slow = vec![false; ready.len()];
        if let Some(t) = self.slow_query_ns {
            for (s, flag) in ready.iter_mut().zip(&mut slow) {
                *flag = detect::slow::mark(s, t);
            }
        }
        self.metrics.record(ready, &slow);
        if self.gate.passes_all() {
            // Exported where they are: a move of each span into another
            // buffer was ~2 % of the agent.
            self.export_all(ready);
            return;
        }
        let now = crate::export::Clock::monotonic_now_ns();
        let mut kept = std::mem::take(&mut self.stages.kept);
        for span in ready.drain(..) {
            self.gate.push(span, now, &mut kept);
        }
        self.emit(kept);
    }

    /// `kept` is emptied and kept as the next flush's buffer.
    fn emit(&mut self, mut kept: Vec<DbSpan>) {
        self.export_all(&mut kept);
        self.stages.kept = reuse(kept);
    }

    fn export_all(&mut self, spans: &mut Vec<DbSpan>) {
        for span in spans.iter_mut() {
            if let Err(e) = self.exporter.emit(span) {
                self.summary.export_errors += 1;
                log::warn!("cannot export span: {e:#}");
            }
        }
        spans.clear();
    }

    /// The summary's counters as they are now (the exit sequence's are final).
    pub(super) fn refresh_summary(&mut self) {
        self.summary.server = self.server.tracker.counters;
        self.summary.kernel = self.probes.kernel_counters();
        self.summary.unmatched_results = self.recon.counters.unmatched_results;
        self.summary.incomplete = self.recon.counters.incomplete;
        let c = &self.recon.counters;
        self.summary.evicted = [
            c.evicted_connections,
            c.evicted_statements,
            c.evicted_queries,
        ];
    }

    /// Publishes the agent's own figures and the open transactions (each second).
    pub(super) fn publish_metrics(&mut self) {
        self.refresh_summary();
        self.summary.sampled_out = self.gate.counters.dropped;
        let mut own = own_of(&self.summary, &self.exporter);
        let servers = self.server.servers.keys();
        own.traced_processes =
            (self.live.len() + servers.filter(|p| !self.live.contains_key(p)).count()) as u64;
        self.metrics.set_own(own);
        let mut open: Vec<(&str, String, u64)> = Vec::new();
        if self.server.has_catalog() {
            let mut pg = Vec::new();
            self.server.open_transactions(&mut pg);
            open.extend(pg.into_iter().map(|(db, n)| ("postgresql", db, n)));
            open.push(("postgresql", String::new(), 0));
        } else if self.recon.tracks_connections() {
            open.push(("postgresql", String::new(), self.recon.open_transactions()));
        }
        let mut by_engine = Vec::new();
        for e in &self.engines {
            e.open_transactions(&mut by_engine);
        }
        open.extend(by_engine.into_iter().map(|(s, n)| (s, String::new(), n)));
        let rows: Vec<(&str, &str, u64)> =
            open.iter().map(|(s, d, n)| (*s, d.as_str(), *n)).collect();
        self.metrics.set_active_transactions(&rows);
    }
}

/// The agent's own figures from its summary and the exporter's counters:
/// what the exit summary prints and `/metrics` serves.
pub fn own_of(s: &Summary, e: &Exporter) -> Own {
    let st = &e.stats;
    let exported = st.exported.load(Ordering::Relaxed);
    let failed = st.failed.load(Ordering::Relaxed);
    let spooled = st.spooled.load(Ordering::Relaxed);
    let dropped = st.dropped.load(Ordering::Relaxed);
    let mut own = Own {
        spans_made: s.spans_made,
        spans_sampled_out: s.sampled_out,
        spans_exported: exported,
        // Spans the exporter could not even be set up for count as failed too.
        spans_failed: failed + s.export_errors,
        spans_dropped_queue_full: dropped,
        spans_queued: st.unaccounted().saturating_sub(dropped),
        spans_spooled: spooled,
        events_read: s.events,
        events_ring_buffer_full: s.kernel[counter::RINGBUF_FULL as usize],
        events_undecodable: s.decode_errors,
        results_unmatched: s.kernel[counter::RESULT_UNMATCHED as usize] + s.unmatched_results,
        mysql_returns_unmatched: s.kernel[counter::MY_RETURN_UNMATCHED as usize],
        queries_incomplete: s.incomplete,
        evicted: s.evicted,
        server_spans: [
            s.server.queries,
            s.server.lock_waits,
            s.server.deadlocks,
            s.server.incomplete,
            s.server.unexecuted,
            s.server.unmatched_completions,
            s.server.worker_echoes,
        ],
        traced_processes: 0,
        cpu_seconds: 0.0,
        rss_bytes: 0,
        max_rss_bytes: 0,
        probe_hits: s.program_runs.iter().map(|(p, n, _)| (*p, *n)).collect(),
    };
    own.read_usage();
    own
}
