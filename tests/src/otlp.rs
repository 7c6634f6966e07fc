//! An OTLP trace receiver speaking the real protocols: gRPC
//! (opentelemetry.proto.collector.trace.v1.TraceService/Export) and
//! HTTP/protobuf (POST /v1/traces). Received spans are flattened for asserts.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value, KeyValue},
};
use prost::Message;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Other,
}

#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    /// OTLP SpanKind: 3 = CLIENT.
    pub kind: i32,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attrs: BTreeMap<String, Value>,
    /// Shared by every span of one resource.
    pub resource: Arc<BTreeMap<String, Value>>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub events: Vec<SpanEvent>,
    pub links: Vec<SpanLink>,
}

#[derive(Debug, Clone)]
pub struct SpanLink {
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub attrs: BTreeMap<String, Value>,
}

#[derive(Debug, Clone)]
pub struct SpanEvent {
    pub name: String,
    pub time_ns: u64,
    pub attrs: BTreeMap<String, Value>,
}

fn str_in<'a>(map: &'a BTreeMap<String, Value>, key: &str) -> Option<&'a str> {
    match map.get(key) {
        Some(Value::Str(s)) => Some(s),
        _ => None,
    }
}

fn int_in(map: &BTreeMap<String, Value>, key: &str) -> Option<i64> {
    match map.get(key) {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}

impl Span {
    pub fn str(&self, key: &str) -> Option<&str> {
        str_in(&self.attrs, key)
    }
    pub fn int(&self, key: &str) -> Option<i64> {
        int_in(&self.attrs, key)
    }
    pub fn resource_str(&self, key: &str) -> Option<&str> {
        str_in(&self.resource, key)
    }
    pub fn resource_int(&self, key: &str) -> Option<i64> {
        int_in(&self.resource, key)
    }
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_ns.saturating_sub(self.start_ns))
    }
    pub fn text(&self) -> &str {
        self.str("db.query.text").unwrap_or("")
    }
    pub fn event_names(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.name.as_str()).collect()
    }
}

fn flatten(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => Value::Str(s.clone()),
                Some(any_value::Value::IntValue(i)) => Value::Int(*i),
                Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
                Some(any_value::Value::DoubleValue(d)) => Value::Double(*d),
                _ => Value::Other,
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// An answer refusing a request: HTTP status, Retry-After seconds.
type Refusal = (u16, Option<u64>);

#[derive(Clone, Default)]
struct Store {
    spans: Arc<Mutex<Vec<Span>>>,
    /// Answers planned for the next requests (HTTP status, Retry-After
    /// seconds), before the receiver accepts again. gRPC answers 503 as
    /// UNAVAILABLE and 429 as RESOURCE_EXHAUSTED, with RetryInfo if a delay
    /// is given.
    refusals: Arc<Mutex<std::collections::VecDeque<Refusal>>>,
    /// Every request: when, and the status it got (gRPC: as HTTP's).
    requests: Arc<Mutex<Vec<(std::time::Instant, u16)>>>,
    /// HTTP only: decode span names and resources only (for benchmarks: the
    /// receiver shares the machine with the workload it measures).
    light: bool,
    /// HTTP only, with `light`: count spans per name and keep nothing (a
    /// bench's receiver kept every span: GiBs by its end, and each doubling
    /// of the vector copied them all while a timed run went on).
    counting: bool,
    names: Arc<Mutex<HashMap<String, u64>>>,
}

fn store(st: &Store, req: ExportTraceServiceRequest) {
    let mut out = st.spans.lock().unwrap();
    for rs in req.resource_spans {
        let resource = Arc::new(
            rs.resource
                .map(|r| flatten(&r.attributes))
                .unwrap_or_default(),
        );
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Span {
                    name: s.name,
                    kind: s.kind,
                    trace_id: s.trace_id,
                    span_id: s.span_id,
                    parent_span_id: s.parent_span_id,
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                    attrs: flatten(&s.attributes),
                    resource: resource.clone(),
                    status_code: s.status.as_ref().map_or(0, |st| st.code),
                    status_message: s.status.map(|st| st.message).unwrap_or_default(),
                    events: s
                        .events
                        .iter()
                        .map(|e| SpanEvent {
                            name: e.name.clone(),
                            time_ns: e.time_unix_nano,
                            attrs: flatten(&e.attributes),
                        })
                        .collect(),
                    links: s
                        .links
                        .iter()
                        .map(|l| SpanLink {
                            trace_id: l.trace_id.clone(),
                            span_id: l.span_id.clone(),
                            attrs: flatten(&l.attributes),
                        })
                        .collect(),
                });
            }
        }
    }
}

