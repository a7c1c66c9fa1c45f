//! Where and as whom to connect, the way the `nats` CLI decides it: the
//! command line first, then the environment, then a `nats` context, then
//! the config file's `[nats]` (or `nats://127.0.0.1:4222` with no config).
//! Each level replaces what it sets: the URLs, the authentication as a
//! whole (a creds file, an nkey seed, a user and password, or a token), and
//! each TLS file on its own.
//!
//! A context is a `nats` CLI context file,
//! `$XDG_CONFIG_HOME/nats/context/NAME.json` (`~/.config` without
//! `XDG_CONFIG_HOME`), named by `--context` or `NATS_CONTEXT`, or given as a
//! path to a `.json` file. Without a name, the context `nats context select`
//! chose (`nats/context.txt`) applies to one-shot commands only: `jetrun
//! run` reads a context only when one is named, so a daemon never follows
//! what someone selected in a shell.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use jetrun_config::{NatsAuth, NatsConfig, TlsConfig};
use serde::Deserialize;

/// Where a verb connects without a config file or any of the levels.
pub(crate) use jetrun_config::DEFAULT_NATS_URL as DEFAULT_URL;

/// What the command line and the environment say (the command line
/// winning), before a context and the config file.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Given {
    /// `-s/--server`, else `JETRUN_NATS_URL`, else `NATS_URL`: comma-separated.
    pub(crate) server: Option<String>,
    pub(crate) creds: Option<PathBuf>,
    pub(crate) nkey: Option<PathBuf>,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) tls_ca: Option<PathBuf>,
    /// `--context` or `NATS_CONTEXT`: a context's name, or a `.json` path.
    pub(crate) context: Option<String>,
}

/// Whether the context `nats context select` chose applies when none is
/// named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selected {
    /// One-shot commands, like the `nats` CLI.
    Follow,
    /// `jetrun run`: only a named context.
    Ignore,
}

/// A `nats` CLI context file: the fields jetrun uses, and those it refuses
/// rather than connect without (a JetStream domain or API prefix, nsc).
#[derive(Debug, Default, Deserialize)]
struct ContextFile {
    #[serde(default)]
    url: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    creds: String,
    #[serde(default)]
    nkey: String,
    #[serde(default)]
    cert: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    ca: String,
    #[serde(default)]
    nsc: String,
    #[serde(default)]
    jetstream_domain: String,
    #[serde(default)]
    jetstream_api_prefix: String,
}

/// One level's settings, all optional.
#[derive(Debug, Default)]
struct Level {
    urls: Option<Vec<String>>,
    creds: Option<PathBuf>,
    nkey: Option<PathBuf>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
}

impl Level {
    fn of_given(given: &Given) -> Level {
        Level {
            urls: given.server.as_deref().map(split_urls),
            creds: given.creds.clone(),
            nkey: given.nkey.clone(),
            user: given.user.clone(),
            password: given.password.clone(),
            token: None,
            cert: given.tls_cert.clone(),
            key: given.tls_key.clone(),
            ca: given.tls_ca.clone(),
        }
    }

    fn of_context(file: ContextFile, home: Option<&Path>) -> Level {
        let path = |text: &str| (!text.is_empty()).then(|| expand_home(text, home));
        let text = |t: &str| (!t.is_empty()).then(|| t.to_string());
        Level {
            urls: (!file.url.is_empty()).then(|| split_urls(&file.url)),
            creds: path(&file.creds),
            nkey: path(&file.nkey),
            user: text(&file.user),
            password: text(&file.password),
            token: text(&file.token),
            cert: path(&file.cert),
            key: path(&file.key),
            ca: path(&file.ca),
        }
    }

    /// The authentication this level decides over `below`: a creds file, an
    /// nkey, or a user, password or token (a user or a password alone keeps
    /// the other from below: `NATS_PASSWORD` with a context's user).
    fn auth(&self, below: &NatsAuth) -> Option<NatsAuth> {
        if let Some(creds) = &self.creds {
            return Some(NatsAuth::Creds(creds.clone()));
        }
        if let Some(nkey) = &self.nkey {
            return Some(NatsAuth::Nkey(nkey.clone()));
        }
        if self.user.is_none() && self.password.is_none() {
            return self.token.clone().map(NatsAuth::Token);
        }
        let (user_below, password_below) = match below {
            NatsAuth::UserPassword { user, password } => (Some(user), Some(password)),
            _ => (None, None),
        };
        let user = self.user.as_ref().or(user_below)?;
        match self.password.as_ref().or(password_below) {
            Some(password) => Some(NatsAuth::UserPassword {
                user: user.clone(),
                password: password.clone(),
            }),
            // A user alone is a token, as for `nats --user`.
            None => Some(NatsAuth::Token(user.clone())),
        }
    }

