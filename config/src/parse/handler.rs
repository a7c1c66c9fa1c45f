//! A function's handler: exactly one of `builtin` (a registered Rust
//! function), `exec` (a program, per event or as workers) and `http` (an
//! endpoint).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::section::{join, listed, Ctx, Field, Read, Reported, Section};
use crate::model::{Account, AccountId, ExecConfig, ExecMode, Handler, HttpConfig};

/// The keys naming a handler, in the order messages list them.
pub(super) const HANDLER_KEYS: [&str; 3] = ["builtin", "exec", "http"];
pub(super) const EXEC_KEYS: &[&str] = &["command", "env", "mode", "workers", "user", "group"];
pub(super) const HTTP_KEYS: &[&str] = &["url", "headers", "timeout"];
const ARGV: &str = "an argv list of strings like [\"python3\", \"handler.py\"]";

/// The one handler of the function in `section`.
pub(super) fn read(
    ctx: &mut Ctx<'_>,
    section: &Section<'_, '_>,
    base_dir: &Path,
    builtins: &[&str],
) -> Read<Handler> {
    let builtin = section.read(ctx, "builtin", |f, ctx| builtin(f, ctx, builtins));
    let exec = section.read(ctx, "exec", |f, ctx| exec(f, ctx, base_dir));
    let http = section.read(ctx, "http", http);
    let present: Vec<&str> = HANDLER_KEYS
        .into_iter()
        .filter(|key| section.field(key).is_some())
        .collect();
    if present.len() != 1 {
        return Err(ctx.error(
            section.path(),
            section.span(),
            format!(
                "must have exactly one of {}; it has {}",
                HANDLER_KEYS.join(", "),
                listed(&present)
            ),
        ));
    }
    match (builtin?, exec?, http?) {
        (Some(name), ..) => Ok(Handler::Builtin(name)),
        (_, Some(exec), _) => Ok(Handler::Exec(exec)),
        (.., Some(http)) => Ok(Handler::Http(http)),
        (None, None, None) => Err(Reported),
    }
}

/// `builtin = "name"`, a registered built-in function.
fn builtin(field: &Field<'_, '_>, ctx: &mut Ctx<'_>, builtins: &[&str]) -> Read<String> {
    let name = field.string(ctx)?;
    if builtins.contains(&name.as_str()) {
        return Ok(name);
    }
    let mut known = builtins.to_vec();
    known.sort_unstable();
    let known = if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    };
    Err(field.error(
        ctx,
        format!("{name:?} is not a built-in function; known: {known}"),
    ))
}

/// `exec = [argv...]` or `exec = { command, env, mode, workers, user, group }`.
fn exec(field: &Field<'_, '_>, ctx: &mut Ctx<'_>, base_dir: &Path) -> Read<ExecConfig> {
    let mut exec = ExecConfig {
        command: Vec::new(),
        env: Default::default(),
        mode: ExecMode::PerEvent,
        workers: 1,
        dir: base_dir.to_path_buf(),
        user: None,
        group: None,
    };
    if field.elements().is_some() {
        exec.command = argv(field, ctx, base_dir)?;
        return Ok(exec);
    }
    if !field.value.get_ref().is_table() {
        return Err(field.wrong(ctx, &format!("{ARGV}, or a table with command")));
    }
    let section = Section::of(field, EXEC_KEYS, ctx)?;
    let command = match section.field("command") {
        Some(field) => argv(&field, ctx, base_dir),
        None => Err(ctx.error(
            section.key_path("command"),
            section.span(),
            format!("is required: {ARGV}"),
        )),
    };
    let env = section.read(ctx, "env", env);
    let mode = section.read(ctx, "mode", |f, ctx| {
        f.one_of(
            ctx,
            &[
                ("per-event", ExecMode::PerEvent),
                ("worker", ExecMode::Worker),
            ],
        )
    });
    let workers = section.read(ctx, "workers", Field::count);
    let user = section.read(ctx, "user", |f, ctx| account(f, ctx, "user"));
    let group = section.read(ctx, "group", |f, ctx| account(f, ctx, "group"));
    section.finish(ctx);

    exec.command = command?;
    exec.env = env?.unwrap_or_default();
    exec.mode = mode?.unwrap_or(ExecMode::PerEvent);
    if let (Some(workers), Some(field)) = (workers?, section.field("workers")) {
        if exec.mode != ExecMode::Worker {
            return Err(field.error(
                ctx,
                "only applies with mode = \"worker\"; add mode = \"worker\" or remove workers",
            ));
        }
        exec.workers = workers;
    }
    exec.user = user?;
    exec.group = group?;
    if let (None, Some(field)) = (&exec.user, section.field("group")) {
        return Err(field.error(
            ctx,
            "only applies with user: a child running as root keeps root's powers whatever \
             its group; add user = \"...\" or remove group",
        ));
    }
    Ok(exec)
}

