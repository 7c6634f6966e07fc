//! `--http-address`: the agent's HTTP listener. `/healthz` and `/readyz`
//! answer 503 `starting` until every probe is attached, 200 `ok` while
//! tracing, 503 `stopping` once the agent stops; other paths 404. Other
//! endpoints (metrics) are added to [`router`]'s result.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
};

use anyhow::anyhow;
use axum::{extract::State, http::StatusCode, routing::get, Router};

/// The agent's phase, as the health endpoints report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting = 0,
    Ready = 1,
    Stopping = 2,
}

/// Shared between the main loop (which moves it on) and the listener.
#[derive(Debug, Default)]
pub struct Health {
    phase: AtomicU8,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::default()
    }

    /// Every probe is attached: tracing.
    pub fn set_ready(&self) {
        // Never back from stopping.
        let _ = self.phase.compare_exchange(
            Phase::Starting as u8,
            Phase::Ready as u8,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }

    /// The agent has begun to stop (signal, or no traced process left).
    pub fn set_stopping(&self) {
        self.phase.store(Phase::Stopping as u8, Ordering::Release);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Stopping,
        }
    }
}

async fn health_answer(State(h): State<Arc<Health>>) -> (StatusCode, &'static str) {
    match h.phase() {
        Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        Phase::Ready => (StatusCode::OK, "ok\n"),
        Phase::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
    }
}

async fn metrics_answer(
    State(m): State<Arc<crate::metrics::Shared>>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let text = m.prometheus_text();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::prometheus::CONTENT_TYPE,
        )],
        text,
    )
}

/// The routes: `/healthz`, `/readyz` (same answer, for Kubernetes probes),
/// `/metrics` (Prometheus text). Unknown paths get axum's 404.
pub fn router(health: Arc<Health>, metrics: Arc<crate::metrics::Shared>) -> Router {
    let metrics = Router::new()
        .route("/metrics", get(metrics_answer))
        .with_state(metrics);
    Router::new()
        .route("/healthz", get(health_answer))
        .route("/readyz", get(health_answer))
        .with_state(health)
        .merge(metrics)
}

/// Binds the listener (inside the runtime). The error is one line naming the address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow!("--http-address {addr}: cannot listen: {e}"))
}

/// Serves `router` on `listener` until the runtime ends.
pub fn spawn(listener: tokio::net::TcpListener, router: Router) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            log::warn!("http listener: {e}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        let status = resp.split(' ').nth(1).unwrap().parse().unwrap();
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn phases_only_move_forward() {
        let h = Health::new();
        assert_eq!(h.phase(), Phase::Starting);
        h.set_ready();
        assert_eq!(h.phase(), Phase::Ready);
        h.set_stopping();
        h.set_ready();
        assert_eq!(h.phase(), Phase::Stopping);
    }

    #[tokio::test]
    async fn healthz_follows_the_phase() {
        let h = Health::new();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = spawn(listener, router(h.clone(), Arc::default()));
        for path in ["/healthz", "/readyz"] {
            assert_eq!(get(addr, path).await, (503, "starting\n".into()));
        }
        h.set_ready();
        for path in ["/healthz", "/readyz"] {
            assert_eq!(get(addr, path).await, (200, "ok\n".into()));
        }
        assert_eq!(get(addr, "/metricz").await.0, 404);
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("# TYPE db_query_duration histogram\n"),
            "{body}"
        );
        h.set_stopping();
        assert_eq!(get(addr, "/healthz").await, (503, "stopping\n".into()));
    }

    #[tokio::test]
    async fn bind_failure_is_one_line() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind(addr).await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--http-address {addr}: cannot listen: ")) && !e.contains('\n'),
            "{e}"
        );
    }
}
