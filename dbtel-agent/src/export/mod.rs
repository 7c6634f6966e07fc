//! DbSpans → OpenTelemetry spans (SpanData with explicit start and end
//! timestamps), one export pipeline per traced process (its resource names
//! that process). Every span is counted from hand-over to delivery, so losses
//! show at exit.

pub mod batch;
pub mod clock;
pub mod console;
pub mod grpc;
pub mod otlp;
pub mod retry;
pub mod spool;
pub mod transport;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use opentelemetry::{
    trace::{
        Event as OtelEvent, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    },
    InstrumentationScope, KeyValue,
};
use opentelemetry_sdk::{
    trace::{SpanData, SpanEvents, SpanLinks},
    Resource,
};

// Re-exported: everything that builds spans converts kernel times through it.
pub use crate::export::clock::Clock;
use crate::{
    export::batch::{Pipeline, Sdk},
    export::console::{Console, ConsoleFormat, TreePrinter},
    export::spool::Spool,
    export::transport::Transport,
    pipeline::dbspan::{DbSpan, Kind},
    pipeline::span,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExporterKind {
    Otlp,
    Console,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub kind: ExporterKind,
    pub protocol: Protocol,
    /// Overrides OTEL_EXPORTER_OTLP_ENDPOINT (base URL, as that variable).
    pub endpoint: Option<String>,
    /// Overrides OTEL_SERVICE_NAME; default: the traced executable's name.
    pub service_name: Option<String>,
    /// With the console exporter.
    pub console_format: ConsoleFormat,
    /// `--spool-dir` and its cap in bytes.
    pub spool: Option<(std::path::PathBuf, u64)>,
}

/// Delivery counters, shared with the export threads.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans handed to the export threads (sampled; counted at each hand-off).
    pub ended: AtomicU64,
    /// Spans the backend accepted (or the console printed).
    pub exported: AtomicU64,
    /// Spans in batches whose export failed.
    pub failed: AtomicU64,
    /// Spans waiting in the spool now (to be exported or counted as failed).
    pub spooled: AtomicU64,
    /// Spans dropped because the export queue was full (part of `unaccounted`).
    pub dropped: AtomicU64,
}

impl ExportStats {
    /// Spans handed over but neither delivered nor failed: dropped because the
    /// export queue was full, or still queued at exit.
    pub fn unaccounted(&self) -> u64 {
        let done = self.exported.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
            + self.spooled.load(Ordering::Relaxed);
        self.ended.load(Ordering::Relaxed).saturating_sub(done)
    }
}

/// What the agent knows about a traced process, for its resource.
#[derive(Debug, Clone)]
pub struct ProcessMeta {
    pub pid: u32,
    pub executable: String,
    /// `container.id`: from the process's cgroup, where a runtime named one.
    pub container_id: Option<String>,
}

impl ProcessMeta {
    /// A running process, its container read from /proc.
    pub fn of(pid: u32, executable: String) -> Self {
        let container_id = crate::host::select::facts::cgroup_of(pid)
            .as_deref()
            .and_then(crate::host::select::container_id);
        ProcessMeta {
            pid,
            executable,
            container_id,
        }
    }
}

pub struct Exporter {
    cfg: ExportConfig,
    clock: Clock,
    /// OTLP: the agent's one connection to its collector.
    transport: Option<Arc<dyn Transport>>,
    pub spool: Option<Arc<Spool>>,
    processes: crate::FastMap<u32, ProcessMeta>,
    pipelines: crate::FastMap<u32, Pipeline>,
    /// Pipelines of exited processes, still exporting.
    closing: Vec<(u32, Pipeline)>,
    scope: InstrumentationScope,
    host_name: String,
    /// Console trees: one printer for all pipelines (a trace spans processes).
    tree: Option<TreePrinter>,
    pub stats: Arc<ExportStats>,
}

