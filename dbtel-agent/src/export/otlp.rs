//! OTLP/HTTP with protobuf bodies, encoded straight from the pipeline's DbSpans.
//!
//! The SDK's exporter first converts every span into the generated protobuf
//! structs (cloning each attribute key and value into a new String) and then
//! encodes those: on a busy host that was most of the agent's CPU. Here the
//! request is written field by field into one buffer per batch, the resource
//! and scope once per exporter. Same wire format and same fields as the SDK
//! (opentelemetry-proto 0.31's transform, checked by a unit test); the
//! OTEL_EXPORTER_OTLP_* endpoint, headers and timeout variables are honoured.

use std::{sync::Arc, time::Duration};

use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::{trace::SpanData, Resource};

use crate::export::{
    batch::{Delivery, Sink},
    clock::Clock,
    retry,
    spool::Spool,
    transport::Transport,
};
use crate::pipeline::dbspan::{DbSpan, Kind};

/// The traces URL: an explicit base URL (as OTEL_EXPORTER_OTLP_ENDPOINT) gets
/// /v1/traces; OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as it is.
pub fn traces_url(endpoint: Option<&str>) -> String {
    signal_url(Signal::Traces, endpoint)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// As in OTEL_EXPORTER_OTLP_<SIGNAL>_*.
    fn env(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// OTEL_EXPORTER_OTLP_<SIGNAL>_<what>, else OTEL_EXPORTER_OTLP_<what>.
    pub fn var(self, what: &str) -> Option<String> {
        env_either(
            &format!("OTEL_EXPORTER_OTLP_{}_{what}", self.env()),
            &format!("OTEL_EXPORTER_OTLP_{what}"),
        )
    }
}

/// A signal's HTTP URL: an explicit base URL (the flag, else
/// OTEL_EXPORTER_OTLP_ENDPOINT) gets the signal's path; the signal's own
/// variable is used as it is.
pub fn signal_url(signal: Signal, endpoint: Option<&str>) -> String {
    if let Some(e) = endpoint {
        return with_path(e, signal);
    }
    if let Ok(e) = std::env::var(format!("OTEL_EXPORTER_OTLP_{}_ENDPOINT", signal.env())) {
        return e;
    }
    let base = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .unwrap_or_else(|_| "http://localhost:4318".into());
    with_path(&base, signal)
}

/// OTEL_EXPORTER_OTLP_ENDPOINT semantics for HTTP: a base URL to which the
/// signal path is appended.
fn with_path(base: &str, signal: Signal) -> String {
    if base.ends_with(signal.path()) {
        base.to_string()
    } else {
        format!("{}{}", base.trim_end_matches('/'), signal.path())
    }
}

/// `k1=v1,k2=v2` (values percent-decoded), as the OTLP exporter spec has it.
pub fn parse_headers(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), percent_decode(v.trim())))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if let (b'%', Some(Some(hi)), Some(Some(lo))) = (
            b[i],
            b.get(i + 1).map(|&c| hex(c)),
            b.get(i + 2).map(|&c| hex(c)),
        ) {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn env_either(specific: &str, general: &str) -> Option<String> {
    std::env::var(specific)
        .or_else(|_| std::env::var(general))
        .ok()
}

/// The OTLP timeout: OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, else
/// OTEL_EXPORTER_OTLP_TIMEOUT (milliseconds), else 10 s.
pub fn timeout() -> Duration {
    timeout_for(Signal::Traces)
}

pub fn timeout_for(signal: Signal) -> Duration {
    signal
        .var("TIMEOUT")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// OTEL_EXPORTER_OTLP_TRACES_HEADERS, else OTEL_EXPORTER_OTLP_HEADERS.
pub fn headers() -> Vec<(String, String)> {
    headers_for(Signal::Traces)
}

pub fn headers_for(signal: Signal) -> Vec<(String, String)> {
    signal
        .var("HEADERS")
        .map(|h| parse_headers(&h))
        .unwrap_or_default()
}

/// One pipeline's OTLP sink: encodes its batches with its resource and sends
/// them over the agent's one transport, with retries; with a spool, a
/// request the collector cannot take now waits on disk instead, and new ones
/// queue behind it.
pub struct OtlpExporter {
    transport: Arc<dyn Transport>,
    spool: Option<Arc<Spool>>,
    /// The encoded Resource message (set_resource).
    resource: Vec<u8>,
    /// The encoded InstrumentationScope message.
    scope: Vec<u8>,
}

impl OtlpExporter {
    /// `scope`: the instrumentation scope every span carries (the SDK's
    /// transform writes its name and version).
    pub fn new(
        transport: Arc<dyn Transport>,
        spool: Option<Arc<Spool>>,
        scope: &InstrumentationScope,
    ) -> Self {
        let (name, version) = (scope.name(), scope.version().unwrap_or_default());
        let mut encoded = Vec::new();
        str_field(&mut encoded, 1, name);
        str_field(&mut encoded, 2, version);
        OtlpExporter {
            transport,
            spool,
            resource: Vec::new(),
            scope: encoded,
        }
    }
}

impl OtlpExporter {
    /// Sends one request (retried), or spools it.
    fn send(&mut self, body: bytes::Bytes, n: u64) -> Delivery {
        let Some(spool) = &self.spool else {
            return match retry::send(&*self.transport, &body) {
                Ok(()) => Delivery::Exported,
                Err(e) => Delivery::Failed(e),
            };
        };
        if !spool.busy() {
            match self.transport.send(&body) {
                Ok(()) => return Delivery::Exported,
                Err(f) if !f.retryable => {
                    return Delivery::Failed(format!(
                        "OTLP collector at {}: {}",
                        self.transport.target(),
                        f.why
                    ))
                }
                Err(f) => log::debug!(
                    "OTLP collector at {}: {}; spooled",
                    self.transport.target(),
                    f.why
                ),
            }
        }
        match spool.put(&body, n) {
            Ok(()) => Delivery::Spooled,
            Err(e) => Delivery::Failed(e),
        }
    }
}

impl Sink for OtlpExporter {
    /// Never called: its pipeline hands it encoded spans only.
    fn deliver(&mut self, batch: Vec<SpanData>) -> Delivery {
        Delivery::Failed(format!("{} spans handed unencoded to OTLP", batch.len()))
    }

    fn head_room(&self) -> Option<usize> {
        Some(head_room(&self.resource, &self.scope))
    }

    fn deliver_encoded(&mut self, body: Vec<u8>, n: usize) -> Delivery {
        let room = head_room(&self.resource, &self.scope);
        let body = finish_request(&self.resource, &self.scope, body, room);
        self.send(body, n as u64)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource.clear();
        for (k, v) in resource.iter() {
            key_value_field(&mut self.resource, 1, k.as_str(), v);
        }
    }
}

/// ExportTraceServiceRequest { resource_spans: [{ resource, scope_spans: [{ scope, spans }] }] }.
/// The spans are written first, each from a scratch buffer (its length is
/// then known), after room left for the enclosing headers, which are then
/// written right before them: no part of the body is moved.
/// Bytes a request's head may take: two tags, two 10-byte lengths, the
/// resource and the scope.
fn head_room(resource: &[u8], scope: &[u8]) -> usize {
    2 + 20 + field_len(resource.len()) + field_len(scope.len())
}

/// One span as a ScopeSpans.spans field, written in place after room for a
/// two-byte length (spans are 128 bytes to 16 KiB long but for long texts):
/// the length is filled in after, and the body moved only when it needs
/// another length size (a copy through a scratch buffer was ~2 % of the
/// agent's time).
pub fn span_field(b: &mut Vec<u8>, s: &DbSpan, clock: &Clock) {
    const GUESS: usize = 2;
    tag(b, 2, 2);
    let at = b.len();
    b.extend_from_slice(&[0; GUESS]);
    span(b, s, clock);
    let (head, n) = varint_bytes((b.len() - at - GUESS) as u64);
    match n.cmp(&GUESS) {
        std::cmp::Ordering::Equal => {}
        std::cmp::Ordering::Less => {
            b.copy_within(at + GUESS.., at + n);
            b.truncate(b.len() - (GUESS - n));
        }
        std::cmp::Ordering::Greater => {
            b.splice(at..at, std::iter::repeat_n(0, n - GUESS));
        }
    }
    for (i, byte) in head[..n].iter().enumerate() {
        b[at + i] = *byte;
    }
}

/// The request around spans encoded after `room` free bytes: its head is
/// written right before them, so no part of the body is moved.
pub fn finish_request(
    resource: &[u8],
    scope: &[u8],
    mut buf: Vec<u8>,
    room: usize,
) -> bytes::Bytes {
    let scope_spans = field_len(scope.len()) + buf.len() - room;
    let resource_spans =
        field_len(resource.len()) + 1 + varint_len(scope_spans as u64) + scope_spans;
    let mut head = Vec::with_capacity(room);
    tag(&mut head, 1, 2);
    varint(&mut head, resource_spans as u64);
    bytes_field(&mut head, 1, resource);
    tag(&mut head, 2, 2);
    varint(&mut head, scope_spans as u64);
    bytes_field(&mut head, 1, scope);
    let start = room - head.len();
    buf[start..room].copy_from_slice(&head);
    bytes::Bytes::from(buf).slice(start..)
}

/// Bytes taken by a length-delimited field (nothing when empty: proto3).
fn field_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        1 + varint_len(len as u64) + len
    }
}

