//! `jetrun check`: validate the config file, as `jetrun run` would read it,
//! without touching NATS: exit 0 when it is good (warnings printed on
//! stderr), 2 (every error printed, each with its key path and line) when
//! it is not.

use std::path::PathBuf;
use std::process::ExitCode;

use super::args::ConfigArg;
use super::session;
use crate::runtime::config_file;

/// The arguments of `jetrun check`.
#[derive(clap::Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The config file, like `promtool check config FILE`; it wins over -c
    /// and JETRUN_CONFIG.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// Print `{"config", "ok", "functions", "streams", "warnings", "errors"}`
    /// on stdout instead of lines (the exit status is the same).
    #[arg(long)]
    json: bool,
}

pub(crate) fn check(args: &CheckArgs) -> ExitCode {
    let path = &args.file.clone().unwrap_or_else(|| args.config.path());
    if args.json {
        let (code, verdict) = match config_file::read(path) {
            Ok(loaded) => (
                ExitCode::SUCCESS,
                serde_json::json!({
                    "config": path,
                    "ok": true,
                    "functions": loaded.config.functions.len(),
                    "streams": loaded.config.streams.len(),
                    "warnings": loaded.config.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "errors": [],
                }),
            ),
            Err(errors) => (
                ExitCode::from(session::EXIT_USAGE),
                serde_json::json!({ "config": path, "ok": false, "warnings": [], "errors": errors }),
            ),
        };
        println!("{verdict}");
        return code;
    }
    match session::load(path) {
        Ok(loaded) => {
            for warning in &loaded.config.warnings {
                eprintln!("jetrun: warning: {warning}");
            }
            println!(
                "{}: ok ({} functions, {} streams)",
                path.display(),
                loaded.config.functions.len(),
                loaded.config.streams.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