    /// Lays this level over `nats`.
    fn apply(self, nats: &mut NatsConfig) {
        if let Some(urls) = self.urls.clone() {
            nats.urls = urls;
        }
        if let Some(auth) = self.auth(&nats.auth) {
            nats.auth = auth;
        }
        if self.cert.is_some() || self.key.is_some() || self.ca.is_some() {
            let tls = nats.tls.get_or_insert(TlsConfig {
                ca: None,
                cert: None,
                key: None,
            });
            tls.cert = self.cert.or(tls.cert.take());
            tls.key = self.key.or(tls.key.take());
            tls.ca = self.ca.or(tls.ca.take());
        }
    }
}

/// `nats://a:4222, nats://b:4222` as two URLs.
fn split_urls(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(ToString::to_string)
        .collect()
}

/// `~/x` under the home folder, as the `nats` CLI reads a context's paths.
fn expand_home(text: &str, home: Option<&Path>) -> PathBuf {
    match (text.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(text),
    }
}

/// The environment a resolution reads (the process's, or a test's).
pub(crate) trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process's environment.
pub(crate) struct Process;

impl Environment for Process {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|value| !value.is_empty())
    }
}

impl Environment for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|value| !value.is_empty()).cloned()
    }
}

/// Where the `nats` CLI keeps its settings: `$XDG_CONFIG_HOME/nats`, or
/// `~/.config/nats`.
fn nats_dir(env: &dyn Environment) -> Option<PathBuf> {
    match env.var("XDG_CONFIG_HOME") {
        Some(dir) => Some(PathBuf::from(dir).join("nats")),
        None => env
            .var("HOME")
            .map(|home| PathBuf::from(home).join(".config/nats")),
    }
}

/// The context file to read, if any: the one named, else (with
/// [`Selected::Follow`]) the one `nats context select` chose.
fn context_path(
    given: &Given,
    selected: Selected,
    env: &dyn Environment,
) -> Result<Option<PathBuf>, String> {
    let named = given.context.clone();
    let name = match (named, selected) {
        (Some(name), _) => name,
        (None, Selected::Ignore) => return Ok(None),
        (None, Selected::Follow) => {
            let Some(chosen) = nats_dir(env).map(|dir| dir.join("context.txt")) else {
                return Ok(None);
            };
            match std::fs::read_to_string(&chosen) {
                Ok(text) if !text.trim().is_empty() => text.trim().to_string(),
                _ => return Ok(None),
            }
        }
    };
    if name.ends_with(".json") || name.contains('/') {
        return Ok(Some(PathBuf::from(name)));
    }
    let dir = nats_dir(env).ok_or_else(|| {
        format!("cannot find nats context {name:?}: neither XDG_CONFIG_HOME nor HOME is set")
    })?;
    Ok(Some(dir.join("context").join(format!("{name}.json"))))
}

fn read_context(path: &Path) -> Result<ContextFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read nats context {}: {err}", path.display()))?;
    let file: ContextFile = serde_json::from_str(&text)
        .map_err(|err| format!("nats context {} is not valid: {err}", path.display()))?;
    let unsupported = [
        ("jetstream_domain", &file.jetstream_domain),
        ("jetstream_api_prefix", &file.jetstream_api_prefix),
        ("nsc", &file.nsc),
    ];
    if let Some((name, _)) = unsupported.iter().find(|(_, value)| !value.is_empty()) {
        return Err(format!(
            "nats context {} sets {name}, which jetrun does not support; use a context \
             without it, or give the connection with flags",
            path.display()
        ));
    }
    Ok(file)
}

