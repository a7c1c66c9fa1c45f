//! The HTTP endpoint: `GET /metrics` (Prometheus text format), `/healthz`
//! (200 while the process runs) and `/readyz` (200 once NATS is connected and
//! every consumer is bound, 503 otherwise; `/metrics` exports the same as
//! `jetrun_ready` and `jetrun_function_bound`). A connection that neither sends
//! nor takes a byte for [`IO_TIMEOUT`] is dropped, so slow or stuck clients
//! cannot pile up.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio_io_timeout::TimeoutStream;

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
    let listener = Timed(listener);
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

/// How long a connection may make no progress, reading or writing.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener, each connection with its read and write timeouts.
struct Timed(TcpListener);

impl axum::serve::Listener for Timed {
    type Io = Pin<Box<TimeoutStream<TcpStream>>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        let mut timed = TimeoutStream::new(stream);
        timed.set_read_timeout(Some(IO_TIMEOUT));
        timed.set_write_timeout(Some(IO_TIMEOUT));
        (Box::pin(timed), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.scrape(&state.readiness),
    )
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    match state.readiness.not_ready_reason() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}