/// A Span message, with the fields and defaults the SDK's transform writes
/// (a link's and the span's flags: sampled, is-remote known).
fn span(b: &mut Vec<u8>, s: &DbSpan, clock: &Clock) {
    bytes_field(b, 1, &s.ids.trace_id.to_be_bytes());
    bytes_field(b, 2, &s.ids.span_id.to_be_bytes());
    if s.ids.parent_span_id != 0 {
        bytes_field(b, 4, &s.ids.parent_span_id.to_be_bytes());
    }
    str_field(b, 5, &s.name);
    let kind = match s.kind {
        Kind::Internal => 1,
        Kind::Server => 2,
        Kind::Client => 3,
    };
    varint_field(b, 6, kind);
    fixed64_field(b, 7, clock.wall_ns(s.start_ns));
    fixed64_field(b, 8, clock.wall_ns(s.end_ns));
    for kv in &s.attributes {
        attribute_field(b, 9, kv);
    }
    // Shared blocks: encoded once, spliced into every span that carries them.
    for block in s.blocks.iter() {
        block.encode_into(b, |b, kvs| {
            for kv in kvs {
                attribute_field(b, 9, kv);
            }
        });
    }
    for e in &s.events {
        message(b, 11, |m| {
            fixed64_field(m, 1, clock.wall_ns(e.ts_ns));
            str_field(m, 2, e.name);
            for kv in &e.attributes {
                attribute_field(m, 3, kv);
            }
        });
    }
    for l in &s.links {
        message(b, 13, |m| {
            bytes_field(m, 1, &l.trace_id.to_be_bytes());
            bytes_field(m, 2, &l.span_id.to_be_bytes());
            for kv in &l.attributes {
                attribute_field(m, 4, kv);
            }
            fixed32_field(m, 6, flags(false, SAMPLED));
        });
    }
    message(b, 15, |m| {
        if let Some(description) = &s.error {
            str_field(m, 2, description);
            varint_field(m, 3, 2);
        }
    });
    fixed32_field(b, 16, flags(s.ids.remote, SAMPLED));
}

