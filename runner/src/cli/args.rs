//! Arguments several verbs share: the config file, and a function of it.

use std::path::{Path, PathBuf};

use crate::nats::settings::Given;

/// The config file.
#[derive(clap::Args)]
pub(crate) struct ConfigArg {
    /// The config file [default: ./jetrun.toml; in a clone of the jetrun
    /// repository without one, config/jetrun.toml].
    #[arg(short, long, env = "JETRUN_CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// The file: the one given, else [`default_config`] of the working folder.
    pub(crate) fn path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| default_config(Path::new(".")))
    }

    /// Whether a verb that can do without the config goes without: none was
    /// given (`-c` or `JETRUN_CONFIG`) and there is none by default.
    pub(crate) fn absent(&self) -> bool {
        self.config.is_none() && !self.path().is_file()
    }
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

/// How to reach NATS, as the `nats` CLI takes it; each flag wins over the
/// environment, the environment over a `nats` context, and a context over
/// the config file's `[nats]` (see `nats::settings`).
#[derive(clap::Args, Clone, Default)]
pub(crate) struct ConnectArgs {
    /// NATS server URLs, comma-separated [env: JETRUN_NATS_URL, then NATS_URL].
    #[arg(short, long, global = true, value_name = "URLS")]
    pub(crate) server: Option<String>,
    /// A `.creds` file (user JWT and nkey seed).
    #[arg(long, global = true, env = "NATS_CREDS", value_name = "FILE")]
    pub(crate) creds: Option<PathBuf>,
    /// A file holding an nkey seed.
    #[arg(long, global = true, env = "NATS_NKEY", value_name = "FILE")]
    pub(crate) nkey: Option<PathBuf>,
    /// User name (a token, without --password).
    #[arg(long, global = true, env = "NATS_USER")]
    pub(crate) user: Option<String>,
    /// Password.
    #[arg(long, global = true, env = "NATS_PASSWORD", hide_env_values = true)]
    pub(crate) password: Option<String>,
    /// TLS client certificate.
    #[arg(long, global = true, env = "NATS_CERT", value_name = "FILE")]
    pub(crate) tlscert: Option<PathBuf>,
    /// TLS client key.
    #[arg(long, global = true, env = "NATS_KEY", value_name = "FILE")]
    pub(crate) tlskey: Option<PathBuf>,
    /// TLS certificate authority.
    #[arg(long, global = true, env = "NATS_CA", value_name = "FILE")]
    pub(crate) tlsca: Option<PathBuf>,
    /// A `nats` CLI context: a name (`~/.config/nats/context/NAME.json`) or a
    /// path to its `.json` file. One-shot verbs also follow the context
    /// `nats context select` chose; `jetrun run` only a named one.
    #[arg(long, global = true, env = "NATS_CONTEXT", value_name = "NAME")]
    pub(crate) context: Option<String>,
}

impl ConnectArgs {
    /// The command line and environment level of the connection settings.
    pub(crate) fn given(&self, env: &dyn crate::nats::settings::Environment) -> Given {
        // A variable naming no URL (blank, or only commas) says nothing,
        // as the config file's reading of JETRUN_NATS_URL has it.
        let names_a_url = |urls: &String| urls.split(',').any(|url| !url.trim().is_empty());
        let server = self.server.clone().or_else(|| {
            (env.var("JETRUN_NATS_URL").filter(names_a_url))
                .or_else(|| env.var("NATS_URL").filter(names_a_url))
        });
        Given {
            server,
            creds: self.creds.clone(),
            nkey: self.nkey.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            tls_cert: self.tlscert.clone(),
            tls_key: self.tlskey.clone(),
            tls_ca: self.tlsca.clone(),
            context: self.context.clone(),
        }
    }
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
