//! `jetrun`: runs the functions a TOML file declares on NATS JetStream.

mod cli;
mod config_file;
mod delivery;
mod dev;
mod envelope;
mod handler;
mod metrics;
mod middleware;
mod nats;
mod publish;
mod readiness;
mod run;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("jetrun: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli::execute(cli))
}
