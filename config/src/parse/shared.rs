//! `[dead_letters]`, `[service]` and `[schedules]`: the names of what jetrun
//! shares in a NATS account (the dead-letter stream and its subjects, the
//! micro service of request functions, the stream of scheduled functions'
//! ticks), so two teams' runners can keep theirs apart.

use super::section::{Ctx, Field, Read, Section};
use crate::model::{DeadLetters, ServiceConfig};
use crate::{name, subject};

pub(super) const DEAD_LETTERS_KEYS: &[&str] = &["stream", "prefix"];
pub(super) const SERVICE_KEYS: &[&str] = &["name"];
pub(super) const SCHEDULES_KEYS: &[&str] = &["stream"];

/// `stream = "NAME"` of `[dead_letters]` or `[schedules]`.
fn stream_name(f: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<String> {
    let name = f.non_empty_string(ctx)?;
    match name::is_stream_name(&name) {
        true => Ok(name),
        false => Err(f.error(
            ctx,
            format!(
                "{name:?} is not a valid stream name: {}",
                name::STREAM_NAME_RULE
            ),
        )),
    }
}

/// `[dead_letters]`, absent or not.
pub(super) fn dead_letters(ctx: &mut Ctx<'_>, field: Option<&Field<'_, '_>>) -> Read<DeadLetters> {
    let section = Section::optional("dead_letters", field, DEAD_LETTERS_KEYS, ctx)?;
    let stream = section.read(ctx, "stream", stream_name);
    let prefix = section.read(ctx, "prefix", |f, ctx| {
        let prefix = f.non_empty_string(ctx)?;
        match subject::check(&prefix, false) {
            Ok(()) => Ok(prefix),
            Err(why) => Err(f.error(
                ctx,
                format!(
                    "{prefix:?} is not a subject prefix ({why}): tokens like \"dlq\" or \
                     \"orders.dlq\", no wildcards"
                ),
            )),
        }
    });
    section.finish(ctx);
    let defaults = DeadLetters::default();
    Ok(DeadLetters {
        stream: stream?.unwrap_or(defaults.stream),
        prefix: prefix?.unwrap_or(defaults.prefix),
    })
}

/// `[service]`, absent or not.
pub(super) fn service(ctx: &mut Ctx<'_>, field: Option<&Field<'_, '_>>) -> Read<ServiceConfig> {
    let section = Section::optional("service", field, SERVICE_KEYS, ctx)?;
    let service_name = section.read(ctx, "name", |f, ctx| {
        let text = f.non_empty_string(ctx)?;
        // The micro service API's rule for a service name.
        let valid = text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        match valid {
            true => Ok(text),
            false => Err(f.error(
                ctx,
                format!("{text:?} is not a micro service name: letters, digits, - and _ only"),
            )),
        }
    });
    section.finish(ctx);
    Ok(ServiceConfig {
        name: service_name?.unwrap_or_else(|| ServiceConfig::default().name),
    })
}

/// `[schedules]`, absent or not: the name of the stream of scheduled
/// functions' schedules and ticks, not the dead letters' (`dead_letters`,
/// when it could be read).
pub(super) fn schedules(
    ctx: &mut Ctx<'_>,
    field: Option<&Field<'_, '_>>,
    dead_letters: Option<&DeadLetters>,
) -> Read<String> {
    let section = Section::optional("schedules", field, SCHEDULES_KEYS, ctx)?;
    let stream = section.read(ctx, "stream", |f, ctx| {
        let stream = stream_name(f, ctx)?;
        match dead_letters.filter(|d| d.stream == stream) {
            Some(_) => Err(f.error(
                ctx,
                format!(
                    "{stream:?} is the dead-letter stream ([dead_letters] stream); \
                     scheduled functions' ticks need a stream of their own"
                ),
            )),
            None => Ok(stream),
        }
    });
    section.finish(ctx);
    Ok(stream?.unwrap_or_else(|| name::SCHEDULES_STREAM.to_owned()))
}
