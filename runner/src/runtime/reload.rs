//! Reloading the config while running: on SIGHUP, and with `--watch` when
//! the file changes (its modification time or size, polled every second).
//! A config that does not validate is logged, every error with its key path
//! and line, and the running one stays; a good one is applied part by part,
//! functions and sagas (see `supervisor`), then the stored schedules are
//! made to match it (see `schedule`). `jetrun_config_reloads_total{result}` counts
//! both.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use jetrun_config::Config;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::config_file;
use super::supervisor::Supervisor;
use crate::metrics::Metrics;
use crate::nats;

/// How often `--watch` looks at the file.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Where the config comes from, and whether to watch it.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) path: PathBuf,
    pub(crate) watch: bool,
    /// The connection the command line and environment give, over the
    /// file's `[nats]` (a `nats` context only when named).
    pub(crate) connection: crate::nats::settings::Given,
}

/// What asks for a reload: SIGHUP, and the file changing under `--watch`.
pub(crate) struct Triggers {
    hangup: Option<Signal>,
    watched: Option<(PathBuf, Option<(SystemTime, u64)>)>,
}

impl Triggers {
    pub(crate) fn new(source: &Source) -> Self {
        let hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(err) => {
                tracing::warn!(%err, "Cannot listen for SIGHUP; reload on signal is off.");
                None
            }
        };
        let watched = source
            .watch
            .then(|| (source.path.clone(), stamp(&source.path)));
        Triggers { hangup, watched }
    }

    /// Resolves when a reload is due.
    pub(crate) async fn next(&mut self) {
        let hangup = async {
            match self.hangup.as_mut() {
                Some(s) => {
                    s.recv().await;
                    tracing::info!("SIGHUP: reloading the config.");
                }
                None => std::future::pending().await,
            }
        };
        let changed = async {
            let Some((path, last)) = self.watched.as_mut() else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                let now = stamp(path);
                if now != *last {
                    *last = now;
                    tracing::info!(path = %path.display(), "Config file changed: reloading it.");
                    return;
                }
            }
        };
        tokio::select! {
            () = hangup => {}
            () = changed => {}
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reads `path` again and, when it validates, moves the running functions
/// to it. Returns the config now in force.
pub(crate) async fn reload(
    path: &Path,
    current: Config,
    supervisor: &mut Supervisor,
    js: &async_nats::jetstream::Context,
    metrics: &Metrics,
) -> Config {
    let loaded = match config_file::read(path) {
        Ok(loaded) => loaded,
        Err(errors) => {
            for error in &errors {
                tracing::error!(%error, "Config reload refused; the running config stays.");
            }
            metrics.reloaded(false);
            return current;
        }
    };
    let config = loaded.config;
    for warning in &config.warnings {
        tracing::warn!(%warning, "The new config is valid, but likely not what is meant.");
    }
    if config.nats != current.nats
        || config.metrics != current.metrics
        || config.service != current.service
        || config.telemetry != current.telemetry
    {
        tracing::warn!(
            "[nats], [metrics], [service] and [telemetry] changes take effect at the next \
             restart; the rest is reloaded."
        );
    }
    if let Err(why) = crate::schedule::check_server(&config, &js.client().server_info().version) {
        tracing::error!(error = %why, "Config reload refused; the running config stays.");
        metrics.reloaded(false);
        return current;
    }
    let schedules = match nats::ensure_streams(js, &config).await {
        Ok(schedules) => schedules,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "Config reload refused: cannot set up its streams; the running config stays.");
            metrics.reloaded(false);
            return current;
        }
    };
    supervisor.set_drain_timeout(config.shutdown_timeout);
    let changes = supervisor.apply(&config, loaded.functions).await;
    // A schedules stream this reload could not confirm (a NATS hiccup)
    // leaves the relay running as it was.
    if schedules {
        supervisor
            .relay_delayed(Some(crate::delayed::RelayAt::of(&config)))
            .await;
    }
    // The stored schedules follow the functions now running; what fails is
    // tried again at the next reload or start.
    if let Err(err) = crate::schedule::reconcile(js, &config).await {
        tracing::error!(error = %format!("{err:#}"), "Cannot make the stored schedules match the config.");
    }
    metrics.reloaded(true);
    let (functions, sagas) = (&changes.functions, &changes.sagas);
    tracing::info!(
        added = ?functions.added,
        removed = ?functions.removed,
        changed = ?functions.changed,
        unchanged = functions.unchanged,
        sagas_added = ?sagas.added,
        sagas_removed = ?sagas.removed,
        sagas_changed = ?sagas.changed,
        "Config reloaded."
    );
    config
}
