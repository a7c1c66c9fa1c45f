//! `jetrun init [PATH] [--force]`: writes a commented starter `jetrun.toml`
//! (one stream and one built-in function: `user.registered` → `welcome_email`)
//! that `jetrun check` accepts, and never overwrites a file unless told to.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// The arguments of `jetrun init`.
#[derive(clap::Args)]
pub(crate) struct InitArgs {
    /// Where to write the config.
    #[arg(default_value = "jetrun.toml")]
    path: PathBuf,
    /// Overwrite the file when it exists.
    #[arg(long)]
    force: bool,
}

/// The starter config: short, with a comment on every key a newcomer meets.
pub(crate) const TEMPLATE: &str = r#"# jetrun.toml: the functions jetrun runs and the events that start them.
# Written by `jetrun init`. Validate it, then run it against a nats-server
# jetrun starts itself (data under .jetrun/):
#   jetrun check -c jetrun.toml
#   jetrun dev -c jetrun.toml
# and from another terminal:
#   jetrun publish user.registered '{"user_id": 1, "email": "ada@shop.test"}'
#
# Durations are like 250ms, 30s or 5m. "${VAR}" in a string is read from the
# environment. Relative paths are relative to this file's folder.

# Where NATS is: a URL, or a list of them for a cluster. The environment
# variable JETRUN_NATS_URL (comma-separated) overrides it.
[nats]
url = "nats://127.0.0.1:4222"

# Prometheus metrics at /metrics, liveness at /healthz, readiness at /readyz.
[metrics]
listen = "127.0.0.1:9600"

# What every function gets unless it says otherwise.
[defaults]
concurrency = 16                # events in flight per function in this process
timeout = "30s"                 # a slower handler is cancelled, and retried
retry = { max_attempts = 5, initial_delay = "1s", multiplier = 2.0, max_delay = "5m", jitter = 0.1 }

# Streams hold the events; jetrun creates each one when missing. Every
# function's subjects must be held by one of them. Dead letters go to the
# DLQ stream (subjects dlq.>), which jetrun manages.
[streams.USERS]
subjects = ["user.>"]

[streams.EMAILS]
subjects = ["email.>"]

# A new user gets a welcome email: the built-in welcome_email handles each
# user.registered event and emits email.sent. The name (welcome-email) is
# also the name of the function's durable consumer. A function has exactly
# one handler:
#   builtin = "welcome_email"                    Rust, compiled into jetrun
#   exec = ["python3", "send_welcome.py"]        a program: the event as JSON on stdin
#   http = "http://127.0.0.1:8080/events"        an endpoint: CloudEvents over HTTP
# A registration with no email fails permanently and goes to
# dlq.welcome-email; other failures are retried as [defaults] says.
[functions.welcome-email]
subjects = ["user.registered"]
builtin = "welcome_email"
retry = { max_attempts = 3 }    # the other retry keys come from [defaults]
"#;

/// Writes [`TEMPLATE`] to `args.path`; an existing file is an error unless
/// `--force` is given.
pub(crate) fn init(args: &InitArgs) -> anyhow::Result<()> {
    write_template(&args.path, args.force)?;
    let path = args.path.display();
    // Every verb reads ./jetrun.toml by default: no -c for the default path.
    let config = match args.path == Path::new(super::args::DEFAULT_CONFIG) {
        true => String::new(),
        false => format!(" -c {path}"),
    };
    println!("Wrote {path}. Next: `jetrun check{config}`, then `jetrun dev{config}`.");
    Ok(())
}

fn write_template(path: &Path, force: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::AlreadyExists => bail!(
            "{} already exists; pass --force to overwrite it, or give another path",
            path.display()
        ),
        Err(err) => return Err(err).with_context(|| format!("cannot write {}", path.display())),
    };
    file.write_all(TEMPLATE.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_template_is_a_valid_config() {
        let config = jetrun_config::parse(
            TEMPLATE,
            &BTreeMap::new(),
            Path::new("."),
            jetrun_functions::BUILTINS,
        )
        .unwrap_or_else(|errors| panic!("the init template does not validate: {errors:?}"));
        let welcome = &config.functions["welcome-email"];
        let binding = welcome.binding().unwrap();
        assert_eq!(binding.subjects, ["user.registered"]);
        assert_eq!(binding.stream, "USERS");
        assert_eq!(binding.dead_letter, "dlq.welcome-email");
        assert_eq!(welcome.retry.max_attempts(), 3);
        assert_eq!(welcome.timeout, Duration::from_secs(30));
        assert_eq!(config.streams.len(), 2);
    }
}