/// The transport OTLP metrics go over: the metrics signal's endpoint,
/// headers, timeout and protocol (OTEL_EXPORTER_OTLP_METRICS_*, else the
/// general ones and the traces' protocol).
pub fn metrics_transport(
    protocol: Protocol,
    endpoint: Option<&str>,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<Arc<dyn Transport>> {
    use otlp::Signal;
    let protocol = match Signal::Metrics.var("PROTOCOL").as_deref() {
        Some("grpc") => Protocol::Grpc,
        Some("http/protobuf") => Protocol::HttpProtobuf,
        Some(other) => {
            anyhow::bail!("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL={other:?}: grpc or http/protobuf")
        }
        None => protocol,
    };
    Ok(match protocol {
        Protocol::Grpc => {
            let env = |k: &str| std::env::var(k).ok();
            let endpoint = endpoint
                .map(str::to_string)
                .or_else(|| env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
                .unwrap_or_else(|| {
                    grpc::endpoint(None, &|k| {
                        // The traces' own variable is not the metrics' endpoint.
                        (k != "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                            .then(|| env(k))
                            .flatten()
                    })
                });
            Arc::new(
                grpc::Grpc::new(
                    endpoint,
                    &otlp::headers_for(Signal::Metrics),
                    otlp::timeout_for(Signal::Metrics),
                    runtime,
                )?
                .for_metrics(),
            )
        }
        Protocol::HttpProtobuf => Arc::new(transport::Http::new(
            otlp::signal_url(Signal::Metrics, endpoint),
            otlp::headers_for(Signal::Metrics),
            otlp::timeout_for(Signal::Metrics),
        )),
    })
}

impl Exporter {
    /// `runtime` drives the gRPC client: exports run on threads of their own,
    /// where tonic finds no reactor otherwise.
    pub fn new(
        cfg: ExportConfig,
        clock: Clock,
        runtime: Option<tokio::runtime::Handle>,
    ) -> anyhow::Result<Self> {
        let tree = (cfg.kind == ExporterKind::Console && cfg.console_format == ConsoleFormat::Tree)
            .then(TreePrinter::start);
        let stats: Arc<ExportStats> = Arc::default();
        let transport: Option<Arc<dyn Transport>> = match (cfg.kind, cfg.protocol) {
            (ExporterKind::Otlp, Protocol::Grpc) => {
                let rt =
                    runtime.ok_or_else(|| anyhow::anyhow!("gRPC export needs a tokio runtime"))?;
                let env = |k: &str| std::env::var(k).ok();
                Some(Arc::new(grpc::Grpc::new(
                    grpc::endpoint(cfg.endpoint.as_deref(), &env),
                    &otlp::headers(),
                    otlp::timeout(),
                    rt,
                )?))
            }
            (ExporterKind::Otlp, Protocol::HttpProtobuf) => Some(Arc::new(transport::Http::new(
                otlp::traces_url(cfg.endpoint.as_deref()),
                otlp::headers(),
                otlp::timeout(),
            ))),
            _ => None,
        };
        let spool = match (&cfg.spool, &transport) {
            (Some((dir, cap)), Some(t)) => {
                let spool = Spool::open(dir, *cap, stats.clone())?;
                // Its thread runs until the agent exits (Exporter::shutdown stops it).
                spool.start_sender(t.clone());
                Some(spool)
            }
            _ => None,
        };
        Ok(Exporter {
            cfg,
            clock,
            transport,
            spool,
            processes: Default::default(),
            pipelines: Default::default(),
            closing: Vec::new(),
            scope: InstrumentationScope::builder("dbtel")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            host_name: host_name(),
            tree,
            stats,
        })
    }

    pub fn register_process(&mut self, meta: ProcessMeta) {
        self.processes.insert(meta.pid, meta);
    }

    fn resource(&self, pid: u32) -> Resource {
        // Read now rather than at attach: a command started with `--` may have
        // exec'ed since (a wrapper script running the real program).
        let exe = match crate::host::process::exe_name(pid) {
            n if n != "?" => n,
            _ => self
                .processes
                .get(&pid)
                .map(|m| m.executable.clone())
                .unwrap_or_else(|| "unknown".into()),
        };
        // Precedence: --service-name, OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES
        // (read by Resource::builder), then the traced executable's name.
        let from_env = std::env::var_os("OTEL_SERVICE_NAME").is_some()
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
        let mut b = Resource::builder().with_attributes([
            KeyValue::new("process.pid", pid as i64),
            KeyValue::new("process.executable.name", exe.clone()),
            KeyValue::new("host.name", self.host_name.clone()),
        ]);
        if let Some(id) = self
            .processes
            .get(&pid)
            .and_then(|m| m.container_id.clone())
        {
            b = b.with_attribute(KeyValue::new("container.id", id));
        }
        if let Some(name) = &self.cfg.service_name {
            b = b.with_service_name(name.clone());
        } else if !from_env {
            b = b.with_service_name(exe);
        }
        b.build()
    }

    fn start_pipeline(&self, pid: u32) -> anyhow::Result<Pipeline> {
        let resource = self.resource(pid);
        let stats = self.stats.clone();
        Ok(match &self.transport {
            Some(t) => Pipeline::start(
                otlp::OtlpExporter::new(t.clone(), self.spool.clone(), &self.scope),
                &resource,
                stats,
            ),
            // The console (`none` never starts a pipeline: see emit).
            None => Pipeline::start(
                Sdk(Console::new(self.cfg.console_format, self.tree.as_ref())),
                &resource,
                stats,
            ),
        })
    }

    /// Exports one span with its process's resource; its attribute vector
    /// (and for the console, its other parts) is taken: the span is spent.
    pub fn emit(&mut self, s: &mut DbSpan) -> anyhow::Result<()> {
        if self.cfg.kind == ExporterKind::None {
            // Built and counted, never converted: converting to the SDK's
            // SpanData for a sink that drops it made `--exporter none` cost
            // more agent CPU per span than OTLP export (0.83 s vs 0.47 s).
            self.stats.ended.fetch_add(1, Ordering::Relaxed);
            self.stats.exported.fetch_add(1, Ordering::Relaxed);
            crate::pipeline::attr_pool::give_back(std::mem::take(&mut s.attributes));
            return Ok(());
        }
        // One look-up per span: a miss (the process's first span) is rare.
        let p = match self.pipelines.get_mut(&s.pid) {
            Some(p) => p,
            None => {
                let p = self.start_pipeline(s.pid)?;
                self.pipelines.entry(s.pid).or_insert(p)
            }
        };
        if p.encodes() {
            let clock = &self.clock;
            p.push_encoded(|b| otlp::span_field(b, s, clock));
            crate::pipeline::attr_pool::give_back(std::mem::take(&mut s.attributes));
        } else {
            p.push(span_data(s, &self.clock, &self.scope));
        }
        Ok(())
    }

    /// The process is gone: send its last spans and let its export thread
    /// finish in the background (waited for at shutdown).
    pub fn process_gone(&mut self, pid: u32) {
        self.processes.remove(&pid);
        if let Some(mut p) = self.pipelines.remove(&pid) {
            p.close();
            self.closing.push((pid, p));
        }
        // Those done are dropped: with --all, processes come and go all day.
        self.closing.retain_mut(|(_, p)| !p.finished());
    }

    /// Hands pending spans that waited long enough to their export threads
    /// (after each ring-buffer drain).
    pub fn flush(&mut self) {
        for p in self.pipelines.values_mut() {
            p.hand_off_due();
        }
    }

    /// Hands every pending span to its export thread now.
    pub fn flush_now(&mut self) {
        for p in self.pipelines.values_mut() {
            p.hand_off();
        }
    }

    /// Exports everything handed over and waits for delivery (bounded).
    pub fn shutdown(&mut self) {
        retry::STOPPING.store(true, std::sync::atomic::Ordering::Relaxed);
        let all: Vec<(u32, Pipeline)> = self
            .pipelines
            .drain()
            .chain(self.closing.drain(..))
            .collect();
        for (pid, mut p) in all {
            // Long enough to drain a full queue to a slow collector; what is
            // still queued after that is counted as lost.
            if !p.shutdown(Duration::from_secs(60)) {
                log::warn!("exporting spans of process {pid}: timed out");
            }
        }
        if let Some(spool) = &self.spool {
            // Sent while the collector takes it; else kept for the next run.
            spool.finish(Duration::from_secs(60));
        }
        if let Some(t) = self.tree.as_mut() {
            t.finish();
        }
    }
}

/// A DbSpan as the SDK's SpanData (for the console and SDK exporters).
pub fn span_data(s: &mut DbSpan, clock: &Clock, scope: &InstrumentationScope) -> SpanData {
    let kind = match s.kind {
        Kind::Client => SpanKind::Client,
        Kind::Server => SpanKind::Server,
        Kind::Internal => SpanKind::Internal,
    };
    let mut span_events = SpanEvents::default();
    span_events.events = std::mem::take(&mut s.events)
        .into_iter()
        .map(|e| OtelEvent::new(e.name, clock.wall(e.ts_ns), e.attributes, 0))
        .collect();
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(s.ids.trace_id),
            SpanId::from(s.ids.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::from(s.ids.parent_span_id),
        parent_span_is_remote: s.ids.remote,
        span_kind: kind,
        name: String::from(s.name.clone()).into(),
        start_time: clock.wall(s.start_ns),
        end_time: clock.wall(s.end_ns),
        attributes: {
            let mut a = std::mem::take(&mut s.attributes);
            a.extend(s.blocks.kvs().cloned());
            a
        },
        dropped_attributes_count: 0,
        events: span_events,
        links: span_links(std::mem::take(&mut s.links)),
        status: s.error.take().map_or(Status::Unset, Status::error),
        instrumentation_scope: scope.clone(),
    }
}

fn span_links(links: Vec<span::Link>) -> SpanLinks {
    let mut out = SpanLinks::default();
    out.links = links
        .into_iter()
        .map(|l| {
            let cx = SpanContext::new(
                TraceId::from(l.trace_id),
                SpanId::from(l.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            );
            opentelemetry::trace::Link::new(cx, l.attributes, 0)
        })
        .collect();
    out
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{dbspan::Described, span::Ids};

    #[test]
    fn none_counts_each_span_as_exported_and_starts_no_pipeline() {
        let cfg = ExportConfig {
            kind: ExporterKind::None,
            protocol: Protocol::HttpProtobuf,
            endpoint: None,
            service_name: None,
            console_format: ConsoleFormat::Lines,
            spool: None,
        };
        let mut e = Exporter::new(cfg, Clock::fixed(0), None).unwrap();
        for _ in 0..3 {
            let mut s = DbSpan::new(
                7,
                Ids::default(),
                Kind::Server,
                (1, 2),
                Described {
                    name: "SELECT t".into(),
                    attributes: vec![KeyValue::new("db.system.name", "postgresql")],
                    blocks: Default::default(),
                    error: None,
                },
                Vec::new(),
                Vec::new(),
            );
            e.emit(&mut s).unwrap();
            assert!(
                s.attributes.is_empty(),
                "its attributes went back to the pool"
            );
        }
        assert!(e.pipelines.is_empty());
        e.shutdown();
        assert_eq!(e.stats.ended.load(Ordering::Relaxed), 3);
        assert_eq!(e.stats.exported.load(Ordering::Relaxed), 3);
        assert_eq!(e.stats.unaccounted(), 0);
    }
}
