//! Loading the config file: the only place that reads it and the environment
//! before handing both to the pure `jetrun_config::parse`. A bad file prints
//! every error and means exit status 2.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use jetrun_config::Config;

/// Exit status for a config that cannot be used.
const EXIT_BAD_CONFIG: u8 = 2;

pub(crate) fn load(path: &Path) -> Result<Config, ExitCode> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        eprintln!("jetrun: cannot read config file {}: {err}", path.display());
        ExitCode::from(EXIT_BAD_CONFIG)
    })?;
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let base_dir = if base_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base_dir
    };
    let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    jetrun_config::parse(&text, &env, &base_dir, jetrun_functions::BUILTINS).map_err(|errors| {
        eprintln!("jetrun: {} is not valid:", path.display());
        for error in &errors.0 {
            eprintln!("  {error}");
        }
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}
