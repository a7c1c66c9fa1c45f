//! What every verb does before its own work, and after: load the config
//! (every error printed, exit status 2, before NATS is touched), connect to
//! NATS once, and turn the outcome into an exit status.

use std::path::Path;
use std::process::ExitCode;

use async_nats::jetstream;
use jetrun_config::{Config, NatsConfig};

use crate::runtime::config_file::{self, Loaded};

/// Exit status for a usage or config error.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit status when interrupted (128 + SIGINT).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// Why a verb stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Stopped {
    /// The command line or the config asks for what cannot be: exit 2.
    #[error("{0}")]
    Usage(String),
    /// NATS or the work itself failed: exit 1.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Reads and validates the config file, printing every error: exit status
/// 2 when it is not usable.
pub(crate) fn load(path: &Path) -> Result<Loaded, ExitCode> {
    config_file::read(path).map_err(|errors| {
        eprintln!("jetrun: {} is not valid:", path.display());
        for error in &errors {
            eprintln!("  {error}");
        }
        ExitCode::from(EXIT_USAGE)
    })
}

/// A connection for one command, which gives up after a bounded wait.
pub(crate) async fn connect(nats: &NatsConfig) -> anyhow::Result<jetstream::Context> {
    let client = crate::nats::connect_once(nats).await?;
    Ok(jetstream::new(client))
}

/// `function` of `config` (as loaded from `path`), or a usage error naming
/// the functions it has.
pub(crate) fn function<'a>(
    config: &'a Config,
    path: &Path,
    function: &str,
) -> Result<&'a jetrun_config::FunctionConfig, Stopped> {
    config.functions.get(function).ok_or_else(|| {
        let known: Vec<&str> = config.functions.keys().map(String::as_str).collect();
        Stopped::Usage(format!(
            "{} declares no function {function:?}; its functions: {}",
            path.display(),
            known.join(", ")
        ))
    })
}

/// The exit status of a verb's outcome, its error printed.
pub(crate) fn exit(outcome: Result<ExitCode, Stopped>) -> ExitCode {
    match outcome {
        Ok(code) => code,
        Err(Stopped::Usage(why)) => {
            eprintln!("jetrun: {}", crate::redact::text(&why));
            ExitCode::from(EXIT_USAGE)
        }
        Err(Stopped::Failed(err)) => {
            eprintln!("jetrun: {}", crate::redact::text(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}
