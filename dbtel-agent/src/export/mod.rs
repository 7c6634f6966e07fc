//! Query and transaction spans → OpenTelemetry spans (SpanData with explicit start and end
//! timestamps), one export pipeline per traced process (its resource names
//! that process). Every span is counted from hand-over to delivery, so losses
//! show at exit.

pub mod batch;
pub mod clock;
pub mod console;
pub mod otlp;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use dbtel_common::func;
use opentelemetry::{
    trace::{Event as OtelEvent, SamplingDecision, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{Config, SpanData, SpanEvents, SpanExporter, SpanLinks},
    Resource,
};

// Re-exported: everything that builds spans converts kernel times through it.
pub use crate::export::clock::Clock;
use crate::{
    export::batch::{Driver, Pipeline},
    postgres::server::backend::{LockWait, ServerQuery, ServerTxn},
    postgres::catalog,
    export::console::{Console, ConsoleFormat, TreePrinter},
    postgres::libpq::reconstruct::{ConnInfo, End, QuerySpan},
    postgres::server::spans::{self, WaitFacts},
    pipeline::span::{self, Ids},
    pipeline::sql,
    pipeline::txn::{self, TxnSpan},
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
    /// What of query texts is exported.
    pub text: sql::Text,
    /// With the console exporter.
    pub console_format: ConsoleFormat,
}

/// Delivery counters, shared with the export threads.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans handed to export (sampled).
    pub ended: AtomicU64,
    /// Spans the backend accepted (or the console printed).
    pub exported: AtomicU64,
    /// Spans in batches whose export failed.
    pub failed: AtomicU64,
}

impl ExportStats {
    /// Spans handed over but neither delivered nor failed: dropped because the
    /// export queue was full, or still queued at exit.
    pub fn unaccounted(&self) -> u64 {
        let done = self.exported.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
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
        let container_id = crate::host::select::facts::cgroup_of(pid).as_deref().and_then(crate::host::select::container_id);
        ProcessMeta { pid, executable, container_id }
    }
}

pub struct Exporter {
    cfg: ExportConfig,
    clock: Clock,
    runtime: Option<tokio::runtime::Handle>,
    processes: crate::FastMap<u32, ProcessMeta>,
    pipelines: crate::FastMap<u32, Pipeline>,
    /// Pipelines of exited processes, still exporting.
    closing: Vec<(u32, Pipeline)>,
    /// OTEL_TRACES_SAMPLER(_ARG), as the SDK reads them.
    sampling: Config,
    scope: InstrumentationScope,
    host_name: String,
    facts: sql::FactsCache,
    /// Console trees: one printer for all pipelines (a trace spans processes).
    tree: Option<TreePrinter>,
    pub stats: Arc<ExportStats>,
}

impl Exporter {
    /// `runtime` drives the gRPC client: exports run on threads of their own,
    /// where tonic finds no reactor otherwise.
    pub fn new(cfg: ExportConfig, clock: Clock, runtime: Option<tokio::runtime::Handle>) -> Self {
        let facts = sql::FactsCache::new(cfg.text, 10_000);
        let tree = (cfg.kind == ExporterKind::Console && cfg.console_format == ConsoleFormat::Tree).then(TreePrinter::start);
        Exporter {
            cfg,
            clock,
            runtime,
            processes: Default::default(),
            pipelines: Default::default(),
            closing: Vec::new(),
            sampling: Config::default(),
            scope: InstrumentationScope::builder("dbtel").with_version(env!("CARGO_PKG_VERSION")).build(),
            host_name: host_name(),
            facts,
            tree,
            stats: Arc::default(),
        }
    }

    pub fn register_process(&mut self, meta: ProcessMeta) {
        self.processes.insert(meta.pid, meta);
    }