/// Every span dbtel exports is sampled (the gate drops the others before).
const SAMPLED: u8 = 1;

/// Trace flags plus "is-remote is known" (and "is remote"), as the SDK sets them.
fn flags(remote: bool, trace_flags: u8) -> u32 {
    trace_flags as u32 | 0x100 | if remote { 0x200 } else { 0 }
}

/// A KeyValue field. For the scalar values spans carry, its length is known
/// before writing: no move of the body (most of the encoder's time went to
/// those moves, a dozen attributes per span).
fn key_value_field(b: &mut Vec<u8>, field: u32, key: &str, v: &Value) {
    match scalar_len(v) {
        Some(value_len) => {
            tag(b, field, 2);
            varint(
                b,
                (field_len(key.len()) + 1 + varint_len(value_len as u64) + value_len) as u64,
            );
            str_field(b, 1, key);
            tag(b, 2, 2);
            varint(b, value_len as u64);
            any_value(b, v);
        }
        None => message(b, field, |m| {
            str_field(m, 1, key);
            message(m, 2, |a| any_value(a, v));
        }),
    }
}

fn attribute_field(b: &mut Vec<u8>, field: u32, kv: &KeyValue) {
    key_value_field(b, field, kv.key.as_str(), &kv.value);
}

/// Encoded length of an AnyValue holding a scalar.
fn scalar_len(v: &Value) -> Option<usize> {
    match v {
        Value::String(s) => Some(1 + varint_len(s.as_str().len() as u64) + s.as_str().len()),
        Value::I64(x) => Some(1 + varint_len(*x as u64)),
        Value::Bool(_) => Some(2),
        Value::F64(_) => Some(9),
        _ => None,
    }
}

