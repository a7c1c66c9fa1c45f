//! Arguments several verbs share: the config file, and a function of it.

use std::path::{Path, PathBuf};

/// The config file.
#[derive(clap::Args)]
pub(crate) struct ConfigArg {
    /// The config file [default: ./jetrun.toml; in a clone of the jetrun
    /// repository without one, config/jetrun.toml].
    #[arg(
        short,
        long,
        env = "JETRUN_CONFIG",
        default_value_os_t = default_config(Path::new(".")),
        hide_default_value = true
    )]
    pub(crate) config: PathBuf,
}

/// The config file a verb reads when neither `-c` nor `JETRUN_CONFIG` names
/// one, from the folder `dir`: `jetrun.toml` (what `jetrun init` writes);
/// when there is none and `dir` is the root of a clone of this repository,
/// its quick-start config `config/jetrun.toml`.
pub(crate) fn default_config(dir: &Path) -> PathBuf {
    let here = dir.join(DEFAULT_CONFIG);
    let repository = dir.join(REPOSITORY_CONFIG);
    let in_repository = dir.join("runner/Cargo.toml").is_file() && repository.is_file();
    match here.is_file() || !in_repository {
        true => PathBuf::from(DEFAULT_CONFIG),
        false => PathBuf::from(REPOSITORY_CONFIG),
    }
}

/// What `jetrun init` writes and every verb reads by default.
pub(crate) const DEFAULT_CONFIG: &str = "jetrun.toml";
/// The quick start's config, in a clone of the repository.
const REPOSITORY_CONFIG: &str = "config/jetrun.toml";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jetrun_toml_first_then_the_repository_config_only_in_the_repository() {
        let dir =
            std::env::temp_dir().join(format!("jetrun-default-config-{}", std::process::id()));
        let path = dir.as_path();
        std::fs::create_dir_all(path).unwrap();
        assert_eq!(default_config(path), PathBuf::from("jetrun.toml"));
        std::fs::create_dir_all(path.join("config")).unwrap();
        std::fs::write(path.join("config/jetrun.toml"), "").unwrap();
        assert_eq!(
            default_config(path),
            PathBuf::from("jetrun.toml"),
            "a config/ folder elsewhere is not the repository's"
        );
        std::fs::create_dir_all(path.join("runner")).unwrap();
        std::fs::write(path.join("runner/Cargo.toml"), "").unwrap();
        assert_eq!(default_config(path), PathBuf::from("config/jetrun.toml"));
        std::fs::write(path.join("jetrun.toml"), "").unwrap();
        assert_eq!(default_config(path), PathBuf::from("jetrun.toml"));
        std::fs::remove_dir_all(path).unwrap();
    }
}
