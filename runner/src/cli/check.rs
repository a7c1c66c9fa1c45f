//! `jetrun check`: validate the config file, as `jetrun run` would read it,
//! without touching NATS: exit 0 when it is good (warnings printed on
//! stderr), 2 (every error printed, each with its key path and line) when
//! it is not.

use std::process::ExitCode;

use super::args::ConfigArg;
use super::session;

pub(crate) fn check(arg: &ConfigArg) -> ExitCode {
    match session::load(&arg.config) {
        Ok(loaded) => {
            for warning in &loaded.config.warnings {
                eprintln!("jetrun: warning: {warning}");
            }
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