    fn resource(&self, pid: u32) -> Resource {
        // Read now rather than at attach: a command started with `--` may have
        // exec'ed since (a wrapper script running the real program).
        let exe = match crate::host::process::exe_name(pid) {
            n if n != "?" => n,
            _ => self.processes.get(&pid).map(|m| m.executable.clone()).unwrap_or_else(|| "unknown".into()),
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
        if let Some(id) = self.processes.get(&pid).and_then(|m| m.container_id.clone()) {
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
        Ok(match self.cfg.kind {
            ExporterKind::Console => {
                Pipeline::start(Console::new(self.cfg.console_format, self.tree.as_ref()), &resource, Driver::Plain, stats)
            }
            ExporterKind::None => Pipeline::start(Discard, &resource, Driver::Plain, stats),
            ExporterKind::Otlp => match self.cfg.protocol {
                Protocol::Grpc => {
                    // tonic's channel needs the runtime's reactor, now and for every export.
                    let rt = self.runtime.clone().ok_or_else(|| anyhow::anyhow!("gRPC export needs a tokio runtime"))?;
                    let _guard = rt.enter();
                    let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                    if let Some(e) = &self.cfg.endpoint {
                        b = b.with_endpoint(e.clone());
                    }
                    Pipeline::start(b.build()?, &resource, Driver::Runtime(rt.clone()), stats)
                }
                Protocol::HttpProtobuf => {
                    // Encoded straight from SpanData (see otlp); reqwest's blocking
                    // client brings its own runtime: driven outside ours.
                    let e = crate::export::otlp::HttpExporter::new(self.cfg.endpoint.as_deref(), &self.scope);
                    Pipeline::start(e, &resource, Driver::Plain, stats)
                }
            },
        })
    }

    /// Turns one reconstructed query into an OpenTelemetry span.
    pub fn emit(&mut self, q: &QuerySpan) -> anyhow::Result<()> {
        let facts = q.text.as_deref().map(|t| self.facts.get(t));
        let d = describe_with(q, facts.as_deref());
        self.push(q.pid, q.ids, (q.start_ns, q.end_ns), d, &q.events)
    }

    /// A query as the server ran it (kind SERVER), exported with the server's resource.
    /// `backend_pid`: the backend's PID as its server knows it (see host::pidns).
    pub fn emit_server_query(&mut self, q: &ServerQuery, backend_pid: i32, backend: Option<&catalog::Backend>) -> anyhow::Result<()> {
        let facts = self.facts.get(q.prepared.as_ref().map_or(&q.text, |(_, body)| body));
        let d = spans::describe_query(q, backend_pid, &facts, backend);
        self.push_as(q.postmaster, q.ids, (q.start_ns, q.end_ns), d, &q.events, SpanKind::Server, &[])
    }

    /// A transaction block as the server ran it.
    pub fn emit_server_txn(&mut self, t: &ServerTxn, backend_pid: i32, backend: Option<&catalog::Backend>) -> anyhow::Result<()> {
        let d = spans::describe_txn(t, backend_pid, backend);
        self.push_as(t.postmaster, t.ids, (t.start_ns, t.end_ns), d, &t.events, SpanKind::Server, &[])
    }

    /// A lock wait (kind INTERNAL: time spent inside the server), linked to the
    /// blockers' transactions where dbtel traces them.
    pub fn emit_wait(&mut self, w: &LockWait, backend_pid: i32, facts: &WaitFacts, links: &[span::Link]) -> anyhow::Result<()> {
        let d = spans::describe_wait(w, backend_pid, facts, &mut self.facts);
        self.push_as(w.postmaster, w.ids, (w.start_ns, w.end_ns), d, &w.events, SpanKind::Internal, links)
    }

    /// A client transaction. Kind CLIENT, like its queries: it is the
    /// application's view of work done by a remote server (a unit the server
    /// commits or rolls back), not work inside the process; it also keeps the
    /// span visible to back ends that only look at CLIENT/SERVER spans.
    pub fn emit_txn(&mut self, t: &TxnSpan) -> anyhow::Result<()> {
        let (name, attributes, error) = txn::describe(t);
        self.push(t.pid, t.ids, (t.start_ns, t.end_ns), Described { name, attributes, error }, &t.events)
    }

    fn push(&mut self, pid: u32, ids: Ids, span: (u64, u64), d: Described, events: &[span::Event]) -> anyhow::Result<()> {
        self.push_as(pid, ids, span, d, events, SpanKind::Client, &[])
    }

    #[allow(clippy::too_many_arguments)]
    fn push_as(
        &mut self,
        pid: u32,
        ids: Ids,
        (start_ns, end_ns): (u64, u64),
        d: Described,
        events: &[span::Event],
        kind: SpanKind,
        links: &[span::Link],
    ) -> anyhow::Result<()> {
        let trace_id = TraceId::from(ids.trace_id);
        // Sampling is decided per trace without remembering anything: no
        // parent context is passed, so ParentBased samplers consult their root
        // sampler, and every sampler the SDK offers (always_on/off,
        // traceidratio, parentbased_*) is then a pure function of the trace
        // id. A transaction and all its queries are kept or dropped together.
        let sampled = self.sampling.sampler.should_sample(None, trace_id, &d.name, &kind, &d.attributes, &[]);
        if sampled.decision != SamplingDecision::RecordAndSample {
            return Ok(());
        }
        let mut span_events = SpanEvents::default();
        span_events.events = events
            .iter()
            .map(|e| OtelEvent::new(e.name, self.clock.wall(e.ts_ns), e.attributes.clone(), 0))
            .collect();
        let span = SpanData {
            span_context: SpanContext::new(trace_id, SpanId::from(ids.span_id), TraceFlags::SAMPLED, false, TraceState::default()),
            parent_span_id: SpanId::from(ids.parent_span_id),
            parent_span_is_remote: false,
            span_kind: kind,
            name: d.name.into(),
            start_time: self.clock.wall(start_ns),
            end_time: self.clock.wall(end_ns),
            attributes: d.attributes,
            dropped_attributes_count: 0,
            events: span_events,
            links: span_links(links),
            status: d.error.map_or(Status::Unset, Status::error),
            instrumentation_scope: self.scope.clone(),
        };
        if !self.pipelines.contains_key(&pid) {
            let p = self.start_pipeline(pid)?;
            self.pipelines.insert(pid, p);
        }
        self.pipelines.get_mut(&pid).expect("inserted").push(span);
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

    /// Hands every pending span to its export thread (after each ring-buffer drain).
    pub fn flush(&mut self) {
        for p in self.pipelines.values_mut() {
            p.hand_off();
        }
    }

    /// Exports everything handed over and waits for delivery (bounded).
    pub fn shutdown(&mut self) {
        let all: Vec<(u32, Pipeline)> = self.pipelines.drain().chain(self.closing.drain(..)).collect();
        for (pid, mut p) in all {
            // Long enough to drain a full queue to a slow collector; what is
            // still queued after that is counted as lost.
            if !p.shutdown(Duration::from_secs(60)) {
                log::warn!("exporting spans of process {pid}: timed out");
            }
        }
        if let Some(t) = self.tree.as_mut() {
            t.finish();
        }
    }
}

fn span_links(links: &[span::Link]) -> SpanLinks {
    let mut out = SpanLinks::default();
    out.links = links
        .iter()
        .map(|l| {
            let cx = SpanContext::new(TraceId::from(l.trace_id), SpanId::from(l.span_id), TraceFlags::SAMPLED, false, TraceState::default());
            opentelemetry::trace::Link::new(cx, l.attributes.clone(), 0)
        })
        .collect();
    out
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Name, attributes and error of one span: pure, unit-tested.
pub struct Described {
    pub name: String,
    pub attributes: Vec<KeyValue>,
    pub error: Option<String>,
}

pub fn function_name(f: u32) -> &'static str {
    match f {
        func::PQEXEC => "PQexec",
        func::PQEXEC_PARAMS => "PQexecParams",
        func::PQPREPARE => "PQprepare",
        func::PQEXEC_PREPARED => "PQexecPrepared",
        func::PQSEND_QUERY => "PQsendQuery",
        func::PQSEND_QUERY_PARAMS => "PQsendQueryParams",
        func::PQSEND_PREPARE => "PQsendPrepare",
        func::PQSEND_QUERY_PREPARED => "PQsendQueryPrepared",
        _ => "unknown",
    }
}

/// Where the connection goes: shared by query and transaction spans. Built
/// once per connection; a span clones reference-counted strings.
pub fn conn_attributes(c: &ConnInfo, a: &mut Vec<KeyValue>) {
    a.extend_from_slice(c.attrs.get_or_init(|| {
        let mut v = Vec::with_capacity(5);
        build_conn_attributes(c, &mut v);
        v
    }));
}

fn build_conn_attributes(c: &ConnInfo, a: &mut Vec<KeyValue>) {
    use span::shared;
    if !c.db.is_empty() {
        a.push(KeyValue::new("db.namespace", shared(&c.db)));
    }
    if c.host.starts_with('/') || c.host.is_empty() {
        // Unix domain socket: libpq's socket file in that directory.
        let dir = if c.host.is_empty() { "/var/run/postgresql" } else { c.host.as_str() };
        let port = if c.port.is_empty() { "5432" } else { c.port.as_str() };
        a.push(KeyValue::new("server.address", shared(&format!("{}/.s.PGSQL.{port}", dir.trim_end_matches('/')))));
        a.push(KeyValue::new("network.transport", "unix"));
    } else {
        a.push(KeyValue::new("server.address", shared(&c.host)));
        if let Ok(p) = c.port.parse::<i64>() {
            a.push(KeyValue::new("server.port", p));
        }
        a.push(KeyValue::new("network.transport", "tcp"));
    }
    if c.backend_pid > 0 {
        a.push(KeyValue::new("db.postgresql.backend.pid", c.backend_pid as i64));
    }
}

/// Span name, attributes and error of a query, given its text's facts.
pub fn describe_with(q: &QuerySpan, facts: Option<&sql::QueryFacts>) -> Described {
    // Sized for the usual count: growing it cost a realloc or two per span.
    let mut a = Vec::with_capacity(16);
    a.extend([
        KeyValue::new("db.system.name", "postgresql"),
        KeyValue::new("code.function.name", function_name(q.call)),
        KeyValue::new("process.pid", q.pid as i64),
        KeyValue::new("thread.id", q.tid as i64),
    ]);
    let mut name = String::new();
    if let Some(f) = facts.filter(|_| !q.is_prepare()) {
        a.extend_from_slice(&f.attrs);
        name = f.name().unwrap_or_default();
    } else if let Some(f) = facts {
        let summary = f.summary.as_ref().map(|s| format!("PREPARE {s}"));
        a.push(KeyValue::new("db.operation.name", "PREPARE"));
        if let Some(c) = &f.collection {
            a.push(KeyValue::new("db.collection.name", c.clone()));
        }
        if let Some(s) = &summary {
            a.push(KeyValue::new("db.query.summary", s.clone()));
        }
        a.push(KeyValue::new("db.query.text", f.text.clone()));
        name = summary.unwrap_or_else(|| "PREPARE".into());
    }
    if let Some(n) = &q.statement_name {
        a.push(KeyValue::new("db.postgresql.statement.name", n.clone()));
    }
    if q.prepared_before_attach {
        // Executing a statement prepared before dbtel attached: its text was never seen.
        a.push(KeyValue::new("dbtel.statement.prepared_before_attach", true));
        a.push(KeyValue::new("db.operation.name", "EXECUTE"));
        name = format!("EXECUTE {}", q.statement_name.as_deref().unwrap_or(""));
    }
    if q.text_truncated {
        a.push(KeyValue::new("dbtel.query.text_truncated", true));
    }
    if let Some(c) = &q.conn_info {
        conn_attributes(c, &mut a);
    }
    let mut error = None;
    match q.end {
        // It did not run: no rows, and no error of its own (the statement
        // that failed before it in its pipeline carries that).
        End::Completed if q.skipped => a.push(KeyValue::new("dbtel.query.skipped", true)),
        End::Completed => {
            if q.failed {
                let code = q.sqlstate.clone().unwrap_or_else(|| "_OTHER".into());
                a.push(KeyValue::new("db.response.status_code", code.clone()));
                a.push(KeyValue::new("error.type", code.clone()));
                error = Some(code);
            } else {
                let tagged = q.cmd_status.as_deref().and_then(|t| Some((t, sql::affected_rows(t)?)));
                // COPY … TO STDOUT sends its rows as copy data, not as a result's tuples.
                let copied_out = tagged.is_some_and(|(t, _)| t.starts_with("COPY"))
                    && q.text.as_deref().and_then(sql::copy_direction) == Some(sql::CopyDirection::Out);
                match tagged {
                    Some((_, n)) if copied_out => a.push(KeyValue::new("db.response.returned_rows", n)),
                    _ => {
                        a.push(KeyValue::new("db.response.returned_rows", q.rows as i64));
                        if let Some((_, n)) = tagged {
                            a.push(KeyValue::new("db.response.affected_rows", n));
                        }
                    }
                }
            }
        }
        other => {
            let why = match other {
                End::ConnectionClosed => "connection_closed",
                End::ProcessExited => "process_exited",
                End::Refused => "refused",
                _ => "superseded",
            };
            a.push(KeyValue::new("error.type", format!("dbtel.{why}")));
            error = Some(format!("query did not complete: {}", why.replace('_', " ")));
        }
    }
    if name.is_empty() {
        name = "postgresql".into();
    }
    Described { name, attributes: a, error }
}

#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::libpq::reconstruct::ConnInfo;

    fn describe(q: &QuerySpan, raw_text: bool) -> Described {
        let facts = q.text.as_deref().map(|t| sql::facts(t, !raw_text));
        describe_with(q, facts.as_ref())
    }

    fn q(text: Option<&str>) -> QuerySpan {
        QuerySpan {
            pid: 10,
            tid: 11,
            conn: 1,
            start_ns: 1_000,
            end_ns: 3_000_000,
            call: func::PQEXEC,
            text: text.map(Into::into),
            text_truncated: false,
            statement_name: None,
            prepared_before_attach: false,
            rows: 1,
            cmd_status: Some("SELECT 1".into()),
            sqlstate: None,
            failed: false,
            skipped: false,
            conn_info: Some(Arc::new(ConnInfo {
                backend_pid: 99,
                db: "shop".into(),
                host: "/tmp".into(),
                port: "5433".into(),
                ..Default::default()
            })),
            end: End::Completed,
            ids: Ids::default(),
            events: vec![],
        }
    }

    fn get(d: &Described, k: &str) -> Option<String> {
        d.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| kv.value.to_string())
    }

    #[test]
    fn semantic_convention_attributes() {
        let d = describe(&q(Some("SELECT name FROM items WHERE id = 7")), false);
        assert_eq!(d.name, "SELECT items");
        assert_eq!(get(&d, "db.system.name").as_deref(), Some("postgresql"));
        assert_eq!(get(&d, "db.operation.name").as_deref(), Some("SELECT"));
        assert_eq!(get(&d, "db.collection.name").as_deref(), Some("items"));
        assert_eq!(get(&d, "db.query.text").as_deref(), Some("SELECT name FROM items WHERE id = ?"));
        assert_eq!(get(&d, "db.namespace").as_deref(), Some("shop"));
        assert_eq!(get(&d, "server.address").as_deref(), Some("/tmp/.s.PGSQL.5433"));
        assert_eq!(get(&d, "db.response.returned_rows").as_deref(), Some("1"));
        assert_eq!(get(&d, "db.postgresql.backend.pid").as_deref(), Some("99"));
        assert!(d.error.is_none());
        let raw = describe(&q(Some("SELECT 7")), true);
        assert_eq!(get(&raw, "db.query.text").as_deref(), Some("SELECT 7"));
    }

    #[test]
    fn affected_rows_from_command_tags() {
        let mut u = q(Some("update t set a = 1"));
        u.cmd_status = Some("UPDATE 4".into());
        u.rows = 0;
        let d = describe(&u, false);
        assert_eq!((get(&d, "db.response.affected_rows").as_deref(), get(&d, "db.response.returned_rows").as_deref()), (Some("4"), Some("0")));
        assert_eq!(get(&describe(&q(Some("SELECT 1")), false), "db.response.affected_rows"), None);
        let mut out = q(Some("copy (select 1) to stdout"));
        (out.cmd_status, out.rows) = (Some("COPY 12".into()), 0);
        let d = describe(&out, false);
        assert_eq!((get(&d, "db.response.returned_rows").as_deref(), get(&d, "db.response.affected_rows")), (Some("12"), None), "rows copied out");
        let mut into = q(Some("copy t from stdin"));
        (into.cmd_status, into.rows) = (Some("COPY 3".into()), 0);
        let d = describe(&into, false);
        assert_eq!((get(&d, "db.response.returned_rows").as_deref(), get(&d, "db.response.affected_rows").as_deref()), (Some("0"), Some("3")));
    }

    #[test]
    fn tcp_failure_prepare_and_unknown_statement() {
        let mut s = q(Some("select * from nope"));
        s.conn_info = Some(Arc::new(ConnInfo { backend_pid: 1, db: "d".into(), host: "127.0.0.1".into(), port: "5432".into(), ..Default::default() }));
        s.failed = true;
        s.sqlstate = Some("42P01".into());
        let d = describe(&s, false);
        assert_eq!(get(&d, "server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(get(&d, "server.port").as_deref(), Some("5432"));
        assert_eq!(get(&d, "db.response.status_code").as_deref(), Some("42P01"));
        assert_eq!(get(&d, "error.type").as_deref(), Some("42P01"));
        assert_eq!(d.error.as_deref(), Some("42P01"));
        assert_eq!(get(&d, "db.response.returned_rows"), None);

        let mut p = q(Some("select * from t where id = $1"));
        p.call = func::PQPREPARE;
        p.statement_name = Some("s1".into());
        let d = describe(&p, false);
        assert_eq!(d.name, "PREPARE SELECT t");
        assert_eq!(get(&d, "db.operation.name").as_deref(), Some("PREPARE"));

        let mut e = q(None);
        e.call = func::PQSEND_QUERY_PREPARED;
        e.statement_name = Some("P0_1".into());
        e.prepared_before_attach = true;
        let d = describe(&e, false);
        assert_eq!(d.name, "EXECUTE P0_1");
        assert_eq!(get(&d, "dbtel.statement.prepared_before_attach").as_deref(), Some("true"));
        assert_eq!(get(&d, "db.query.text"), None);
    }

    #[test]
    fn incomplete_spans_are_errors() {
        let mut s = q(Some("select pg_sleep(10)"));
        s.end = End::ProcessExited;
        let d = describe(&s, false);
        assert_eq!(get(&d, "error.type").as_deref(), Some("dbtel.process_exited"));
        assert_eq!(d.error.as_deref(), Some("query did not complete: process exited"));
    }
}
