//! OTLP/gRPC: the request export::otlp encoded, sent as it is through a raw
//! codec on a tonic channel, so gRPC shares the encoder, the retries and the
//! spool with HTTP. Status codes are judged as the OTLP specification says.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::Channel,
    Code, Status,
};
use tonic_types::StatusExt;

use crate::export::{retry::Failure, transport::Transport};

pub const TRACES: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
pub const METRICS: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// The gRPC endpoint: the flag, else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else
/// OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317 (no path appended: gRPC
/// paths come from the service).
pub fn endpoint(flag: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> String {
    flag.map(str::to_string)
        .filter(|e| !e.is_empty())
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .unwrap_or_else(|| "http://localhost:4317".into())
}

pub struct Grpc {
    channel: Channel,
    runtime: tokio::runtime::Handle,
    metadata: MetadataMap,
    timeout: Duration,
    endpoint: String,
    /// The service method (traces or metrics).
    path: &'static str,
}

impl Grpc {
    /// The channel connects at the first export (and again after failures).
    pub fn new(
        endpoint: String,
        headers: &[(String, String)],
        timeout: Duration,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Self> {
        let _guard = runtime.enter();
        let channel = Channel::from_shared(endpoint.clone())
            .map_err(|e| anyhow::anyhow!("OTLP endpoint {endpoint:?}: {e}"))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        let mut metadata = MetadataMap::new();
        for (k, v) in headers {
            let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|_| anyhow::anyhow!("OTLP header {k:?}: not a gRPC metadata key"))?;
            let value = MetadataValue::try_from(v.as_str())
                .map_err(|_| anyhow::anyhow!("OTLP header {k:?}: not a gRPC metadata value"))?;
            metadata.append(key, value);
        }
        Ok(Grpc {
            channel,
            runtime,
            metadata,
            timeout,
            endpoint,
            path: TRACES,
        })
    }
}

impl Grpc {
    /// The same channel settings for another signal's service.
    pub fn for_metrics(mut self) -> Self {
        self.path = METRICS;
        self
    }
}

impl Transport for Grpc {
    fn send(&self, body: &Bytes) -> Result<(), Failure> {
        let mut req = tonic::Request::new(body.clone());
        *req.metadata_mut() = self.metadata.clone();
        req.set_timeout(self.timeout);
        let mut client = tonic::client::Grpc::new(self.channel.clone());
        let path = self.path;
        let result = self.runtime.block_on(async move {
            client.ready().await.map_err(|e| {
                let e: tonic::codegen::StdError = e.into();
                Status::unavailable(crate::export::transport::error_chain(&*e))
            })?;
            client
                .unary(req, PathAndQuery::from_static(path), Raw)
                .await
        });
        result.map(drop).map_err(|s| judge(&s, self.timeout))
    }

    fn target(&self) -> &str {
        &self.endpoint
    }
}

/// The OTLP specification's retryable codes; RESOURCE_EXHAUSTED only when the
/// server says when to come back (RetryInfo).
pub fn judge(s: &Status, timeout: Duration) -> Failure {
    let after = s.get_details_retry_info().and_then(|r| r.retry_delay);
    let why = match s.code() {
        Code::DeadlineExceeded => format!("timed out after {} s", timeout.as_secs_f64()),
        c => format!("{c:?}: {}", s.message()),
    };
    match s.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Failure::retryable(why, after),
        Code::ResourceExhausted if after.is_some() => Failure::retryable(why, after),
        _ => Failure::permanent(why),
    }
}

/// Bytes in, bytes out: the request is already protobuf; the response's
/// partial_success is not read.
#[derive(Clone, Copy)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::{ErrorDetails, StatusExt};

    use super::*;

    #[test]
    fn codes_are_judged_as_the_otlp_specification_says() {
        let t = Duration::from_secs(10);
        assert!(judge(&Status::unavailable("down"), t).retryable);
        assert!(!judge(&Status::invalid_argument("bad"), t).retryable);
        assert!(!judge(&Status::unauthenticated("who"), t).retryable);
        // RESOURCE_EXHAUSTED: only with RetryInfo, whose delay is honoured.
        assert!(!judge(&Status::resource_exhausted("full"), t).retryable);
        let s = Status::with_error_details(
            Code::ResourceExhausted,
            "full",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(2))),
        );
        let f = judge(&s, t);
        assert!(f.retryable);
        assert_eq!(f.after, Some(Duration::from_secs(2)));
        let f = judge(&Status::deadline_exceeded("late"), t);
        assert_eq!(
            (f.retryable, f.why.as_str()),
            (true, "timed out after 10 s")
        );
    }

    #[test]
    fn the_endpoint_follows_the_otlp_variables() {
        let none = |_: &str| None;
        assert_eq!(endpoint(None, &none), "http://localhost:4317");
        assert_eq!(endpoint(Some("http://c:1"), &none), "http://c:1");
        let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://g:2".to_string());
        assert_eq!(endpoint(None, &env), "http://g:2");
        assert_eq!(endpoint(Some(""), &env), "http://g:2");
    }
}
