//! Loading the config file: the only place that reads it and the environment
//! before handing both to the pure `jetrun_config::parse`, then building
//! every function's handler (which checks what only the runner knows, such
//! as an HTTP function's headers).

use std::collections::BTreeMap;
use std::path::Path;

use jetrun_config::{Config, FunctionConfig};
use jetrun_functions::Function;

use crate::handler;

/// A valid config and the handler of each of its functions.
pub(crate) struct Loaded {
    pub(crate) config: Config,
    pub(crate) functions: Vec<(FunctionConfig, std::sync::Arc<dyn Function>)>,
}

/// Reads and validates the config file; every error, each a line naming the
/// key path and line, when it is not usable.
pub(crate) fn read(path: &Path) -> Result<Loaded, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| vec![format!("cannot read config file {}: {err}", path.display())])?;
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let base_dir = if base_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base_dir
    };
    let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    let config = jetrun_config::parse(&text, &env, &base_dir, jetrun_functions::BUILTINS)
        .map_err(|errors| errors.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let mut functions = Vec::new();
    let mut errors = Vec::new();
    for function in config.functions.values() {
        match handler::build(function) {
            Ok(handler) => functions.push((function.clone(), handler)),
            Err(err) => errors.push(format!("{err:#}")),
        }
    }
    if errors.is_empty() {
        Ok(Loaded { config, functions })
    } else {
        Err(errors)
    }
}