/// AnyValue: string 1, bool 2, int 3, double 4, array 5.
fn any_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => string_value(b, s.as_str()),
        Value::Bool(x) => {
            tag(b, 2, 0);
            varint(b, *x as u64);
        }
        Value::I64(x) => {
            tag(b, 3, 0);
            varint(b, *x as u64);
        }
        Value::F64(x) => {
            tag(b, 4, 1);
            b.extend_from_slice(&x.to_le_bytes());
        }
        Value::Array(a) => message(b, 5, |arr| {
            let mut each = |v: Value| message(arr, 1, |m| any_value(m, &v));
            match a {
                Array::Bool(v) => v.iter().for_each(|x| each(Value::Bool(*x))),
                Array::I64(v) => v.iter().for_each(|x| each(Value::I64(*x))),
                Array::F64(v) => v.iter().for_each(|x| each(Value::F64(*x))),
                Array::String(v) => v.iter().for_each(|x| each(Value::String(x.clone()))),
                _ => {}
            }
        }),
        _ => string_value(b, &v.to_string()),
    }
}

/// AnyValue.string_value: an empty string is still a string value, written
/// even when empty (unlike a proto3 default).
fn string_value(b: &mut Vec<u8>, s: &str) {
    tag(b, 1, 2);
    varint(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

// Protobuf wire format: proto3 leaves default values (0, "", empty bytes) out.

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Byte by byte: most are one byte (tags, short lengths), and a slice of
/// a length known only at run time is a call to memcpy.
fn varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

/// `v` as a varint: its bytes and how many of them there are.
fn varint_bytes(mut v: u64) -> ([u8; 10], usize) {
    let (mut out, mut n) = ([0u8; 10], 0);
    while v >= 0x80 {
        out[n] = v as u8 | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    (out, n + 1)
}

fn tag(b: &mut Vec<u8>, field: u32, wire: u8) {
    varint(b, ((field as u64) << 3) | wire as u64);
}

fn varint_field(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, 0);
        varint(b, v);
    }
}

fn fixed64_field(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, 1);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed32_field(b: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(b, field, 5);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

fn bytes_field(b: &mut Vec<u8>, field: u32, v: &[u8]) {
    if !v.is_empty() {
        tag(b, field, 2);
        varint(b, v.len() as u64);
        b.extend_from_slice(v);
    }
}

fn str_field(b: &mut Vec<u8>, field: u32, v: &str) {
    bytes_field(b, field, v.as_bytes());
}

/// A length-delimited field written in place: the body goes after the tag,
/// then its length is put in front of it (one move of the body; used for
/// the small, rarer messages: events, links, status, arrays).
fn message(b: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    tag(b, field, 2);
    let start = b.len();
    body(b);
    let len = (b.len() - start) as u64;
    let n = varint_len(len);
    varint(b, len);
    b[start..].rotate_right(n);
}

#[cfg(test)]
#[path = "otlp_tests.rs"]
mod tests;
