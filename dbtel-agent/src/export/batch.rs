//! The export path's own batching: spans are built as SpanData and handed to
//! an exporter thread a batch at a time (one channel operation per 256 spans,
//! where the SDK's BatchSpanProcessor takes one per span and preallocates its
//! whole queue for every provider, ~20 MiB at 65,536 spans).

use std::{
    sync::{
        atomic::Ordering,
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry_sdk::{
    trace::{SpanData, SpanExporter},
    Resource,
};

use crate::export::ExportStats;

/// Spans per export call (OTLP requests stay well under 4 MB).
pub const EXPORT_BATCH: usize = 2048;
/// Spans handed to the exporter thread at once.
const HANDOFF: usize = 256;
/// Batches waiting for the exporter thread (≈ 64k spans): beyond, spans are
/// dropped and counted.
const QUEUE_BATCHES: usize = 256;
/// Longest a span waits before export when traffic is light.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// How an export future is driven: tonic needs the agent's tokio runtime;
/// reqwest's blocking client must not run inside one.
#[derive(Clone)]
pub enum Driver {
    Runtime(tokio::runtime::Handle),
    Plain,
}

pub struct Pipeline {
    pending: Vec<SpanData>,
    tx: Option<SyncSender<Vec<SpanData>>>,
    thread: Option<JoinHandle<()>>,
    done: Receiver<()>,
    stats: Arc<ExportStats>,
    dropped_batches: u64,
    dropped_spans: u64,
}

impl Pipeline {
    pub fn start<E: SpanExporter + 'static>(
        mut exporter: E,
        resource: &Resource,
        driver: Driver,
        stats: Arc<ExportStats>,
    ) -> Pipeline {
        exporter.set_resource(resource);
        let (tx, rx) = mpsc::sync_channel::<Vec<SpanData>>(QUEUE_BATCHES);
        let (done_tx, done) = mpsc::channel();
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("dbtel-export".into())
            .spawn(move || {
                export_loop(&mut exporter, rx, &driver, &st);
                let _ = exporter.shutdown();
                let _ = done_tx.send(());
            })
            .expect("spawn export thread");
        Pipeline {
            pending: Vec::with_capacity(HANDOFF),
            tx: Some(tx),
            thread: Some(thread),
            done,
            stats,
            dropped_batches: 0,
            dropped_spans: 0,
        }
    }

    pub fn push(&mut self, span: SpanData) {
        self.stats.ended.fetch_add(1, Ordering::Relaxed);
        self.pending.push(span);
        if self.pending.len() >= HANDOFF {
            self.hand_off();
        }
    }

    /// Hands what is pending to the exporter thread (end of a ring-buffer drain).
    pub fn hand_off(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(HANDOFF));
        if let Some(tx) = &self.tx {
            match tx.try_send(batch) {
                Ok(()) => {}
                Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                    // Counted as lost in the export queue (ended, never exported);
                    // logged on the first drop and every 100th after, not per batch.
                    self.dropped_spans += b.len() as u64;
                    if self.dropped_batches.is_multiple_of(100) {
                        log::warn!(
                            "export queue full (collector too slow?): {} spans dropped so far",
                            self.dropped_spans
                        );
                    }
                    self.dropped_batches += 1;
                }
            }
        }
    }

    /// Sends the rest and closes the queue; the thread exports and exits.
    pub fn close(&mut self) {
        self.hand_off();
        self.tx.take();
    }

    /// True once a closed pipeline's thread has exported everything and ended
    /// (joined then): it can be dropped.
    pub fn finished(&mut self) -> bool {
        if self.thread.is_none() {
            return true;
        }
        if self.done.try_recv().is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            return true;
        }
        false
    }

    /// Closes, then waits up to `timeout` for the exporter to finish.
    pub fn shutdown(&mut self, timeout: Duration) -> bool {
        self.close();
        if self.thread.is_none() {
            return true;
        }
        let finished = self.done.recv_timeout(timeout).is_ok();
        if finished {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        finished
    }
}

fn export_loop<E: SpanExporter>(
    exporter: &mut E,
    rx: Receiver<Vec<SpanData>>,
    driver: &Driver,
    stats: &ExportStats,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(EXPORT_BATCH);
    let mut oldest: Option<Instant> = None;
    loop {
        let wait = oldest.map_or(FLUSH_EVERY, |t| FLUSH_EVERY.saturating_sub(t.elapsed()));
        let (closed, got) = match rx.recv_timeout(wait) {
            Ok(spans) => (false, Some(spans)),
            Err(RecvTimeoutError::Timeout) => (false, None),
            Err(RecvTimeoutError::Disconnected) => (true, None),
        };
        if let Some(spans) = got {
            oldest.get_or_insert_with(Instant::now);
            batch.extend(spans);
        }
        let due = oldest.is_some_and(|t| t.elapsed() >= FLUSH_EVERY);
        while batch.len() >= EXPORT_BATCH || ((due || closed) && !batch.is_empty()) {
            let rest = if batch.len() > EXPORT_BATCH {
                batch.split_off(EXPORT_BATCH)
            } else {
                Vec::new()
            };
            let out = std::mem::replace(&mut batch, rest);
            export_one(exporter, out, driver, stats);
        }
        if batch.is_empty() {
            oldest = None;
        }
        if closed {
            return;
        }
    }
}

