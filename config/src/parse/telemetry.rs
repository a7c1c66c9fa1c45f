//! `[telemetry]`: OpenTelemetry traces exported over OTLP/HTTP. Absent, jetrun
//! exports nothing.

use std::collections::BTreeMap;

use super::section::{Ctx, Field, Read, Section};
use crate::model::TelemetryConfig;

pub(super) const TELEMETRY_KEYS: &[&str] =
    &["otlp_endpoint", "service_name", "sampling_ratio", "headers"];

/// The `service.name` of jetrun's spans unless `service_name` says otherwise.
pub(super) const SERVICE_NAME: &str = "jetrun";
/// The path OTLP/HTTP receivers take traces on.
const TRACES_PATH: &str = "/v1/traces";

/// `[telemetry]`, when the file has one.
pub(super) fn read(
    ctx: &mut Ctx<'_>,
    field: Option<&Field<'_, '_>>,
) -> Read<Option<TelemetryConfig>> {
    let Some(field) = field else {
        return Ok(None);
    };
    let section = Section::of(field, TELEMETRY_KEYS, ctx)?;
    let endpoint = match section.field("otlp_endpoint") {
        Some(field) => endpoint(&field, ctx),
        None => Err(ctx.error(
            section.key_path("otlp_endpoint"),
            section.span(),
            "is required: the OTLP/HTTP receiver (a collector) to send traces to, like \
             otlp_endpoint = \"http://127.0.0.1:4318\"; remove [telemetry] to send none",
        )),
    };
    let service_name = section.read(ctx, "service_name", Field::non_empty_string);
    let sampling_ratio = section.read(ctx, "sampling_ratio", ratio);
    let headers = section.read(ctx, "headers", headers);
    section.finish(ctx);
    Ok(Some(TelemetryConfig {
        traces_url: endpoint?,
        service_name: service_name?.unwrap_or_else(|| SERVICE_NAME.to_owned()),
        sampling_ratio: sampling_ratio?.unwrap_or(1.0),
        headers: headers?.unwrap_or_default(),
    }))
}

/// `otlp_endpoint`: an `http://` or `https://` URL with a host; the traces
/// path is appended unless the URL ends with it already.
fn endpoint(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<String> {
    const EXPECTED: &str = "an http:// or https:// URL like http://127.0.0.1:4318";
    let url = field.string_or(ctx, EXPECTED)?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let host = rest.map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
    let valid = host.is_some_and(|host| !host.is_empty())
        && !url.contains(|c: char| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(field.error(ctx, format!("must be {EXPECTED}, got {url:?}")));
    }
    let base = url.trim_end_matches('/');
    if base.ends_with(TRACES_PATH) {
        Ok(base.to_owned())
    } else {
        Ok(format!("{base}{TRACES_PATH}"))
    }
}

/// `sampling_ratio`: a number from 0 to 1.
fn ratio(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<f64> {
    let ratio = field.number(ctx)?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(field.error(ctx, format!("must be from 0 to 1, got {ratio}")))
    }
}

/// `headers = { name = "value" }`: each name one an HTTP header can have.
fn headers(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<BTreeMap<String, String>> {
    let headers = field.string_map(ctx)?;
    let token = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if let Some(name) = headers.keys().find(|name| !token(name)) {
        return Err(field.error(
            ctx,
            format!("has {name:?}, which is not an HTTP header name"),
        ));
    }
    if let Some(name) = headers
        .iter()
        .find(|(_, value)| value.contains(|c: char| c.is_control()))
        .map(|(name, _)| name)
    {
        return Err(field.error(
            ctx,
            format!("has {name} with a control character, which no header can carry"),
        ));
    }
    Ok(headers)
}
