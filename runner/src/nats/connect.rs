//! The connection: URLs, authentication and TLS from `[nats]`. The runner's
//! reconnects forever, with connection events reflected in
//! `jetrun_nats_connected` and `/readyz`; a one-shot command's gives up
//! after a bounded wait. Refused credentials and permission violations are
//! logged as such, naming the URLs and the auth method, never the secret.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::{
    Client, ClientError, ConnectErrorKind, ConnectOptions, Event, ServerAddr, ServerError,
};
use jetrun_config::{NatsAuth, NatsConfig};

use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::redact;

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
    let urls = redact::urls(&config.urls);
    let method = auth_method(&config.auth);
    let failures = Arc::new(AtomicU32::new(0));
    let refusals = Arc::new(AtomicU32::new(0));
    options = options.event_callback(move |event| {
        let gauge = gauge.clone();
        let ready = ready.clone();
        let urls = urls.clone();
        let method = method.clone();
        let failures = failures.clone();
        let refusals = refusals.clone();
        async move {
            match event {
                Event::Connected => {
                    failures.store(0, Ordering::Relaxed);
                    refusals.store(0, Ordering::Relaxed);
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
                // Every failed attempt says so; the first and then one in
                // thirty are worth a line (attempts come every 2s at most).
                Event::ClientError(err) => match refusal(&err) {
                    Some(refusal) => {
                        let n = refusals.fetch_add(1, Ordering::Relaxed);
                        if n % 30 == 0 {
                            tracing::error!(
                                attempts = n + 1,
                                "{}. Retrying.",
                                refused(refusal, &urls, &method)
                            );
                        }
                    }
                    None => {
                        let n = failures.fetch_add(1, Ordering::Relaxed);
                        if n % 30 == 0 {
                            let error = redact::text(&err.to_string());
                            tracing::warn!(%urls, %error, attempts = n + 1,
                                "Cannot reach NATS; retrying. Is nats-server running at that address? \
                                 For a laptop with no NATS, try `jetrun dev`.");
                        }
                    }
                },
                Event::ServerError(ServerError::AuthorizationViolation) => {
                    tracing::error!("{}.", refused(AUTHORIZATION_VIOLATION, &urls, &method));
                }
                Event::ServerError(ServerError::Other(message)) => {
                    match permission_violation(&message) {
                        Some((operation, subject)) => tracing::error!(
                            %subject,
                            "NATS denied permission to {operation} {subject} ({method}); the \
                             server dropped the message. Grant that permission to jetrun's NATS user \
                             in the server's authorization config."
                        ),
                        None => tracing::warn!(%urls, error = %redact::text(&message), "NATS reported an error."),
                    }
                }
                other => tracing::info!(event = %other, "NATS connection event."),
            }
        }
    });
    let client = options
        .connect(addrs)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", redact::urls(&config.urls)))?;
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
    let urls = redact::urls(&config.urls);
    let (addrs, options) = options(config).await?;
    let options = options.connection_timeout(wait);
    match tokio::time::timeout(wait, options.connect(addrs)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => match refusal_of(err.kind()) {
            Some(refusal) => Err(anyhow::anyhow!(
                "{}",
                refused(refusal, &urls, &auth_method(&config.auth))
            )),
            None => Err(anyhow::anyhow!(
                "cannot reach NATS at {urls} ({}); is nats-server running? try `jetrun dev`",
                redact::text(&err.to_string())
            )),
        },
        Err(_) => Err(anyhow::anyhow!(
            "cannot reach NATS at {urls}: no answer within {}; is nats-server running? \
             try `jetrun dev`",
            humantime::format_duration(wait)
        )),
    }
}

const AUTHORIZATION_VIOLATION: &str = "authorization violation";
const CANNOT_SIGN: &str = "cannot sign the server's nonce with the nkey";

/// What to call a failed connection attempt that is the server refusing the
/// credentials (rather than not answering); `None` for any other failure.
/// async-nats reports the kind of error only as text in `ClientError`.
fn refusal(err: &ClientError) -> Option<&'static str> {
    let ClientError::Other(kind) = err else {
        return None;
    };
    [
        ConnectErrorKind::AuthorizationViolation,
        ConnectErrorKind::Authentication,
    ]
    .into_iter()
    .find(|k| k.to_string() == *kind)
    .and_then(refusal_of)
}

