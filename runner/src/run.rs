//! `jetrun run`: connect, make the streams, start every function, serve
//! metrics, and on SIGTERM or SIGINT drain: stop pulling, let events in
//! flight finish (up to `shutdown_timeout`), NAK what is left, exit 0.

use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config_file::Loaded;
use crate::delivery::{self, Stop};
use crate::metrics::{self, Metrics};
use crate::nats;
use crate::readiness::Readiness;

/// Pause between attempts to set up the streams while NATS is unreachable.
const SETUP_RETRY: Duration = Duration::from_secs(1);
/// How long the final flush of acks may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn run(loaded: Loaded, _source: crate::reload::Source) -> anyhow::Result<()> {
    run_until(loaded, shutdown_signal()).await
}

/// Runs until `shutdown` resolves, then drains.
pub(crate) async fn run_until(
    loaded: Loaded,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let Loaded {
        config,
        functions: handlers,
    } = loaded;
    let metrics = Metrics::new();
    let readiness = Readiness::new(config.functions.keys());
    metrics::serve(config.metrics.listen, metrics.clone(), readiness.clone()).await?;
    let client = nats::connect(&config.nats, &metrics, &readiness).await?;
    let js = async_nats::jetstream::new(client.clone());

    tokio::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            result = nats::ensure_streams(&js, &config) => match result {
                Ok(()) => break,
                Err(err) => {
                    failures += 1;
                    if failures == 1 || failures % 30 == 0 {
                        tracing::warn!(error = %format!("{err:#}"), urls = %config.nats.urls.join(", "),
                            "Cannot set up streams yet; retrying. Is nats-server running with JetStream (-js)?");
                    }
                    tokio::time::sleep(SETUP_RETRY).await;
                }
            },
            () = &mut shutdown => return Ok(()),
        }
    }

    let (draining_tx, draining) = watch::channel(false);
    let (abandon_tx, abandon) = watch::channel(false);
    let stop = Stop { draining, abandon };
    let mut functions = JoinSet::new();
    for (function, handler) in handlers {
        let function_metrics = metrics.for_function(&function.name);
        functions.spawn(delivery::run(
            function,
            handler,
            js.clone(),
            function_metrics,
            readiness.clone(),
            stop.clone(),
        ));
    }
    tracing::info!(functions = config.functions.len(), "jetrun is running.");

    shutdown.await;
    tracing::info!(
        "Shutting down: no new events; waiting up to {} for events in flight.",
        humantime::format_duration(config.shutdown_timeout)
    );
    let _ = draining_tx.send(true);
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        while functions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("Shutdown timeout reached; NAKing events still in flight.");
        let _ = abandon_tx.send(true);
        while functions.join_next().await.is_some() {}
    }
    // The last acks are queued in the client: send them, unless NATS is gone
    // (then JetStream redelivers those events after their ack wait).
    match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
        Ok(result) => result.context("cannot flush the last acks to NATS")?,
        Err(_) => tracing::warn!(
            "NATS is unreachable; the last acks may be lost and their events redelivered."
        ),
    }
    tracing::info!("Stopped.");
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(%err, "Cannot listen for SIGTERM.");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
