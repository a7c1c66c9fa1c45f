//! `jetrun`: runs the functions a TOML file declares on NATS JetStream.

mod cli;
mod dispatch;
mod emit;
mod envelope;
mod eventsourcing;
mod handler;
mod layers;
mod metrics;
mod nats;
mod readiness;
mod request;
mod runtime;
mod saga;
mod shutdown;

use std::process::ExitCode;

use clap::Parser;

// Every event allocates a little across both runtime threads; glibc's malloc
// spent ~20% of the runner's CPU on it, much of it waiting on arena locks
// (BENCHMARKS.md, "Changes and their effect").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging(cli.log_format);
    // HTTP functions use rustls without a bundled crypto provider: ring it is
    // (async-nats already builds it; aws-lc-rs, reqwest's default, is a slow C build).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("jetrun: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli::execute(cli))
}
