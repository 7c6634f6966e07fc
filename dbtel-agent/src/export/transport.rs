//! Where encoded OTLP requests go: one try of one request, over HTTP or gRPC.
//! Retries (retry.rs) and the spool (spool.rs) are built on a single try, so
//! both protocols get the same ones.

use std::time::Duration;

use bytes::Bytes;

use crate::export::retry::Failure;

/// One try of one ExportTraceServiceRequest. Shared by every export thread
/// and the spool's: one connection pool for the agent.
pub trait Transport: Send + Sync {
    fn send(&self, body: &Bytes) -> Result<(), Failure>;
    /// The collector, as logs name it.
    fn target(&self) -> &str;
}

/// OTLP/HTTP with a protobuf body.
#[derive(Debug)]
pub struct Http {
    /// Built on an export thread at the first try: reqwest's blocking client
    /// may not be built inside the agent's tokio runtime.
    client: std::sync::OnceLock<Result<reqwest::blocking::Client, String>>,
    timeout: Duration,
    url: String,
    headers: Vec<(String, String)>,
}

impl Http {
    pub fn new(url: String, headers: Vec<(String, String)>, timeout: Duration) -> Self {
        Http {
            client: std::sync::OnceLock::new(),
            timeout,
            url,
            headers,
        }
    }
}

impl Transport for Http {
    fn send(&self, body: &Bytes) -> Result<(), Failure> {
        let client = self
            .client
            .get_or_init(|| {
                reqwest::blocking::Client::builder()
                    .timeout(self.timeout)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Failure::permanent(format!("cannot build the HTTP client: {e}")))?;
        let mut req = client
            .post(&self.url)
            .header("content-type", "application/x-protobuf")
            .body(body.clone());
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.send() {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let why = format!("answered {}", r.status());
                if matches!(r.status().as_u16(), 429 | 502 | 503 | 504) {
                    Err(Failure::retryable(why, after))
                } else {
                    Err(Failure::permanent(why))
                }
            }
            Err(e) if e.is_timeout() => Err(Failure::retryable(
                format!("timed out after {} s", self.timeout.as_secs_f64()),
                None,
            )),
            Err(e) => Err(Failure::retryable(error_chain(&e), None)),
        }
    }

    fn target(&self) -> &str {
        &self.url
    }
}

/// An error and its causes: reqwest's own text ("error sending request")
/// says nothing of why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cause = c.source();
    }
    s
}
