//! The export path's own batching: spans are built as SpanData and handed to
//! an exporter thread a batch at a time (one channel operation per 256 spans,
//! where the SDK's BatchSpanProcessor takes one per span and preallocates its
//! whole queue for every provider, ~20 MiB at 65,536 spans).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry_sdk::{
    trace::{SpanData, SpanExporter},
    Resource,
};

/// What became of a batch handed to a sink.
#[derive(Debug)]
pub enum Delivery {
    Exported,
    /// Kept on disk for later (the spool counts it from there on).
    Spooled,
    Failed(String),
}

/// Where an export thread sends its batches: OTLP (otlp.rs), the console,
/// nothing; one try each, retries and spooling being the sink's own.
pub trait Sink: Send + 'static {
    fn set_resource(&mut self, resource: &Resource);
    fn deliver(&mut self, batch: Vec<SpanData>) -> Delivery;
    /// For a sink that takes spans encoded on the main thread (OTLP): the
    /// bytes to leave free in front of them for the request's head.
    fn head_room(&self) -> Option<usize> {
        None
    }
    /// Encoded spans (`n` of them, after `head_room` free bytes), from
    /// [`Sink::encode`].
    fn deliver_encoded(&mut self, _body: Vec<u8>, _n: usize) -> Delivery {
        Delivery::Failed("this sink takes spans, not encoded spans".into())
    }
}

/// What a pipeline hands its thread: spans, or spans already encoded (the
/// OTLP sink's: encoded where they were made, so their reference-counted
/// strings are never touched from two CPUs, and nothing big crosses over).
enum Handed {
    Spans(Vec<SpanData>),
    Encoded { body: Vec<u8>, n: usize },
}

/// An SDK SpanExporter as a sink (the console, tests): its future is driven
/// on the export thread.
pub struct Sdk<E>(pub E);

impl<E: SpanExporter + 'static> Sink for Sdk<E> {
    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }

    fn deliver(&mut self, batch: Vec<SpanData>) -> Delivery {
        match futures_executor::block_on(self.0.export(batch)) {
            Ok(()) => Delivery::Exported,
            Err(e) => Delivery::Failed(e.to_string()),
        }
    }
}

use crate::export::ExportStats;

/// Spans per export call (OTLP requests stay well under 4 MB).
pub const EXPORT_BATCH: usize = 2048;
/// Spans handed to the exporter thread at once: a whole export batch, so the
/// thread wakes once per request (at 256 its wake-ups and the main loop's
/// futex calls were ~4 % of the agent's CPU at 60k spans/s).
const HANDOFF: usize = EXPORT_BATCH;
/// Longest spans wait on the main thread for a hand-off when traffic is light.
const HANDOFF_AFTER: Duration = Duration::from_millis(50);
/// Spans waiting for the exporter thread, by default (OTEL_BSP_MAX_QUEUE_SIZE
/// overrides): beyond it, or beyond [`QUEUE_BYTES`], spans are dropped and counted.
pub const QUEUE_SPANS: usize = 65_536;
/// Bytes of span text (names, attribute keys and strings) waiting, at most.
pub const QUEUE_BYTES: usize = 32 << 20;

/// What waits in the queue (the exporter thread takes off what it receives).
#[derive(Debug, Default)]
struct Queued {
    spans: AtomicUsize,
    bytes: AtomicUsize,
}

/// A span's weight in memory: the struct, its attribute slots, its texts
/// (query texts dominate). Keys are mostly static: not counted.
fn weight(s: &SpanData) -> usize {
    let texts: usize = s
        .attributes
        .iter()
        .map(|kv| match &kv.value {
            opentelemetry::Value::String(v) => v.as_str().len(),
            _ => 0,
        })
        .sum();
    std::mem::size_of::<SpanData>()
        + s.attributes.capacity() * std::mem::size_of::<opentelemetry::KeyValue>()
        + s.events.len() * 128
        + s.name.len()
        + texts
}

/// The queue's capacity in spans: OTEL_BSP_MAX_QUEUE_SIZE, as the SDK reads it.
pub fn queue_spans(env: &dyn Fn(&str) -> Option<String>) -> usize {
    env("OTEL_BSP_MAX_QUEUE_SIZE")
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(QUEUE_SPANS)
}
/// Longest a span waits before export when traffic is light.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(500);

pub struct Pipeline {
    pending: Vec<SpanData>,
    pending_bytes: usize,
    /// When the oldest pending span was pushed.
    pending_since: Option<Instant>,
    /// With an encoding sink: its head room, and the spans encoded so far.
    head_room: Option<usize>,
    encoded: Vec<u8>,
    encoded_n: usize,
    tx: Option<Sender<(Handed, usize)>>,
    queued: Arc<Queued>,
    max_spans: usize,
    thread: Option<JoinHandle<()>>,
    done: Receiver<()>,
    stats: Arc<ExportStats>,
    /// Spans dropped for a full queue, and when that was last said.
    dropped_spans: u64,
    drops_warned: Option<(Instant, u64)>,
}

