//! From text to a validated [`Config`]: the TOML is parsed into a spanned
//! document, then walked table by table, key by key, recording every error
//! with its key path and line instead of stopping at the first.

mod aggregates;
mod bind;
mod clashes;
mod flow;
mod function;
mod handler;
mod nats;
mod retry;
mod sagas;
mod section;
mod shared;
mod streams;
mod telemetry;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use toml::de::DeTable;

use self::section::{line_of, Ctx, Field, Section};
use crate::error::{ConfigError, ConfigErrors};
use crate::model::Config;

const TOP_KEYS: &[&str] = &[
    "nats",
    "metrics",
    "telemetry",
    "defaults",
    "streams",
    "functions",
    "aggregates",
    "sagas",
    "dead_letters",
    "service",
    "schedules",
    "shutdown_timeout",
];
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// See [`crate::parse()`].
pub(crate) fn parse(
    text: &str,
    env: &BTreeMap<String, String>,
    base_dir: &Path,
    builtins: &[&str],
) -> Result<Config, ConfigErrors> {
    let document = DeTable::parse(text).map_err(|e| ConfigErrors(vec![syntax(text, &e)]))?;
    let mut ctx = Ctx::new(text, env);
    let top = Section::root(document.get_ref(), TOP_KEYS);
    let field = |key: &str| top.field(key);

    let nats = nats::nats(&mut ctx, field("nats").as_ref(), base_dir);
    let metrics = nats::metrics(&mut ctx, field("metrics").as_ref());
    let telemetry = telemetry::read(&mut ctx, field("telemetry").as_ref());
    let shutdown_timeout = top.read(&mut ctx, "shutdown_timeout", Field::duration);
    let dead_letters = shared::dead_letters(&mut ctx, field("dead_letters").as_ref());
    let service = shared::service(&mut ctx, field("service").as_ref());
    let schedules_stream = shared::schedules(
        &mut ctx,
        field("schedules").as_ref(),
        dead_letters.as_ref().ok(),
    );
    let streams = streams::read(
        &mut ctx,
        field("streams").as_ref(),
        dead_letters.clone().unwrap_or_default(),
        schedules_stream.clone().ok(),
    );
    let defaults = function::defaults(&mut ctx, field("defaults").as_ref());
    let drafts = function::read_all(
        &mut ctx,
        field("functions").as_ref(),
        &defaults,
        base_dir,
        builtins,
    );
    let bindings = bind::bind(&mut ctx, &drafts, &streams);
    if let (true, Some(stream)) = (
        drafts.iter().any(|d| matches!(d.schedule, Ok(Some(_)))),
        &streams.schedules_stream,
    ) {
        clashes::schedules_stream_apart(&mut ctx, &streams, stream);
    }
    let aggregates = aggregates::read(&mut ctx, field("aggregates").as_ref(), &streams);
    let sagas = sagas::read(&mut ctx, field("sagas").as_ref(), &streams, &defaults);
    for draft in &drafts {
        if let Some(name) = &draft.aggregate {
            if !aggregates.names.contains(name.get_ref()) {
                ctx.error(
                    format!("{}.aggregate", draft.path),
                    Some(&name.span()),
                    format!(
                        "{:?} names no aggregate: declare [aggregates.{}]",
                        name.get_ref(),
                        name.get_ref()
                    ),
                );
            }
        }
    }
    top.finish(&mut ctx);

    let places: Vec<clashes::Place> = drafts.iter().map(clashes::Place::of).collect();
    let mut functions = BTreeMap::new();
    for (draft, binding) in drafts.into_iter().zip(bindings) {
        if let Some(function) = binding
            .ok()
            .and_then(|binding| draft.finish(binding, &aggregates.configs))
        {
            functions.insert(function.name.clone(), function);
        }
    }
    clashes::check(&mut ctx, &places, &functions, &sagas);
    clashes::short_step_timeouts(&mut ctx, field("sagas").as_ref(), &functions, &sagas);
    let warnings = ctx.take_warnings();
    match (
        nats,
        metrics,
        telemetry,
        shutdown_timeout,
        dead_letters,
        service,
        schedules_stream,
    ) {
        (
            Ok(nats),
            Ok(metrics),
            Ok(telemetry),
            Ok(shutdown_timeout),
            Ok(dead_letters),
            Ok(service),
            Ok(schedules_stream),
        ) if !ctx.has_errors() => Ok(Config {
            nats,
            metrics,
            telemetry,
            shutdown_timeout: shutdown_timeout.unwrap_or(SHUTDOWN_TIMEOUT),
            streams: streams.configs,
            functions,
            aggregates: aggregates.configs,
            sagas,
            dead_letters,
            service,
            schedules_stream,
            warnings,
        }),
        _ => Err(ConfigErrors(ctx.into_errors())),
    }
}

/// A TOML syntax error, on its line.
fn syntax(text: &str, error: &toml::de::Error) -> ConfigError {
    let message = error
        .message()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    ConfigError {
        path: String::new(),
        line: error.span().map(|span| line_of(text, span.start)),
        message: format!("invalid TOML: {message}"),
    }
}