struct Grpc(Store);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let refusal = self.0.refusals.lock().unwrap().pop_front();
        let status = refusal.map_or(200, |r| r.0);
        self.0
            .requests
            .lock()
            .unwrap()
            .push((std::time::Instant::now(), status));
        if let Some((status, after)) = refusal {
            use tonic_types::{ErrorDetails, StatusExt};
            let code = match status {
                429 => tonic::Code::ResourceExhausted,
                503 => tonic::Code::Unavailable,
                _ => tonic::Code::InvalidArgument,
            };
            let details = ErrorDetails::with_retry_info(after.map(Duration::from_secs));
            return Err(match after {
                Some(_) => tonic::Status::with_error_details(code, "not now", details),
                None => tonic::Status::new(code, "not now"),
            });
        }
        store(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Both receivers on loopback, served from a runtime of their own.
pub struct Receiver {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    spans: Store,
    /// OTLP metrics the agent pushed.
    pub metrics: crate::otlp_metrics::Metrics,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    pub fn start() -> Receiver {
        Self::start_with(false, 0, 0)
    }

    /// A receiver that keeps span names and resources but not span attributes.
    pub fn start_light() -> Receiver {
        Self::start_with(true, 0, 0)
    }

    /// A light receiver on given loopback ports (a collector coming back).
    pub fn start_light_on(grpc_port: u16, http_port: u16) -> Receiver {
        Self::start_with(true, grpc_port, http_port)
    }

    /// A receiver that only counts spans per name (benchmarks): see
    /// [`Receiver::name_counts`]; it keeps no span.
    pub fn start_counting_on(grpc_port: u16, http_port: u16) -> Receiver {
        Self::start_store(
            Store {
                light: true,
                counting: true,
                ..Default::default()
            },
            grpc_port,
            http_port,
        )
    }

    pub fn start_counting() -> Receiver {
        Self::start_counting_on(0, 0)
    }

    /// Spans received so far per name (a counting receiver's; others' HTTP
    /// spans are kept instead, see [`Receiver::names_since`]).
    pub fn name_counts(&self) -> HashMap<String, u64> {
        self.spans.names.lock().unwrap().clone()
    }

    /// Spans counted since `before` (an earlier [`Receiver::name_counts`])
    /// whose name `wanted` accepts.
    pub fn counted_since(
        &self,
        before: &HashMap<String, u64>,
        wanted: impl Fn(&str) -> bool,
    ) -> u64 {
        self.spans
            .names
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| wanted(n))
            .map(|(n, c)| c - before.get(n).copied().unwrap_or(0))
            .sum()
    }

    /// Two loopback ports nothing listens on (yet): a collector that is down.
    pub fn free_ports() -> (u16, u16) {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        )
    }

    fn start_with(light: bool, grpc_port: u16, http_port: u16) -> Receiver {
        Self::start_store(
            Store {
                light,
                ..Default::default()
            },
            grpc_port,
            http_port,
        )
    }

    fn start_store(spans: Store, grpc_port: u16, http_port: u16) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let metrics = crate::otlp_metrics::Metrics::default();
        let (grpc_addr, http_addr) = runtime.block_on(async {
            let grpc = tokio::net::TcpListener::bind(("127.0.0.1", grpc_port))
                .await
                .unwrap();
            let http = tokio::net::TcpListener::bind(("127.0.0.1", http_port))
                .await
                .unwrap();
            let addrs = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
            let svc = TraceServiceServer::new(Grpc(spans.clone()));
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .add_service(
                        opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer::new(
                            metrics.clone(),
                        ),
                    )
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc)),
            );
            let s = spans.clone();
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let s = s.clone();
                    async move {
                        let refusal = s.refusals.lock().unwrap().pop_front();
                        if let Some((status, after)) = refusal {
                            s.requests
                                .lock()
                                .unwrap()
                                .push((std::time::Instant::now(), status));
                            let code = axum::http::StatusCode::from_u16(status).unwrap();
                            let after = after.map(|a| a.to_string()).unwrap_or_default();
                            return axum::response::IntoResponse::into_response((
                                code,
                                [("retry-after", after)],
                                b"not now".to_vec(),
                            ));
                        }
                        s.requests
                            .lock()
                            .unwrap()
                            .push((std::time::Instant::now(), 200));
                        let decoded = if s.light {
                            light::decode(body).map(|r| store_light(&s, r))
                        } else {
                            ExportTraceServiceRequest::decode(body).map(|r| store(&s, r))
                        };
                        let answer = match decoded {
                            Ok(()) => {
                                let resp = ExportTraceServiceResponse {
                                    partial_success: None,
                                }
                                .encode_to_vec();
                                (
                                    axum::http::StatusCode::OK,
                                    [("content-type", "application/x-protobuf")],
                                    resp,
                                )
                            }
                            Err(_) => (
                                axum::http::StatusCode::BAD_REQUEST,
                                [("content-type", "text/plain")],
                                b"bad protobuf".to_vec(),
                            ),
                        };
                        axum::response::IntoResponse::into_response(answer)
                    }
                }),
            );
            let app = app.merge(metrics.route());
            tokio::spawn(async move { axum::serve(http, app).await });
            addrs
        });
        Receiver {
            grpc_addr,
            http_addr,
            spans,
            metrics,
            _runtime: runtime,
        }
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The next HTTP requests are answered `status` (with `Retry-After:
    /// seconds` if given), in order; then spans are accepted again.
    pub fn refuse_next(&self, answers: &[(u16, Option<u64>)]) {
        self.spans_store()
            .refusals
            .lock()
            .unwrap()
            .extend(answers.iter().copied());
    }

    /// Every request so far: when, and the status it got.
    pub fn requests(&self) -> Vec<(std::time::Instant, u16)> {
        self.spans_store().requests.lock().unwrap().clone()
    }

    fn spans_store(&self) -> &Store {
        &self.spans
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.spans.lock().unwrap().clone()
    }

    /// Spans received so far (cheaper than `spans().len()`).
    pub fn count(&self) -> usize {
        let counted: u64 = self.spans.names.lock().unwrap().values().sum();
        self.spans.spans.lock().unwrap().len() + counted as usize
    }

    /// Names of the spans received after the first `skip`.
    pub fn names_since(&self, skip: usize) -> Vec<String> {
        self.spans.spans.lock().unwrap()[skip..]
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// Spans of one traced process (resource process.pid).
    pub fn spans_of(&self, pid: u32) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.resource_int("process.pid") == Some(pid as i64))
            .collect()
    }
}