/// `user` or `group`: a name, or a numeric id as an integer or a string of
/// digits. Whether the machine has it is for the runner to check.
fn account(field: &Field<'_, '_>, ctx: &mut Ctx<'_>, what: &str) -> Read<Account> {
    let expected = format!("a {what} name or a numeric id");
    let id = if field.value.get_ref().is_integer() {
        let n = field.integer(ctx, &expected)?;
        AccountId::Id(numeric_id(n).ok_or_else(|| field.wrong(ctx, &expected))?)
    } else {
        let text = field.string_or(ctx, &expected)?;
        if text.is_empty() || text.contains(['\0', ':']) || text.contains(char::is_whitespace) {
            return Err(field.error(ctx, format!("must be {expected}, got {text:?}")));
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            let n = text.parse().ok().and_then(numeric_id);
            AccountId::Id(n.ok_or_else(|| field.wrong(ctx, &expected))?)
        } else {
            AccountId::Name(text)
        }
    };
    Ok(Account {
        id,
        path: field.path.clone(),
        line: ctx.line(&field.span()),
    })
}

/// A uid or gid: `0..u32::MAX` (`u32::MAX` is `-1`, "no change", to the kernel).
fn numeric_id(n: i64) -> Option<u32> {
    u32::try_from(n).ok().filter(|n| *n != u32::MAX)
}

/// A non-empty argv list; a relative program path with a `/` is joined to
/// the config file's folder.
fn argv(field: &Field<'_, '_>, ctx: &mut Ctx<'_>, base_dir: &Path) -> Read<Vec<String>> {
    let mut argv: Vec<String> = field
        .strings(ctx, ARGV)?
        .into_iter()
        .map(|arg| arg.into_inner())
        .collect();
    if let Some(program) = argv.first_mut() {
        if program.is_empty() {
            return Err(field.error(ctx, "must not start with an empty program name"));
        }
        if program.contains('/') && Path::new(program.as_str()).is_relative() {
            *program = base_dir
                .join(program.as_str())
                .to_string_lossy()
                .into_owned();
        }
    }
    Ok(argv)
}

/// `env = { NAME = "value" }`, names fit for an environment.
fn env(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<BTreeMap<String, String>> {
    let env = field.string_map(ctx)?;
    let mut failed = false;
    for name in env.keys() {
        if name.is_empty() || name.contains(['=', '\0']) {
            let path = join(&field.path, name);
            ctx.error(
                path,
                Some(&field.span()),
                "is not a valid environment variable name",
            );
            failed = true;
        }
    }
    if failed {
        Err(Reported)
    } else {
        Ok(env)
    }
}

/// `http = "url"` or `http = { url, headers, timeout }`.
fn http(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<HttpConfig> {
    if field.value.get_ref().is_str() {
        return Ok(HttpConfig {
            url: url(field, ctx)?,
            headers: Default::default(),
            timeout: None,
        });
    }
    if !field.value.get_ref().is_table() {
        return Err(field.wrong(
            ctx,
            "a URL starting with http:// or https://, or a table with url",
        ));
    }
    let section = Section::of(field, HTTP_KEYS, ctx)?;
    let url = match section.field("url") {
        Some(field) => url(&field, ctx),
        None => Err(ctx.error(
            section.key_path("url"),
            section.span(),
            "is required: the endpoint events are POSTed to, like \"http://127.0.0.1:8080/events\"",
        )),
    };
    let headers = section.read(ctx, "headers", Field::string_map);
    let timeout = section.read(ctx, "timeout", Field::nonzero_duration);
    section.finish(ctx);
    Ok(HttpConfig {
        url: url?,
        headers: headers?.unwrap_or_default(),
        timeout: timeout?,
    })
}

/// `http = { timeout }` longer than the function's `timeout` would be cut
/// short by it without a word: refused, on the HTTP timeout's line.
pub(super) fn http_timeout_within(
    ctx: &mut Ctx<'_>,
    function: &Section<'_, '_>,
    handler: &Handler,
    timeout: Duration,
) -> Read<()> {
    let Handler::Http(HttpConfig {
        timeout: Some(http_timeout),
        ..
    }) = handler
    else {
        return Ok(());
    };
    if *http_timeout <= timeout {
        return Ok(());
    }
    let Some(field) = function
        .field("http")
        .and_then(|http| Section::of(&http, HTTP_KEYS, ctx).ok()?.field("timeout"))
    else {
        return Ok(());
    };
    Err(field.error(
        ctx,
        format!(
            "({}) is longer than the function's timeout ({}), which would cut the call short; \
             raise the function's timeout or lower this one",
            humantime::format_duration(*http_timeout),
            humantime::format_duration(timeout)
        ),
    ))
}

/// An `http://` or `https://` URL.
fn url(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<String> {
    const EXPECTED: &str = "a URL starting with http:// or https://";
    let url = field.string_or(ctx, EXPECTED)?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(url),
        _ => Err(field.error(ctx, format!("must be {EXPECTED}, got {url:?}"))),
    }
}
