//! `--exporter console`: spans on stdout, one line each, one JSON object each,
//! or each trace as a tree once it is complete (see tree).

mod tree;

use std::{io::Write, sync::Arc};

use opentelemetry::{
    trace::{SpanKind, Status},
    Array, KeyValue, Value,
};
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter},
    Resource,
};
use serde_json::{json, Map, Value as Json};

pub use tree::{
    render, Arrived, Ready, TreeBuffer, TreePrinter, MAX_BUFFERED, QUIET, ROOTLESS_QUIET,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsoleFormat {
    /// One line per span as it is exported.
    #[default]
    Lines,
    /// Each trace as a tree, printed once complete.
    Tree,
    /// One JSON object per span per line.
    Json,
}

/// The SpanExporter of every pipeline (one per traced process): trees need
/// spans of all of them, so tree output goes to one shared printer.
#[derive(Debug)]
pub(crate) struct Console {
    out: Out,
    /// The pipeline's resource: service.name for trees, all of it for JSON.
    service: Arc<str>,
    resource: Map<String, Json>,
}

#[derive(Debug)]
enum Out {
    Lines,
    Json,
    Tree(Arc<tree::Shared>),
}

impl Console {
    /// `printer` is required for the tree format (else lines are printed).
    pub(crate) fn new(format: ConsoleFormat, printer: Option<&TreePrinter>) -> Console {
        let out = match (format, printer) {
            (ConsoleFormat::Tree, Some(p)) => Out::Tree(p.shared()),
            (ConsoleFormat::Json, _) => Out::Json,
            _ => Out::Lines,
        };
        Console {
            out,
            service: Arc::from(""),
            resource: Map::new(),
        }
    }
}

fn io_error(e: std::io::Error) -> OTelSdkError {
    OTelSdkError::InternalFailure(e.to_string())
}

impl SpanExporter for Console {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut text = String::new();
        match &self.out {
            Out::Tree(shared) => return shared.push(batch, &self.service).map_err(io_error),
            Out::Lines => batch.iter().for_each(|s| {
                text.push_str(&console_line(s));
                text.push('\n');
            }),
            Out::Json => batch.iter().for_each(|s| {
                text.push_str(&json_line(s, &self.resource));
                text.push('\n');
            }),
        }
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(io_error)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource
            .iter()
            .map(|(k, v)| (k.to_string(), json_value(v)))
            .collect();
        if let Some(name) = resource.get(&opentelemetry::Key::from_static_str("service.name")) {
            self.service = Arc::from(name.as_str().as_ref());
        }
    }
}

/// An attribute as text, from a span's, an event's or a link's attributes.
fn value_of(kvs: &[KeyValue], key: &str) -> Option<String> {
    kvs.iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn get(s: &SpanData, key: &str) -> Option<String> {
    value_of(&s.attributes, key)
}

/// The traced process: the client's, else the server backend's.
fn pid(s: &SpanData) -> String {
    get(s, "process.pid")
        .or_else(|| get(s, "db.postgresql.backend.pid"))
        .unwrap_or_default()
}

fn duration_ms(s: &SpanData) -> f64 {
    s.end_time
        .duration_since(s.start_time)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e3
}

/// ` rows=… error=… db=…`: how a query went, shared by lines and trees.
fn push_outcome(s: &SpanData, line: &mut String) {
    for (key, label) in [
        ("db.response.returned_rows", "rows"),
        ("error.type", "error"),
        ("db.namespace", "db"),
    ] {
        if let Some(v) = get(s, key) {
            line.push_str(&format!(" {label}={v}"));
        }
    }
}

/// The lines format: one line per span.
pub fn console_line(s: &SpanData) -> String {
    let mut line = format!(
        "{} {:>10.3} ms  pid={} {:<32}",
        humantime::format_rfc3339_micros(s.start_time),
        duration_ms(s),
        pid(s),
        s.name,
    );
    push_outcome(s, &mut line);
    if let Some(t) = get(s, "db.query.text") {
        line.push_str(&format!("  {t:?}"));
    }
    line
}

pub fn kind_name(k: &SpanKind) -> &'static str {
    match k {
        SpanKind::Client => "CLIENT",
        SpanKind::Server => "SERVER",
        SpanKind::Producer => "PRODUCER",
        SpanKind::Consumer => "CONSUMER",
        SpanKind::Internal => "INTERNAL",
    }
}

fn json_value(v: &Value) -> Json {
    match v {
        Value::Bool(b) => json!(b),
        Value::I64(i) => json!(i),
        Value::F64(f) => json!(f),
        Value::String(s) => json!(s.as_str()),
        Value::Array(Array::Bool(a)) => json!(a),
        Value::Array(Array::I64(a)) => json!(a),
        Value::Array(Array::F64(a)) => json!(a),
        Value::Array(Array::String(a)) => {
            Json::Array(a.iter().map(|s| json!(s.as_str())).collect())
        }
        other => json!(other.to_string()),
    }
}

fn json_attributes(kvs: &[KeyValue]) -> Json {
    Json::Object(
        kvs.iter()
            .map(|kv| (kv.key.to_string(), json_value(&kv.value)))
            .collect(),
    )
}

/// The JSON format: one object per span, on one line.
pub fn json_line(s: &SpanData, resource: &Map<String, Json>) -> String {
    let cx = &s.span_context;
    let parent = (s.parent_span_id != opentelemetry::trace::SpanId::INVALID)
        .then(|| s.parent_span_id.to_string());
    let status = match &s.status {
        Status::Unset => json!({ "code": "UNSET" }),
        Status::Ok => json!({ "code": "OK" }),
        Status::Error { description } => json!({ "code": "ERROR", "message": description }),
    };
    let events: Vec<Json> = s
        .events
        .iter()
        .map(|e| {
            json!({
                "name": e.name,
                "time": humantime::format_rfc3339_nanos(e.timestamp).to_string(),
                "attributes": json_attributes(&e.attributes),
            })
        })
        .collect();
    let links: Vec<Json> = s
        .links
        .iter()
        .map(|l| {
            json!({
                "trace_id": l.span_context.trace_id().to_string(),
                "span_id": l.span_context.span_id().to_string(),
                "attributes": json_attributes(&l.attributes),
            })
        })
        .collect();
    json!({
        "name": s.name,
        "kind": kind_name(&s.span_kind),
        "trace_id": cx.trace_id().to_string(),
        "span_id": cx.span_id().to_string(),
        "parent_span_id": parent,
        "start_time": humantime::format_rfc3339_nanos(s.start_time).to_string(),
        "end_time": humantime::format_rfc3339_nanos(s.end_time).to_string(),
        "duration_ms": duration_ms(s),
        "status": status,
        "attributes": json_attributes(&s.attributes),
        "events": events,
        "links": links,
        "resource": resource,
    })
    .to_string()
}

#[cfg(test)]
mod tests;