/// The part of an OTLP trace request the benchmark needs; prost skips the rest
/// of each span without allocating it.
mod light {
    use opentelemetry_proto::tonic::resource::v1::Resource;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Request {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(string, tag = "5")]
        pub name: String,
    }

    pub fn decode(body: axum::body::Bytes) -> Result<Request, prost::DecodeError> {
        <Request as prost::Message>::decode(body)
    }
}

fn store_light(st: &Store, req: light::Request) {
    if st.counting {
        let mut names = st.names.lock().unwrap();
        for s in req
            .resource_spans
            .into_iter()
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
        {
            *names.entry(s.name).or_default() += 1;
        }
        return;
    }
    let mut out = st.spans.lock().unwrap();
    for rs in req.resource_spans {
        let resource = Arc::new(
            rs.resource
                .map(|r| flatten(&r.attributes))
                .unwrap_or_default(),
        );
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Span {
                    name: s.name,
                    kind: 0,
                    trace_id: Vec::new(),
                    span_id: Vec::new(),
                    parent_span_id: Vec::new(),
                    start_ns: 0,
                    end_ns: 0,
                    attrs: BTreeMap::new(),
                    resource: resource.clone(),
                    status_code: 0,
                    status_message: String::new(),
                    events: Vec::new(),
                    links: Vec::new(),
                });
            }
        }
    }
}
