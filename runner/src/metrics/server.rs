//! The HTTP endpoint: `GET /metrics` (Prometheus text format), `/healthz`
//! (200 while the process runs) and `/readyz` (200 once NATS is connected and
//! every consumer is bound, 503 otherwise).

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::Metrics;
use crate::readiness::Readiness;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Readiness,
}

/// Binds `listen` now (so a taken port is reported at start) and serves in
/// the background.
pub(crate) async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await.map_err(|err| {
        anyhow::anyhow!("cannot listen on {listen} for metrics ([metrics] listen): {err}")
    })?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AppState { metrics, readiness });
    tracing::info!(%listen, "Serving /metrics, /healthz and /readyz.");
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "The metrics server stopped.");
        }
    });
    Ok(())
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    match state.readiness.not_ready_reason() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}