impl Pipeline {
    pub fn start<S: Sink>(mut sink: S, resource: &Resource, stats: Arc<ExportStats>) -> Pipeline {
        sink.set_resource(resource);
        let head_room = sink.head_room();
        let (tx, rx) = mpsc::channel::<(Handed, usize)>();
        let (done_tx, done) = mpsc::channel();
        let st = stats.clone();
        let queued = Arc::new(Queued::default());
        let q = queued.clone();
        let thread = std::thread::Builder::new()
            .name("dbtel-export".into())
            .spawn(move || {
                export_loop(&mut sink, rx, &q, &st);
                let _ = done_tx.send(());
            })
            .expect("spawn export thread");
        Pipeline {
            pending: Vec::new(),
            pending_bytes: 0,
            pending_since: None,
            head_room,
            encoded: Vec::new(),
            encoded_n: 0,
            tx: Some(tx),
            queued,
            max_spans: queue_spans(&|k| std::env::var(k).ok()),
            thread: Some(thread),
            done,
            stats,
            dropped_spans: 0,
            drops_warned: None,
        }
    }

    pub fn push(&mut self, span: SpanData) {
        debug_assert!(
            self.head_room.is_none(),
            "an encoding sink takes push_encoded"
        );
        self.pending_bytes += weight(&span);
        if self.pending.is_empty() {
            self.pending_since = Some(Instant::now());
            self.pending.reserve(HANDOFF);
        }
        self.pending.push(span);
        if self.pending.len() >= HANDOFF {
            self.hand_off();
        }
    }

    /// Whether spans go in encoded (push_encoded), not as SpanData (push).
    pub fn encodes(&self) -> bool {
        self.head_room.is_some()
    }

    /// One span, encoded by `write` where it was made: its strings are
    /// freed on this thread, and only bytes cross to the export thread.
    pub fn push_encoded(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let Some(room) = self.head_room else { return };
        if self.encoded_n == 0 {
            self.pending_since = Some(Instant::now());
            self.encoded.clear();
            self.encoded.resize(room, 0);
            self.encoded.reserve(HANDOFF * 640);
        }
        write(&mut self.encoded);
        self.encoded_n += 1;
        if self.encoded_n >= HANDOFF {
            self.hand_off();
        }
    }

    fn pending_n(&self) -> usize {
        self.pending.len() + self.encoded_n
    }

    /// Hands what is pending over if the oldest has waited HANDOFF_AFTER (end
    /// of a ring-buffer drain: a busy loop drains hundreds of times a second).
    pub fn hand_off_due(&mut self) {
        if self
            .pending_since
            .is_some_and(|t| t.elapsed() >= HANDOFF_AFTER)
        {
            self.hand_off();
        }
    }