fn export_one<E: SpanExporter>(
    exporter: &E,
    spans: Vec<SpanData>,
    driver: &Driver,
    stats: &ExportStats,
) {
    let n = spans.len() as u64;
    let result = match driver {
        Driver::Runtime(rt) => rt.block_on(exporter.export(spans)),
        Driver::Plain => futures_executor::block_on(exporter.export(spans)),
    };
    match result {
        Ok(()) => stats.exported.fetch_add(n, Ordering::Relaxed),
        Err(e) => {
            log::warn!("span export failed, {n} spans lost: {e}");
            stats.failed.fetch_add(n, Ordering::Relaxed)
        }
    };
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::SystemTime,
    };

    use opentelemetry::{
        trace::{SpanContext, SpanId, SpanKind, Status},
        InstrumentationScope,
    };
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SpanEvents, SpanLinks},
    };

    use super::*;

    /// Records batch sizes; optionally waits on a gate before each export.
    #[derive(Debug, Clone, Default)]
    struct Recorder {
        batches: Arc<Mutex<Vec<usize>>>,
        gate: Option<Arc<Mutex<()>>>,
    }

    impl SpanExporter for Recorder {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if let Some(g) = &self.gate {
                drop(g.lock().unwrap());
            }
            self.batches.lock().unwrap().push(batch.len());
            Ok(())
        }
    }

    fn span() -> SpanData {
        SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: "SELECT t".into(),
            start_time: SystemTime::UNIX_EPOCH,
            end_time: SystemTime::UNIX_EPOCH,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("test").build(),
        }
    }

    #[test]
    fn a_closed_pipeline_finishes_and_can_be_dropped() {
        let rec = Recorder::default();
        let stats = Arc::new(ExportStats::default());
        let mut p = Pipeline::start(
            rec.clone(),
            &Resource::builder_empty().build(),
            Driver::Plain,
            stats.clone(),
        );
        for _ in 0..300 {
            p.push(span());
        }
        assert!(!p.finished(), "still open");
        p.close();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !p.finished() {
            assert!(std::time::Instant::now() < deadline, "never finished");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            stats.exported.load(Ordering::Relaxed),
            300,
            "everything exported before it finished"
        );
        assert!(
            p.shutdown(Duration::from_millis(1)),
            "nothing left to wait for"
        );
    }

    #[test]
    fn everything_pushed_is_exported_in_bounded_batches() {
        let rec = Recorder::default();
        let stats = Arc::new(ExportStats::default());
        let mut p = Pipeline::start(
            rec.clone(),
            &Resource::builder_empty().build(),
            Driver::Plain,
            stats.clone(),
        );
        for _ in 0..5_000 {
            p.push(span());
        }
        assert!(p.shutdown(Duration::from_secs(10)));
        let batches = rec.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 5_000);
        assert!(batches.iter().all(|&n| n <= EXPORT_BATCH), "{batches:?}");
        assert_eq!(stats.ended.load(Ordering::Relaxed), 5_000);
        assert_eq!(stats.exported.load(Ordering::Relaxed), 5_000);
        assert_eq!(stats.unaccounted(), 0);
    }

    #[test]
    fn a_stuck_exporter_makes_drops_that_are_counted() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let rec = Recorder {
            gate: Some(gate.clone()),
            ..Default::default()
        };
        let stats = Arc::new(ExportStats::default());
        let mut p = Pipeline::start(
            rec.clone(),
            &Resource::builder_empty().build(),
            Driver::Plain,
            stats.clone(),
        );
        // Far more than the queue holds while the exporter cannot make progress.
        let n = (QUEUE_BATCHES + 20) * HANDOFF + EXPORT_BATCH * 2;
        for _ in 0..n {
            p.push(span());
        }
        p.hand_off();
        drop(held);
        assert!(p.shutdown(Duration::from_secs(10)));
        let exported = stats.exported.load(Ordering::Relaxed);
        assert_eq!(stats.ended.load(Ordering::Relaxed), n as u64);
        assert!(exported < n as u64, "some spans could not be queued");
        assert_eq!(
            stats.unaccounted(),
            n as u64 - exported,
            "every missing span is counted as lost"
        );
        assert_eq!(
            rec.batches.lock().unwrap().iter().sum::<usize>() as u64,
            exported
        );
    }
}
