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
const FLUSH_EVERY: Duration = Duration::from_millis(500);

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
        Pipeline { pending: Vec::with_capacity(HANDOFF), tx: Some(tx), thread: Some(thread), done, stats }
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
                    // Counted as lost in the export queue (ended, never exported).
                    log::warn!("export queue full: {} spans dropped", b.len());
                }
            }
        }
    }

    /// Sends the rest and closes the queue; the thread exports and exits.
    pub fn close(&mut self) {
        self.hand_off();
        self.tx.take();
    }

    /// Closes, then waits up to `timeout` for the exporter to finish.
    pub fn shutdown(&mut self, timeout: Duration) -> bool {
        self.close();
        let finished = self.done.recv_timeout(timeout).is_ok();
        if finished {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        finished
    }
}

fn export_loop<E: SpanExporter>(exporter: &mut E, rx: Receiver<Vec<SpanData>>, driver: &Driver, stats: &ExportStats) {
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
            let rest = if batch.len() > EXPORT_BATCH { batch.split_off(EXPORT_BATCH) } else { Vec::new() };
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

fn export_one<E: SpanExporter>(exporter: &E, spans: Vec<SpanData>, driver: &Driver, stats: &ExportStats) {
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
