//! `jetrun run`: connect (refusing a server too old for the config's
//! schedules), make the streams and store the schedules, start every function, serve
//! metrics, reload the config on SIGHUP (or `--watch`), and on SIGTERM or
//! SIGINT drain: stop pulling, let events in flight finish (up to
//! `shutdown_timeout`), NAK what is left, exit 0.

use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

use super::config_file::Loaded;
use super::reload::{self, Source, Triggers};
use super::supervisor::Supervisor;
use crate::metrics::{self, Metrics};
use crate::nats::{self, StreamConflict};
use crate::readiness::Readiness;
use crate::shutdown::{retry_until, Control};

/// How long a start waits quietly for its first connection to NATS.
const CONNECT_GRACE: Duration = Duration::from_secs(2);

/// How long the final flush of acks may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until SIGTERM or SIGINT, reloading the config when asked, then drains.
pub(crate) async fn run(loaded: Loaded, source: Source) -> anyhow::Result<()> {
    let (signalled, shutdown) = Control::new();
    tokio::spawn(async move {
        shutdown_signal().await;
        signalled.drain();
    });
    // Listen for SIGHUP from the start: its default action would kill us.
    let mut triggers = Triggers::new(&source);
    let Loaded { config, functions } = loaded;
    for warning in &config.warnings {
        tracing::warn!(%warning, "The config is valid, but likely not what is meant.");
    }
    let metrics = Metrics::new();
    // Not ready until every function and saga consumer is bound.
    let parts: Vec<String> = (config.functions.keys().cloned())
        .chain(
            config
                .sagas
                .values()
                .flat_map(crate::saga::units)
                .map(|u| u.name),
        )
        .collect();
    let readiness = Readiness::new(&parts);
    metrics::serve(config.metrics.listen, metrics.clone(), readiness.clone()).await?;
    let connection = nats::settings::resolve(
        Some(&config.nats),
        &source.connection,
        nats::settings::Selected::Ignore,
        &nats::settings::Process,
    )
    .map_err(anyhow::Error::msg)?;
    let client = nats::connect(&connection, &metrics, &readiness).await?;
    let js = async_nats::jetstream::new(client.clone());
    // The first connection is made in the background: give it a moment
    // before the setup below says it is waiting.
    let connecting = tokio::time::Instant::now();
    while client.server_info().version.is_empty()
        && connecting.elapsed() < CONNECT_GRACE
        && !shutdown.is_draining()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let urls = crate::redact::urls(&connection.urls);
    let what =
        format!("set up the streams at {urls} (is nats-server running there with JetStream, -js?)");
    let setup = retry_until(&what, &shutdown, || async {
        // The server says its version once connected (the first connection
        // is made in the background). Before anything is made: a schedule
        // this server cannot run is a person's to fix.
        let version = client.server_info().version;
        if version.is_empty() {
            return Err("not connected yet".to_string());
        }
        if let Err(why) = crate::schedule::check_server(&config, &version) {
            return Ok(Err(anyhow::Error::msg(why)));
        }
        match nats::ensure_streams(&js, &config).await {
            // Retrying cannot help: a person has to choose.
            Err(err) if err.downcast_ref::<StreamConflict>().is_some() => Ok(Err(err)),
            Err(err) => Err(format!("{err:#}")),
            Ok(schedules) => match crate::schedule::reconcile(&js, &config).await {
                Err(err) => Err(format!("{err:#}")),
                Ok(()) => Ok(Ok(schedules)),
            },
        }
    })
    .await;
    let schedules = match setup {
        None => return Ok(()),
        Some(Err(conflict)) => return Err(conflict),
        Some(Ok(schedules)) => schedules,
    };

    let mut supervisor = Supervisor::new(
        js.clone(),
        metrics.clone(),
        readiness.clone(),
        config.shutdown_timeout,
        &config.service.name,
    );
    supervisor.apply(&config, functions).await;
    supervisor
        .relay_delayed(schedules.then(|| crate::delayed::RelayAt::of(&config)))
        .await;
    tracing::info!(
        functions = config.functions.len(),
        sagas = config.sagas.len(),
        "jetrun is running."
    );

    let mut config = config;
    loop {
        tokio::select! {
            () = shutdown.draining() => break,
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
    // The spans of the last events, when telemetry is on.
    crate::telemetry::shutdown().await;
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
