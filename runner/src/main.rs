//! `jetrun`: runs the functions a TOML file declares on NATS JetStream.

// Tests build headers from literals; the product never calls these (see
// runner/clippy.toml and `headers`).
#![cfg_attr(test, allow(clippy::disallowed_methods))]

mod cli;
mod delayed;
mod dispatch;
mod emit;
mod envelope;
mod eventsourcing;
mod flow;
mod handler;
mod headers;
mod layers;
mod logging;
mod metrics;
mod nats;
mod readiness;
mod redact;
mod request;
mod runtime;
mod saga;
mod schedule;
mod shutdown;
mod tasks;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

// Every event allocates a little across both runtime threads; glibc's malloc
// spent ~20% of the runner's CPU on it, much of it waiting on arena locks
// (BENCHMARKS.md, "Changes and their effect").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // `run` and `dev` start logging once their config is read: its
    // [telemetry] adds the layer exporting spans.
    if !cli.reads_telemetry() {
        logging::init(cli.log_format);
    }
    // A panic is contained where it happens (the event is retried, the task
    // started again); its report goes to the log like anything else.
    std::panic::set_hook(Box::new(|panic| {
        tracing::error!(%panic, "A panic; jetrun contains it and goes on.");
    }));
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
