//! Kubernetes health endpoints (feature `http`, axum).
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /health` | `200 ok` while the process is alive (liveness probe) |
//! | `GET /ready` | `200 ready` while accepting work, `503 shutting down` once shutdown began (readiness probe) |
//! | `POST /shutdown` | starts graceful shutdown, `202` (the preStop hook's target) |
//! | `GET /metrics` | [`Metrics`] in Prometheus text format |
//!
//! **Security.** `POST /shutdown` stops the process for anyone who can reach
//! it. [`HealthServer::spawn`] binds `127.0.0.1` by default
//! ([`DEFAULT_ADDR`]); the kubelet's probes and preStop `httpGet` reach a
//! pod-local address only if you bind `0.0.0.0`, so if you do, keep the port
//! out of every Service and NetworkPolicy: it must never be exposed publicly.
//! The preStop hook can instead `exec` `curl -X POST http://127.0.0.1:PORT/shutdown`
//! inside the container, which works with the loopback default.
//!
//! The server keeps answering while shutdown is in progress (so `/ready`
//! can report 503); stop it with [`HealthServer::stop`] after the work is done.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use super::error::Error;
use super::metrics::Metrics;
use super::shutdown::Shutdown;

/// Loopback only by default: `POST /shutdown` must not be reachable from outside.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

#[derive(Clone)]
struct AppState {
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
}

/// The router with the four endpoints, for embedding into an existing axum app.
pub fn router(shutdown: Shutdown, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/shutdown", post(request_shutdown))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { shutdown, metrics })
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.shutdown.is_triggered() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn request_shutdown(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.shutdown.trigger() {
        (StatusCode::ACCEPTED, "shutdown started\n")
    } else {
        (StatusCode::ACCEPTED, "shutdown already in progress\n")
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(Some(&s.shutdown)),
    )
}

/// A running health server.
#[derive(Debug)]
pub struct HealthServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HealthServer {
    /// Binds `addr` (e.g. [`DEFAULT_ADDR`], or `127.0.0.1:0` for any free
    /// port) and serves on the current tokio runtime.
    pub async fn spawn(
        addr: &str,
        shutdown: Shutdown,
        metrics: Arc<Metrics>,
    ) -> Result<HealthServer, Error> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Http {
                addr: addr.to_string(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| Error::Http {
            addr: addr.to_string(),
            source,
        })?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(shutdown, metrics);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
        });
        Ok(HealthServer {
            addr: local,
            stop: Some(tx),
            task,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits for the server task.
    pub async fn stop(mut self) -> Result<(), Error> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let addr = self.addr.to_string();
        match (&mut self.task).await {
            Ok(r) => r.map_err(|source| Error::Http { addr, source }),
            Err(e) => Err(Error::Http {
                addr,
                source: std::io::Error::other(e),
            }),
        }
    }
}
