//! The admin HTTP endpoint every IoT Cloud process serves (operator and workers alike):
//! `/livez` (the process runs and is not stuck), `/readyz` (it has done its first sync or reached
//! its brokers),
//! `/metrics` (Prometheus text format from the process's own metrics registry).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Readiness shared between the work loop (which sets it) and the admin endpoint (which reports it).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Liveness: true unless the process found itself stuck (then Kubernetes restarts it).
#[derive(Clone, Debug)]
pub struct Liveness(Arc<AtomicBool>);

impl Default for Liveness {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl Liveness {
    pub fn set(&self, live: bool) {
        self.0.store(live, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    liveness: Liveness,
    metrics: Registry,
}

/// The admin routes, to serve alone ([`serve`]) or merged into a larger router (the dashboard);
/// `/livez` always answers ok.
pub fn router(readiness: Readiness, metrics: Registry) -> Router {
    router_with_liveness(readiness, Liveness::default(), metrics)
}

/// The admin routes with a `/livez` that fails (503) while `liveness` is false.
pub fn router_with_liveness(readiness: Readiness, liveness: Liveness, metrics: Registry) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState {
            readiness,
            liveness,
            metrics,
        })
}

async fn livez(State(s): State<AdminState>) -> impl IntoResponse {
    if s.liveness.get() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stuck")
    }
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.readiness.get() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&s.metrics.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Binds `addr` and serves `router` until `shutdown` resolves. Binding errors are returned at once
/// so a process with a taken admin port fails at start-up instead of running unobservable.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoint listening");
    Ok(tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    }))
}
