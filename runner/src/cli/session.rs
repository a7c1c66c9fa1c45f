//! What every verb does before its own work, and after: load the config
//! (every error printed, exit status 2, before NATS is touched), connect to
//! NATS once, and turn the outcome into an exit status.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use async_nats::jetstream;
use jetrun_config::{Config, NatsConfig};
use jetrun_functions::Function;

use super::args::ConfigArg;
use super::LogFormat;
use crate::nats::settings::{self, Given, Selected};
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
    config_file::read(path).map_err(|errors| print_invalid(path, &errors))
}

/// [`load`] for a verb that runs the config (`run`, `dev`): logging starts
/// once the config is read, with its `[telemetry]`; without a usable config
/// it starts without. Exit status 2 when telemetry cannot start: its config
/// is what is wrong (a service manager must not restart it forever).
pub(crate) fn load_logged(path: &Path, format: LogFormat) -> Result<Loaded, ExitCode> {
    match config_file::read(path) {
        Ok(loaded) => match crate::logging::init_with(format, loaded.config.telemetry.as_ref()) {
            Ok(()) => Ok(loaded),
            Err(err) => {
                crate::logging::init(format);
                eprintln!("jetrun: {}", crate::redact::text(&err.to_string()));
                Err(ExitCode::from(EXIT_USAGE))
            }
        },
        Err(errors) => {
            crate::logging::init(format);
            Err(print_invalid(path, &errors))
        }
    }
}

/// Prints why the config at `path` is not valid: exit status 2.
fn print_invalid(path: &Path, errors: &[String]) -> ExitCode {
    eprintln!("jetrun: {} is not valid:", path.display());
    for error in errors {
        eprintln!("  {error}");
    }
    ExitCode::from(EXIT_USAGE)
}

/// The config, for a verb that can also work without one: `None` when none
/// was given and there is none by default (the verb then connects with the
/// command line, the environment and a `nats` context, and derives names
/// from the documented defaults).
pub(crate) fn load_if_any(arg: &ConfigArg) -> Result<Option<Loaded>, ExitCode> {
    match arg.absent() {
        true => Ok(None),
        false => load(&arg.path()).map(Some),
    }
}

/// The connection the command line and environment gave, set once by
/// [`connect_with`] before any verb runs.
static CONNECTION: OnceLock<Given> = OnceLock::new();

/// Sets what every [`connect`] of this process lays over the config's
/// `[nats]`.
pub(crate) fn connect_with(given: Given) {
    let _ = CONNECTION.set(given);
}

/// Where and as whom a one-shot command connects: the command line and
/// environment, over a `nats` context (named, or the one `nats context
/// select` chose), over `nats` (the config's `[nats]`, when there is a
/// config).
pub(crate) fn connection(nats: Option<&NatsConfig>) -> anyhow::Result<NatsConfig> {
    let given = CONNECTION.get().cloned().unwrap_or_default();
    settings::resolve(nats, &given, Selected::Follow, &settings::Process)
        .map_err(anyhow::Error::msg)
}

/// A connection for one command, which gives up after a bounded wait.
pub(crate) async fn connect(nats: &NatsConfig) -> anyhow::Result<jetstream::Context> {
    connect_to(Some(nats)).await
}

/// The same, with or without a config's `[nats]`.
pub(crate) async fn connect_to(nats: Option<&NatsConfig>) -> anyhow::Result<jetstream::Context> {
    let client = crate::nats::connect_once(&connection(nats)?).await?;
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

/// Function `name` of `loaded` and its handler, for a verb that runs it.
pub(crate) fn handler<'a>(
    loaded: &'a Loaded,
    name: &str,
) -> Result<(&'a jetrun_config::FunctionConfig, Arc<dyn Function>), Stopped> {
    loaded
        .functions
        .iter()
        .find(|(function, _)| function.name == name)
        .map(|(function, handler)| (function, handler.clone()))
        .ok_or_else(|| Stopped::Usage(format!("function {name} has no handler")))
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
