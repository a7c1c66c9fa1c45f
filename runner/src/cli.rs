//! The command line: `run`, `dev`, `check`, `publish`, and logging setup.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::config_file;

#[derive(Parser)]
#[command(
    name = "jetrun",
    version,
    about = "Serverless function runner on NATS JetStream"
)]
pub(crate) struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The config file.
    #[arg(
        short,
        long,
        env = "JETRUN_CONFIG",
        default_value = "config/jetrun.toml"
    )]
    config: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Reload the config when the file changes (SIGHUP always reloads it).
    #[arg(long)]
    watch: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the functions in the config file.
    Run(RunArgs),
    /// Run them against a nats-server jetrun starts and stops itself (data under .jetrun/).
    Dev(RunArgs),
    /// Validate the config file: exit 0 when it is good, 2 when it is not.
    Check(ConfigArg),
    /// Publish one event (CloudEvents binary mode) and print its stream and sequence.
    Publish(crate::publish::PublishArgs),
}

pub(crate) fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("JETRUN_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

pub(crate) async fn execute(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Check(arg) => {
            return match config_file::load(&arg.config) {
                Ok(loaded) => {
                    println!(
                        "{}: ok ({} functions, {} streams)",
                        arg.config.display(),
                        loaded.config.functions.len(),
                        loaded.config.streams.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Run(arg) => match config_file::load(&arg.config.config) {
            Ok(loaded) => crate::run::run(loaded, reload_source(&arg)).await,
            Err(code) => return code,
        },
        Command::Dev(arg) => match config_file::load(&arg.config.config) {
            Ok(loaded) => crate::dev::dev(loaded, reload_source(&arg)).await,
            Err(code) => return code,
        },
        Command::Publish(args) => crate::publish::publish(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("jetrun: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn reload_source(arg: &RunArgs) -> crate::reload::Source {
    crate::reload::Source {
        path: arg.config.config.clone(),
        watch: arg.watch,
    }
}
