//! `[nats]` (servers, authentication, TLS) and `[metrics]`: how jetrun reaches
//! the cluster and where it serves its metrics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::section::{listed, Ctx, Field, Read, Reported, Section};
use crate::model::{MetricsConfig, NatsAuth, NatsConfig, TlsConfig};

pub(super) const NATS_KEYS: &[&str] = &["url", "creds", "nkey", "user", "password", "token", "tls"];
pub(super) const TLS_KEYS: &[&str] = &["ca", "cert", "key"];
pub(super) const METRICS_KEYS: &[&str] = &["listen"];

use crate::model::DEFAULT_NATS_URL as DEFAULT_URL;
/// The environment variable that overrides `[nats] url` (comma-separated).
pub(super) const URL_ENV: &str = "JETRUN_NATS_URL";

/// `[nats]`, absent or not.
pub(super) fn nats(
    ctx: &mut Ctx<'_>,
    field: Option<&Field<'_, '_>>,
    base_dir: &Path,
) -> Read<NatsConfig> {
    let section = Section::optional("nats", field, NATS_KEYS, ctx)?;
    let urls = section.read(ctx, "url", urls);
    let creds = section.read(ctx, "creds", |f, ctx| file(f, ctx, base_dir));
    let nkey = section.read(ctx, "nkey", |f, ctx| file(f, ctx, base_dir));
    let user = section.read(ctx, "user", Field::non_empty_string);
    let password = section.read(ctx, "password", Field::string);
    let token = section.read(ctx, "token", Field::non_empty_string);
    let tls = section.read(ctx, "tls", |f, ctx| tls(f, ctx, base_dir));
    section.finish(ctx);

    let auth = auth(ctx, &section, creds?, nkey?, user?, password?, token?)?;
    let urls = match env_urls(ctx) {
        Some(urls) => urls,
        None => urls?.unwrap_or_else(|| vec![DEFAULT_URL.to_owned()]),
    };
    Ok(NatsConfig {
        urls,
        auth,
        tls: tls?,
    })
}

/// `JETRUN_NATS_URL`, split on commas, when it names at least one server.
fn env_urls(ctx: &Ctx<'_>) -> Option<Vec<String>> {
    let urls: Vec<String> = ctx
        .env()
        .get(URL_ENV)?
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    (!urls.is_empty()).then_some(urls)
}

/// `url = "..."` or `url = ["...", ...]`.
fn urls(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<Vec<String>> {
    const EXPECTED: &str = "a server URL or a non-empty list of them";
    let urls = match field.elements() {
        Some(_) => field
            .strings(ctx, EXPECTED)?
            .into_iter()
            .map(|url| url.into_inner())
            .collect(),
        None => vec![field.string_or(ctx, EXPECTED)?],
    };
    if urls.iter().any(|url| url.trim().is_empty()) {
        return Err(field.error(ctx, "must not hold an empty URL"));
    }
    Ok(urls)
}

/// A file path, relative to the config file's folder.
fn file(field: &Field<'_, '_>, ctx: &mut Ctx<'_>, base_dir: &Path) -> Read<PathBuf> {
    let path = field.non_empty_string(ctx)?;
    Ok(base_dir.join(path))
}

/// At most one way to authenticate; `user` and `password` together.
fn auth(
    ctx: &mut Ctx<'_>,
    section: &Section<'_, '_>,
    creds: Option<PathBuf>,
    nkey: Option<PathBuf>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
) -> Read<NatsAuth> {
    let mut methods = Vec::new();
    if creds.is_some() {
        methods.push("creds");
    }
    if nkey.is_some() {
        methods.push("nkey");
    }
    if user.is_some() || password.is_some() {
        methods.push("user + password");
    }
    if token.is_some() {
        methods.push("token");
    }
    if methods.len() > 1 {
        return Err(ctx.error(
            section.path(),
            section.span(),
            format!(
                "must use at most one of creds, nkey, user + password, token; it has {}",
                listed(&methods)
            ),
        ));
    }
    Ok(match (creds, nkey, user, password, token) {
        (Some(creds), ..) => NatsAuth::Creds(creds),
        (_, Some(nkey), ..) => NatsAuth::Nkey(nkey),
        (_, _, Some(user), Some(password), _) => NatsAuth::UserPassword { user, password },
        (_, _, Some(_), None, _) => return Err(half_pair(ctx, section, "user", "password")),
        (_, _, None, Some(_), _) => return Err(half_pair(ctx, section, "password", "user")),
        (.., Some(token)) => NatsAuth::Token(token),
        _ => NatsAuth::None,
    })
}

/// `{present} is set without {missing}; set both or neither`, on `present`'s line.
fn half_pair(
    ctx: &mut Ctx<'_>,
    section: &Section<'_, '_>,
    present: &str,
    missing: &str,
) -> Reported {
    let span = section.field(present).map(|f| f.span());
    ctx.error(
        section.key_path(present),
        span.as_ref(),
        format!(
            "is set without {}; set both or neither",
            section.key_path(missing)
        ),
    )
}

/// `tls = { ca, cert, key }`.
fn tls(field: &Field<'_, '_>, ctx: &mut Ctx<'_>, base_dir: &Path) -> Read<TlsConfig> {
    let section = Section::of(field, TLS_KEYS, ctx)?;
    let ca = section.read(ctx, "ca", |f, ctx| file(f, ctx, base_dir));
    let cert = section.read(ctx, "cert", |f, ctx| file(f, ctx, base_dir));
    let key = section.read(ctx, "key", |f, ctx| file(f, ctx, base_dir));
    section.finish(ctx);
    let (ca, cert, key) = (ca?, cert?, key?);
    match (&cert, &key) {
        (Some(_), None) => return Err(half_pair(ctx, &section, "cert", "key")),
        (None, Some(_)) => return Err(half_pair(ctx, &section, "key", "cert")),
        _ => {}
    }
    Ok(TlsConfig { ca, cert, key })
}

/// `[metrics]`, absent or not.
pub(super) fn metrics(ctx: &mut Ctx<'_>, field: Option<&Field<'_, '_>>) -> Read<MetricsConfig> {
    let section = Section::optional("metrics", field, METRICS_KEYS, ctx)?;
    let listen = section.read(ctx, "listen", listen);
    section.finish(ctx);
    let listen = match listen? {
        Some(listen) => listen,
        None => SocketAddr::from(([127, 0, 0, 1], 9600)),
    };
    Ok(MetricsConfig { listen })
}

/// `listen`: an IP address and port (`127.0.0.1:9600`, `[::]:9600`),
/// `localhost:9600` (127.0.0.1), or `:9600` (every IPv4 interface, as
/// `0.0.0.0:9600`). No other host name is resolved: what a name resolves to
/// may change under a running process, and the address bound must be the one
/// the file says.
fn listen(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<SocketAddr> {
    const EXPECTED: &str =
        "an address and port like 127.0.0.1:9600, [::]:9600, localhost:9600 or :9600 (every interface)";
    let text = field.string_or(ctx, EXPECTED)?;
    listen_addr(&text).ok_or_else(|| field.error(ctx, format!("must be {EXPECTED}, got {text:?}")))
}

/// The socket address `text` names, by the forms [`listen`] accepts.
fn listen_addr(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    let (host, port) = text.rsplit_once(':')?;
    // A port as `SocketAddr` parses it: digits only, no sign.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    match host {
        "" => Some(SocketAddr::from(([0, 0, 0, 0], port))),
        _ if host.eq_ignore_ascii_case("localhost") => {
            Some(SocketAddr::from(([127, 0, 0, 1], port)))
        }
        _ => None,
    }
}
