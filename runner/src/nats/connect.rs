//! The connection: URLs, authentication and TLS from `[nats]`. The runner's
//! reconnects forever, with connection events reflected in
//! `jetrun_nats_connected` and `/readyz`; a one-shot command's gives up
//! after a bounded wait.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use jetrun_config::{NatsAuth, NatsConfig};

use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// Connects in the background: the call returns at once, and the client
/// reconnects forever, so a NATS outage at start or later only delays work.
pub(crate) async fn connect(
    config: &NatsConfig,
    metrics: &Metrics,
    readiness: &Readiness,
) -> anyhow::Result<Client> {
    let (addrs, options) = options(config).await?;
    let mut options = options
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).min(2_000))
        });
    let gauge = metrics.nats_connected.clone();
    let ready = readiness.clone();
    let urls = config.urls.join(", ");
    let failures = Arc::new(AtomicU32::new(0));
    options = options.event_callback(move |event| {
        let gauge = gauge.clone();
        let ready = ready.clone();
        let urls = urls.clone();
        let failures = failures.clone();
        async move {
            match event {
                Event::Connected => {
                    failures.store(0, Ordering::Relaxed);
                    gauge.set(1);
                    ready.set_connected(true);
                    tracing::info!(%urls, "Connected to NATS.");
                }
                Event::Disconnected => {
                    gauge.set(0);
                    ready.set_connected(false);
                    tracing::warn!(
                        %urls,
                        "Disconnected from NATS; reconnecting. Is nats-server running? \
                         For a laptop with no NATS, try `jetrun dev`."
                    );
                }
                Event::ClientError(err) => {
                    // Every failed attempt says so; the first and then one in
                    // thirty are worth a warning (attempts come every 2s at most).
                    let n = failures.fetch_add(1, Ordering::Relaxed);
                    if n % 30 == 0 {
                        tracing::warn!(%urls, error = %err, attempts = n + 1,
                            "Cannot reach NATS; retrying. Is nats-server running at that address? \
                             For a laptop with no NATS, try `jetrun dev`.");
                    }
                }
                other => tracing::info!(event = %other, "NATS connection event."),
            }
        }
    });
    let client = options
        .connect(addrs)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", config.urls.join(", ")))?;
    if client.connection_state() == async_nats::connection::State::Connected {
        metrics.nats_connected.set(1);
        readiness.set_connected(true);
    }
    Ok(client)
}

/// How long a one-shot command waits for its first connection.
const ONE_SHOT_WAIT: Duration = Duration::from_secs(5);

/// Connects once, for a one-shot command (`jetrun dlq`, `jetrun status`):
/// no server answering within [`ONE_SHOT_WAIT`] is an error naming the
/// URLs, not a wait that never ends.
pub(crate) async fn connect_once(config: &NatsConfig) -> anyhow::Result<Client> {
    let wait = ONE_SHOT_WAIT;
    let urls = config.urls.join(", ");
    let (addrs, options) = options(config).await?;
    let options = options.connection_timeout(wait);
    match tokio::time::timeout(wait, options.connect(addrs)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => Err(anyhow::anyhow!(
            "cannot reach NATS at {urls} ({err}); is nats-server running? try `jetrun dev`"
        )),
        Err(_) => Err(anyhow::anyhow!(
            "cannot reach NATS at {urls}: no answer within {}; is nats-server running? \
             try `jetrun dev`",
            humantime::format_duration(wait)
        )),
    }
}

/// The server addresses and what every connection shares: the client name,
/// authentication and TLS from `[nats]`.
async fn options(config: &NatsConfig) -> anyhow::Result<(Vec<ServerAddr>, ConnectOptions)> {
    let addrs = config
        .urls
        .iter()
        .map(|url| {
            url.parse::<ServerAddr>()
                .with_context(|| format!("nats.url {url:?} is not a NATS URL"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut options = ConnectOptions::new().name(format!("jetrun {}", env!("CARGO_PKG_VERSION")));
    options = match &config.auth {
        NatsAuth::None => options,
        NatsAuth::Creds(path) => options
            .credentials_file(path)
            .await
            .with_context(|| format!("cannot read nats.creds file {}", path.display()))?,
        NatsAuth::Nkey(path) => {
            let seed = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read nats.nkey file {}", path.display()))?;
            options.nkey(seed.trim().to_string())
        }
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.clone())
        }
        NatsAuth::Token(token) => options.token(token.clone()),
    };
    if let Some(tls) = &config.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok((addrs, options))
}
