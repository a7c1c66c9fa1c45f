//! `[aggregates.NAME]`: event-sourced entities. Each names the stream its
//! events live in and the subject template of an instance; every instance's
//! events (`order.42.>` for `order.{id}`) must be captured by that stream.

use std::collections::{BTreeMap, BTreeSet};

use super::section::{Ctx, Field, Read, Reported, Section};
use super::streams::Streams;
use crate::model::{AggregateConfig, SubjectTemplate};
use crate::name;
use crate::subject;

pub(super) const AGGREGATE_KEYS: &[&str] = &[
    "stream",
    "subject",
    "id",
    "snapshot_every",
    "max_conflict_retries",
];

const MAX_CONFLICT_RETRIES: u32 = 5;

/// The declared aggregates.
#[derive(Default)]
pub(super) struct Aggregates {
    /// Every name declared, readable or not.
    pub(super) names: BTreeSet<String>,
    /// The aggregates that could be read, by name.
    pub(super) configs: BTreeMap<String, AggregateConfig>,
}

/// `[aggregates]`, absent or not.
pub(super) fn read(
    ctx: &mut Ctx<'_>,
    field: Option<&Field<'_, '_>>,
    streams: &Streams,
) -> Aggregates {
    let mut aggregates = Aggregates::default();
    let Ok(section) = Section::optional("aggregates", field, &[], ctx) else {
        return aggregates;
    };
    for (name, field) in section.entries() {
        aggregates.names.insert(name.to_owned());
        if !name::is_function_name(name) {
            ctx.error(
                field.path.clone(),
                field.key_span.as_ref(),
                "is not a valid aggregate name: use only letters, digits, - and _ \
                 (it names a KV bucket of snapshots)",
            );
            continue;
        }
        if let Ok(aggregate) = aggregate(ctx, name, &field, streams) {
            aggregates.configs.insert(name.to_owned(), aggregate);
        }
    }
    aggregates
}

fn aggregate(
    ctx: &mut Ctx<'_>,
    name: &str,
    field: &Field<'_, '_>,
    streams: &Streams,
) -> Read<AggregateConfig> {
    let section = Section::of(field, AGGREGATE_KEYS, ctx)?;
    let required = |ctx: &mut Ctx<'_>, key: &str, example: &str| {
        ctx.error(
            section.key_path(key),
            section.span(),
            format!("is required, like {key} = {example}"),
        )
    };
    let stream = match section.field("stream") {
        Some(field) => stream(&field, ctx, streams),
        None => Err(required(ctx, "stream", "\"ORDERS\"")),
    };
    let template = match section.field("subject") {
        Some(field) => template(&field, ctx),
        None => Err(required(ctx, "subject", "\"order.{id}\"")),
    };
    let id = match section.field("id") {
        Some(field) => pointer(&field, ctx),
        None => Err(required(ctx, "id", "\"order_id\"")),
    };
    let snapshot_every = section.read(ctx, "snapshot_every", Field::positive);
    let max_conflict_retries = section.read(ctx, "max_conflict_retries", |f, ctx| {
        let n = f.integer(ctx, "a non-negative integer")?;
        u32::try_from(n).map_err(|_| f.wrong(ctx, "a non-negative integer below 2^32"))
    });
    section.finish(ctx);

    let (stream, template) = (stream?, template?);
    // Every instance's events must land in the stream.
    let filter = format!("{}*{}.>", template.before, template.after);
    let held = streams
        .subjects
        .get(&stream)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if !held.iter().any(|s| subject::captures(s.get_ref(), &filter)) {
        let field = section.field("subject").expect("read above");
        return Err(field.error(
            ctx,
            format!(
                "the events of every instance ({filter}) must be captured by stream {stream}; \
                 add {filter:?} to its subjects"
            ),
        ));
    }
    Ok(AggregateConfig {
        name: name.to_owned(),
        stream,
        subject: template,
        id: id?,
        snapshot_every: snapshot_every?.map(|n| n as u64),
        max_conflict_retries: max_conflict_retries?.unwrap_or(MAX_CONFLICT_RETRIES),
    })
}

/// `stream = "ORDERS"`, a stream declared in `[streams]`.
fn stream(field: &Field<'_, '_>, ctx: &mut Ctx<'_>, streams: &Streams) -> Read<String> {
    let name = field.non_empty_string(ctx)?;
    if streams.subjects.contains_key(&name) {
        Ok(name)
    } else if streams.names.contains(&name) {
        // Declared, but unreadable: reported there.
        Err(Reported)
    } else {
        Err(field.error(
            ctx,
            format!("names no stream declared in [streams]: declare [streams.{name}]"),
        ))
    }
}

/// `subject = "order.{id}"`: one `{id}` standing for a whole token.
fn template(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<SubjectTemplate> {
    const RULE: &str = "must be a subject with one {id} token, like \"order.{id}\"";
    let text = field.non_empty_string(ctx)?;
    let Some((before, after)) = text.split_once("{id}") else {
        return Err(field.error(ctx, format!("{text:?} {RULE}")));
    };
    let whole_token = (before.is_empty() || before.ends_with('.'))
        && (after.is_empty() || after.starts_with('.'));
    let sample = format!("{before}x{after}");
    if after.contains("{id}") || !whole_token || subject::check(&sample, false).is_err() {
        return Err(field.error(ctx, format!("{text:?} {RULE}")));
    }
    Ok(SubjectTemplate {
        before: before.to_owned(),
        after: after.to_owned(),
    })
}

/// A field name (`order_id`) or a JSON pointer (`/order/id`), as a pointer.
pub(super) fn pointer(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<String> {
    let text = field.non_empty_string(ctx)?;
    if text.starts_with('/') {
        Ok(text)
    } else {
        Ok(format!("/{}", text.replace('~', "~0").replace('/', "~1")))
    }
}
