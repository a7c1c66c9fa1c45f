//! Arguments several verbs share: the config file, and a function of it.

use std::path::PathBuf;

/// The config file.
#[derive(clap::Args)]
pub(crate) struct ConfigArg {
    /// The config file.
    #[arg(
        short,
        long,
        env = "JETRUN_CONFIG",
        default_value = "config/jetrun.toml"
    )]
    pub(crate) config: PathBuf,
}

/// The config file and one of its functions.
#[derive(clap::Args)]
pub(crate) struct FunctionArg {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// The function, as named in `[functions.*]`.
    pub(crate) function: String,
}

/// A command-line value that cannot be used, and why (clap prints it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InvalidValue(pub(crate) String);