    /// Hands what is pending to the exporter thread now.
    pub fn hand_off(&mut self) {
        let n = self.pending_n();
        if n == 0 {
            return;
        }
        // Counted here, not per span: an atomic add per span was one more
        // locked instruction on the hot path (and its line is the export thread's too).
        self.stats.ended.fetch_add(n as u64, Ordering::Relaxed);
        self.pending_since = None;
        let (batch, bytes) = if self.encoded_n > 0 {
            self.encoded_n = 0;
            let body = std::mem::take(&mut self.encoded);
            let bytes = body.len();
            (Handed::Encoded { body, n }, bytes)
        } else {
            let spans = std::mem::take(&mut self.pending);
            (
                Handed::Spans(spans),
                std::mem::take(&mut self.pending_bytes),
            )
        };
        let Some(tx) = &self.tx else { return };
        let spans = self.queued.spans.load(Ordering::Relaxed);
        let fits = spans + n <= self.max_spans
            && self.queued.bytes.load(Ordering::Relaxed) + bytes <= QUEUE_BYTES;
        if fits {
            self.queued.spans.fetch_add(n, Ordering::Relaxed);
            self.queued.bytes.fetch_add(bytes, Ordering::Relaxed);
            if tx.send((batch, bytes)).is_ok() {
                return;
            }
            self.queued.spans.fetch_sub(n, Ordering::Relaxed);
            self.queued.bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        // Counted as lost in the export queue (ended, never exported); said
        // at the first drop, then at most once per WARN_EVERY with the count.
        self.dropped_spans += n as u64;
        self.stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
        let since = self.drops_warned.map_or(0, |(_, at)| at);
        if self
            .drops_warned
            .is_none_or(|(t, _)| t.elapsed() >= WARN_EVERY)
        {
            log::warn!(
                "export queue full ({} spans / {} MiB, collector too slow or away?): {} spans dropped since the last warning, {} in all",
                self.max_spans,
                QUEUE_BYTES >> 20,
                self.dropped_spans - since,
                self.dropped_spans
            );
            self.drops_warned = Some((Instant::now(), self.dropped_spans));
        }
    }

    /// Spans waiting for the exporter thread (for tests and self-metrics).
    pub fn queued_spans(&self) -> usize {
        self.queued.spans.load(Ordering::Relaxed)
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

fn export_loop<S: Sink>(
    sink: &mut S,
    rx: Receiver<(Handed, usize)>,
    queued: &Queued,
    stats: &ExportStats,
) {
    let mut batch: Vec<SpanData> = Vec::new();
    // Encoded spans waiting: the body (head room first) and how many.
    let room = sink.head_room().unwrap_or(0);
    let (mut body, mut body_n) = (Vec::new(), 0usize);
    let mut oldest: Option<Instant> = None;
    let mut failures = Failures::default();
    loop {
        let wait = oldest.map_or(FLUSH_EVERY, |t| FLUSH_EVERY.saturating_sub(t.elapsed()));
        let (closed, got) = match rx.recv_timeout(wait) {
            Ok(spans) => (false, Some(spans)),
            Err(RecvTimeoutError::Timeout) => (false, None),
            Err(RecvTimeoutError::Disconnected) => (true, None),
        };
        if let Some((handed, bytes)) = got {
            let n = match &handed {
                Handed::Spans(spans) => spans.len(),
                Handed::Encoded { n, .. } => *n,
            };
            queued.spans.fetch_sub(n, Ordering::Relaxed);
            queued.bytes.fetch_sub(bytes, Ordering::Relaxed);
            oldest.get_or_insert_with(Instant::now);
            match handed {
                // Taken as it is when nothing waits: moving 2048 spans one by
                // one was a tenth of this thread.
                Handed::Spans(spans) if batch.is_empty() => batch = spans,
                Handed::Spans(spans) => batch.extend(spans),
                Handed::Encoded { body: b, n } => {
                    if body_n + n > EXPORT_BATCH {
                        deliver_body(sink, &mut body, &mut body_n, stats, &mut failures);
                    }
                    if body_n == 0 {
                        body = b;
                    } else {
                        body.extend_from_slice(&b[room..]);
                    }
                    body_n += n;
                }
            }
        }
        let mut due = oldest.is_some_and(|t| t.elapsed() >= FLUSH_EVERY);
        if body_n >= EXPORT_BATCH || ((due || closed) && body_n > 0) {
            deliver_body(sink, &mut body, &mut body_n, stats, &mut failures);
        }
        while batch.len() >= EXPORT_BATCH || ((due || closed) && !batch.is_empty()) {
            let rest = if batch.len() > EXPORT_BATCH {
                batch.split_off(EXPORT_BATCH)
            } else {
                Vec::new()
            };
            let full = batch.len() == EXPORT_BATCH;
            let out = std::mem::replace(&mut batch, rest);
            let n = out.len();
            counted(sink.deliver(out), n, stats, &mut failures);
            if full && !batch.is_empty() && !closed {
                // The rest of a full batch waits for more (no tiny request of its own).
                oldest = Some(Instant::now());
                due = false;
            }
        }
        if batch.is_empty() && body_n == 0 {
            oldest = None;
        }
        if closed {
            return;
        }
    }
}

/// Failed exports, said at most once per WARN_EVERY with what failed since.
#[derive(Default)]
struct Failures {
    warned_at: Option<Instant>,
    batches: u64,
    spans: u64,
}

const WARN_EVERY: Duration = Duration::from_secs(10);

impl Failures {
    fn failed(&mut self, n: u64, e: &dyn std::fmt::Display) {
        self.batches += 1;
        self.spans += n;
        if self.warned_at.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        if self.batches == 1 {
            log::warn!("span export failed, {n} spans lost: {e}");
        } else {
            log::warn!(
                "span export failed: {} batches ({} spans) lost in the last {} s; the last: {e}",
                self.batches,
                self.spans,
                WARN_EVERY.as_secs()
            );
        }
        (self.warned_at, self.batches, self.spans) = (Some(Instant::now()), 0, 0);
    }
}

/// Sends the encoded spans waiting (`n` of them) and counts what became of them.
fn deliver_body<S: Sink>(
    sink: &mut S,
    body: &mut Vec<u8>,
    n: &mut usize,
    stats: &ExportStats,
    failures: &mut Failures,
) {
    let d = sink.deliver_encoded(std::mem::take(body), *n);
    counted(d, std::mem::take(n), stats, failures);
}

/// Counts what became of `n` spans handed to the sink.
fn counted(d: Delivery, n: usize, stats: &ExportStats, failures: &mut Failures) {
    let n = n as u64;
    match d {
        Delivery::Exported => {
            stats.exported.fetch_add(n, Ordering::Relaxed);
        }
        Delivery::Spooled => {}
        Delivery::Failed(e) => {
            failures.failed(n, &e);
            stats.failed.fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
