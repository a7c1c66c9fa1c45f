//! `jetrun run`: connect, make the streams, start every function, serve
//! metrics, reload the config on SIGHUP (or `--watch`), and on SIGTERM or
//! SIGINT drain: stop pulling, let events in flight finish (up to
//! `shutdown_timeout`), NAK what is left, exit 0.

use std::time::Duration;

use crate::config_file::Loaded;
use crate::metrics::{self, Metrics};
use crate::nats;
use crate::readiness::Readiness;
use crate::reload::{self, Source, Triggers};
use crate::supervisor::Supervisor;
use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

/// Pause between attempts to set up the streams while NATS is unreachable.
const SETUP_RETRY: Duration = Duration::from_secs(1);
/// How long the final flush of acks may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until SIGTERM or SIGINT, reloading the config when asked, then drains.
pub(crate) async fn run(loaded: Loaded, source: Source) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    // Listen for SIGHUP from the start: its default action would kill us.
    let mut triggers = Triggers::new(&source);
    let Loaded { config, functions } = loaded;
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
                Err(err) if err.downcast_ref::<nats::StreamConflict>().is_some() => return Err(err),
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

    let mut supervisor = Supervisor::new(
        js.clone(),
        metrics.clone(),
        readiness.clone(),
        config.shutdown_timeout,
    );
    for (function, handler) in functions {
        supervisor.start(function, handler);
    }
    // Sagas run from start to shutdown; a reload leaves them as they are.
    let (stop_sagas, sagas_stopping) = tokio::sync::watch::channel(false);
    let mut sagas = tokio::task::JoinSet::new();
    for saga in config.sagas.values() {
        sagas.spawn(crate::saga::run(
            saga.clone(),
            config.streams.clone(),
            js.clone(),
            metrics.for_saga(&saga.name),
            readiness.clone(),
            sagas_stopping.clone(),
        ));
    }
    tracing::info!(
        functions = config.functions.len(),
        sagas = config.sagas.len(),
        "jetrun is running."
    );

    let mut config = config;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = triggers.next() => {
                config = reload::reload(&source.path, config, &mut supervisor, &js, &metrics).await;
            }
        }
    }
    tracing::info!(
        "Shutting down: no new events; waiting up to {} for events in flight.",
        humantime::format_duration(config.shutdown_timeout)
    );
    supervisor.stop_all().await;
    let _ = stop_sagas.send(true);
    while sagas.join_next().await.is_some() {}
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
async fn shutdown_signal() {
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