fn refusal_of(kind: ConnectErrorKind) -> Option<&'static str> {
    match kind {
        ConnectErrorKind::AuthorizationViolation => Some(AUTHORIZATION_VIOLATION),
        ConnectErrorKind::Authentication => Some(CANNOT_SIGN),
        _ => None,
    }
}

/// `authorization violation at nats://host:4222 (token auth): NATS refused
/// jetrun's credentials; ...`.
fn refused(refusal: &str, urls: &str, method: &str) -> String {
    format!(
        "{refusal} at {urls} ({method}): NATS refused jetrun's credentials; check [nats] \
         against the server's authorization config"
    )
}

/// How `[nats]` authenticates, for messages: the method and what is not
/// secret about it (the user name, the file), never the password, token,
/// seed or JWT.
fn auth_method(auth: &NatsAuth) -> String {
    match auth {
        NatsAuth::None => "no auth".into(),
        NatsAuth::Creds(path) => format!("creds file auth, {}", path.display()),
        NatsAuth::Nkey(path) => format!("nkey auth, seed file {}", path.display()),
        NatsAuth::UserPassword { user, .. } => format!("user/password auth, user {user:?}"),
        NatsAuth::Token(_) => "token auth".into(),
    }
}

/// nats-server's `Permissions Violation for Publish to "ev.x"` as
/// `("publish to", "ev.x")`; `None` for any other error.
fn permission_violation(message: &str) -> Option<(String, &str)> {
    let rest = message.strip_prefix("Permissions Violation for ")?;
    let (operation, quoted) = rest.split_once('"')?;
    let (subject, _) = quoted.split_once('"')?;
    let operation = match operation.trim().to_lowercase().as_str() {
        "subscription to" => "subscribe to".to_string(),
        other => other.to_string(),
    };
    Some((operation, subject))
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_refusal_is_told_from_an_unreachable_server() {
        let violation = ClientError::Other(ConnectErrorKind::AuthorizationViolation.to_string());
        assert_eq!(refusal(&violation), Some("authorization violation"));
        let unsigned = ClientError::Other(ConnectErrorKind::Authentication.to_string());
        assert_eq!(refusal(&unsigned), Some(CANNOT_SIGN));
        let io = ClientError::Other(ConnectErrorKind::Io.to_string());
        assert_eq!(refusal(&io), None);
        assert_eq!(refusal(&ClientError::MaxReconnects), None);
    }

    #[test]
    fn the_auth_method_is_named_without_its_secret() {
        let methods = [
            (NatsAuth::None, "no auth"),
            (
                NatsAuth::Creds(PathBuf::from("/etc/jetrun/app.creds")),
                "creds file auth, /etc/jetrun/app.creds",
            ),
            (
                NatsAuth::Nkey(PathBuf::from("app.nk")),
                "nkey auth, seed file app.nk",
            ),
            (
                NatsAuth::UserPassword {
                    user: "app".into(),
                    password: "s3cret".into(),
                },
                "user/password auth, user \"app\"",
            ),
            (NatsAuth::Token("t0ken".into()), "token auth"),
        ];
        for (auth, expected) in methods {
            assert_eq!(auth_method(&auth), expected);
        }
        assert_eq!(
            refused(
                "authorization violation",
                "nats://127.0.0.1:4222",
                "token auth"
            ),
            "authorization violation at nats://127.0.0.1:4222 (token auth): NATS refused \
             jetrun's credentials; check [nats] against the server's authorization config"
        );
    }

    #[test]
    fn a_permissions_violation_names_the_operation_and_subject() {
        assert_eq!(
            permission_violation(r#"Permissions Violation for Publish to "ev.in.echoed""#),
            Some(("publish to".to_string(), "ev.in.echoed"))
        );
        assert_eq!(
            permission_violation(
                r#"Permissions Violation for Subscription to "ev.>" using queue "q""#
            ),
            Some(("subscribe to".to_string(), "ev.>"))
        );
        assert_eq!(permission_violation("Maximum Payload Violation"), None);
    }
}