/// The connection settings: `given` (command line and environment), over a
/// context, over `config` (the config file's `[nats]`; `None` without a
/// config file).
pub(crate) fn resolve(
    config: Option<&NatsConfig>,
    given: &Given,
    selected: Selected,
    env: &dyn Environment,
) -> Result<NatsConfig, String> {
    let mut nats = config.cloned().unwrap_or_else(|| NatsConfig {
        urls: vec![DEFAULT_URL.to_string()],
        auth: NatsAuth::None,
        tls: None,
    });
    if let Some(path) = context_path(given, selected, env)? {
        let home = env.var("HOME").map(PathBuf::from);
        Level::of_context(read_context(&path)?, home.as_deref()).apply(&mut nats);
    }
    Level::of_given(given).apply(&mut nats);
    if nats.urls.is_empty() {
        return Err("no NATS server URL: --server, NATS_URL or the context's url is empty".into());
    }
    Ok(nats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(dir: &Path) -> HashMap<String, String> {
        HashMap::from([("XDG_CONFIG_HOME".to_string(), dir.display().to_string())])
    }

    fn context(dir: &Path, name: &str, json: &str) {
        let contexts = dir.join("nats/context");
        std::fs::create_dir_all(&contexts).unwrap();
        std::fs::write(contexts.join(format!("{name}.json")), json).unwrap();
    }

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("jetrun-settings-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn config() -> NatsConfig {
        NatsConfig {
            urls: vec!["nats://from-config:4222".into()],
            auth: NatsAuth::Token("config-token".into()),
            tls: Some(TlsConfig {
                ca: Some("config-ca.pem".into()),
                cert: None,
                key: None,
            }),
        }
    }

    #[test]
    fn flags_then_environment_then_context_then_config() {
        let dir = temp("levels");
        let env = env(&dir);
        context(
            &dir,
            "orders",
            r#"{"url": "nats://ctx-a:4222,nats://ctx-b:4222", "creds": "/ctx/orders.creds",
                "cert": "/ctx/cert.pem", "key": "/ctx/key.pem", "description": "x"}"#,
        );
        let alone = resolve(Some(&config()), &Given::default(), Selected::Follow, &env).unwrap();
        assert_eq!(
            alone,
            config(),
            "nothing given, nothing selected: the config"
        );

        let named = Given {
            context: Some("orders".into()),
            ..Given::default()
        };
        let with_context = resolve(Some(&config()), &named, Selected::Ignore, &env).unwrap();
        assert_eq!(
            with_context.urls,
            ["nats://ctx-a:4222", "nats://ctx-b:4222"]
        );
        assert_eq!(
            with_context.auth,
            NatsAuth::Creds("/ctx/orders.creds".into())
        );
        let tls = with_context.tls.unwrap();
        assert_eq!(
            (tls.ca, tls.cert, tls.key),
            (
                Some("config-ca.pem".into()),
                Some("/ctx/cert.pem".into()),
                Some("/ctx/key.pem".into())
            ),
            "each TLS file on its own"
        );

        let over = Given {
            server: Some("nats://flag:4222".into()),
            user: Some("ada".into()),
            password: Some("secret".into()),
            ..named
        };
        let flags = resolve(Some(&config()), &over, Selected::Ignore, &env).unwrap();
        assert_eq!(flags.urls, ["nats://flag:4222"]);
        assert_eq!(
            flags.auth,
            NatsAuth::UserPassword {
                user: "ada".into(),
                password: "secret".into()
            }
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_selected_context_applies_to_one_shot_commands_only() {
        let dir = temp("selected");
        let env = env(&dir);
        context(
            &dir,
            "dev",
            r#"{"url": "nats://selected:4222", "token": "t"}"#,
        );
        std::fs::write(dir.join("nats/context.txt"), "dev\n").unwrap();
        let given = Given::default();
        let one_shot = resolve(None, &given, Selected::Follow, &env).unwrap();
        assert_eq!(one_shot.urls, ["nats://selected:4222"]);
        assert_eq!(one_shot.auth, NatsAuth::Token("t".into()));
        let daemon = resolve(Some(&config()), &given, Selected::Ignore, &env).unwrap();
        assert_eq!(daemon, config());
        let no_config = resolve(None, &given, Selected::Ignore, &env).unwrap();
        assert_eq!(no_config.urls, [DEFAULT_URL]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_context_by_path_with_home_relative_files() {
        let dir = temp("path");
        let file = dir.join("ctx.json");
        std::fs::write(&file, r#"{"nkey": "~/keys/me.nk"}"#).unwrap();
        let env = HashMap::from([("HOME".to_string(), "/home/ada".to_string())]);
        let given = Given {
            context: Some(file.display().to_string()),
            ..Given::default()
        };
        let nats = resolve(None, &given, Selected::Ignore, &env).unwrap();
        assert_eq!(nats.auth, NatsAuth::Nkey("/home/ada/keys/me.nk".into()));
        assert_eq!(nats.urls, [DEFAULT_URL]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_or_unsupported_context_is_an_error_naming_it() {
        let dir = temp("errors");
        let env = env(&dir);
        let missing = Given {
            context: Some("nope".into()),
            ..Given::default()
        };
        let why = resolve(None, &missing, Selected::Ignore, &env).unwrap_err();
        assert!(
            why.contains("cannot read nats context") && why.contains("nope.json"),
            "{why}"
        );
        context(
            &dir,
            "hub",
            r#"{"url": "nats://x:4222", "jetstream_domain": "hub"}"#,
        );
        let domain = Given {
            context: Some("hub".into()),
            ..Given::default()
        };
        let why = resolve(None, &domain, Selected::Ignore, &env).unwrap_err();
        assert!(why.contains("sets jetstream_domain"), "{why}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_comma_separated_server_list_and_a_user_alone_as_token() {
        let given = Given {
            server: Some("nats://a:4222, nats://b:4223".into()),
            user: Some("s3cret".into()),
            ..Given::default()
        };
        let nats = resolve(None, &given, Selected::Ignore, &HashMap::new()).unwrap();
        assert_eq!(nats.urls, ["nats://a:4222", "nats://b:4223"]);
        assert_eq!(nats.auth, NatsAuth::Token("s3cret".into()));
    }
}
