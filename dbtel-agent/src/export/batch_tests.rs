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
        Sdk(rec.clone()),
        &Resource::builder_empty().build(),
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
        Sdk(rec.clone()),
        &Resource::builder_empty().build(),
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
        Sdk(rec.clone()),
        &Resource::builder_empty().build(),
        stats.clone(),
    );
    // Far more than the queue holds while the exporter cannot make progress.
    let n = QUEUE_SPANS + 20 * HANDOFF + EXPORT_BATCH * 2;
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

/// Big spans (4 KB query texts) fill the queue's bytes before its span
/// count: the queue never holds more than QUEUE_BYTES of them.
#[test]
fn the_queue_is_bounded_in_bytes_too() {
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let rec = Recorder {
        gate: Some(gate.clone()),
        ..Default::default()
    };
    let stats = Arc::new(ExportStats::default());
    let mut p = Pipeline::start(
        Sdk(rec.clone()),
        &Resource::builder_empty().build(),
        stats.clone(),
    );
    let text: String = "x".repeat(4096);
    let big = || {
        let mut s = span();
        s.attributes
            .push(opentelemetry::KeyValue::new("db.query.text", text.clone()));
        s
    };
    let n = 20_000;
    let mut most = 0;
    for _ in 0..n {
        p.push(big());
        most = most.max(p.queued_spans());
    }
    p.hand_off();
    let per_span = weight(&big());
    assert!(
        most * per_span <= QUEUE_BYTES,
        "{most} spans of {per_span} bytes queued"
    );
    assert!(most < QUEUE_SPANS, "the bytes bound came first");
    drop(held);
    assert!(p.shutdown(Duration::from_secs(20)));
    let exported = stats.exported.load(Ordering::Relaxed);
    assert!(exported < n);
    assert_eq!(
        stats.unaccounted(),
        n - exported,
        "every dropped span counted"
    );
}

#[test]
fn queue_size_from_the_sdk_variable() {
    assert_eq!(queue_spans(&|_| None), QUEUE_SPANS);
    assert_eq!(
        queue_spans(&|k| (k == "OTEL_BSP_MAX_QUEUE_SIZE").then(|| "2048".into())),
        2048
    );
    assert_eq!(queue_spans(&|_| Some("0".into())), QUEUE_SPANS);
    assert_eq!(queue_spans(&|_| Some("lots".into())), QUEUE_SPANS);
}
