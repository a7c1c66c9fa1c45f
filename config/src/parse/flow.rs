//! A stream function's flow control: `key` (with `on_dead_letter`,
//! `missing_key`, `partitions`), `batch` and `rate`. Each is set per
//! function, never in `[defaults]`, and none applies to a request function.

use std::time::Duration;

use toml::Spanned;

use super::section::{Ctx, Field, Read, Section};
use crate::model::{BatchConfig, KeyConfig, KeySource, MissingKey, OnDeadLetter, Rate};

/// The flow-control keys of `[functions.NAME]`.
pub(super) const FLOW_KEYS: &[&str] = &[
    "key",
    "on_dead_letter",
    "missing_key",
    "partitions",
    "batch",
    "rate",
];
/// The keys that only mean something with `key`.
const KEYED: &[&str] = &["on_dead_letter", "missing_key", "partitions"];
pub(super) const BATCH_KEYS: &[&str] = &["size", "wait"];

const PARTITIONS: usize = 4;
const MAX_PARTITIONS: usize = 64;
const MAX_BATCH: usize = 10_000;
const BATCH_WAIT: Duration = Duration::from_millis(50);

/// The wording of every `key` error.
const KEY_FORMS: &str =
    "a JSON pointer into the event's data like \"/account_id\", or \"subject:N\" for the N-th \
     subject token (from 1)";
/// The wording of every `rate` error.
const RATE_FORMS: &str = "\"N/s\" or \"N/m\" (N calls per second or per minute, a whole \
     number of at least 1), like \"200/s\"";

/// A function's flow control, as read.
pub(super) struct Flow {
    pub(super) key: Option<KeyConfig>,
    pub(super) batch: Option<BatchConfig>,
    pub(super) rate: Option<Rate>,
}

/// The flow-control keys of a stream function's table; `subjects` are the
/// function's subject filters (a `subject:N` key needs one with N tokens).
/// A request function's are refused by its table (they have no meaning
/// there) and read as none.
pub(super) fn read(
    ctx: &mut Ctx<'_>,
    section: &Section<'_, '_>,
    subjects: &Read<Vec<Spanned<String>>>,
    is_request: bool,
) -> Read<Flow> {
    if is_request {
        return Ok(Flow {
            key: None,
            batch: None,
            rate: None,
        });
    }
    let source = section.read(ctx, "key", |field, ctx| {
        let source = key_source(field, ctx)?;
        tokens_within(ctx, field, &source, subjects)?;
        Ok(source)
    });
    let on_dead_letter = section.read(ctx, "on_dead_letter", |field, ctx| {
        field.one_of(
            ctx,
            &[
                ("continue", OnDeadLetter::Continue),
                ("park", OnDeadLetter::Park),
            ],
        )
    });
    let missing_key = section.read(ctx, "missing_key", |field, ctx| {
        field.one_of(
            ctx,
            &[
                ("dead_letter", MissingKey::DeadLetter),
                ("unordered", MissingKey::Unordered),
            ],
        )
    });
    let partitions = section.read(ctx, "partitions", partitions);
    let mut keyless = Ok(());
    if section.field("key").is_none() {
        for name in KEYED {
            if let Some(field) = section.field(name) {
                keyless = Err(field.error(
                    ctx,
                    format!(
                        "has no meaning without key: {name} is for a function whose events \
                         are ordered by key (key = \"/account_id\" or \"subject:N\")"
                    ),
                ));
            }
        }
    }
    let batch = section.read(ctx, "batch", batch);
    let rate = section.read(ctx, "rate", rate);

    keyless?;
    let key = source?.map(|source| -> Read<KeyConfig> {
        Ok(KeyConfig {
            source,
            on_dead_letter: on_dead_letter?.unwrap_or_default(),
            missing_key: missing_key?.unwrap_or_default(),
            partitions: partitions?.unwrap_or(PARTITIONS),
        })
    });
    Ok(Flow {
        key: key.transpose()?,
        batch: batch?,
        rate: rate?,
    })
}

/// `key = "/account_id"` or `key = "subject:2"`.
fn key_source(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<KeySource> {
    let text = field.string_or(ctx, KEY_FORMS)?;
    if let Some(n) = text.strip_prefix("subject:") {
        return match whole_number(n) {
            Some(n) if n >= 1 => Ok(KeySource::SubjectToken(n)),
            _ => Err(field.error(
                ctx,
                format!(
                    "must be \"subject:N\" with N a subject token's position, from 1, \
                     got {text:?}"
                ),
            )),
        };
    }
    if text.is_empty() {
        return Err(field.error(
            ctx,
            "must point into the event's data: \"\" is the whole data, not a key; \
             point at a field, like \"/account_id\"",
        ));
    }
    if !text.starts_with('/') {
        let hint = format!("/{}", text.replace('~', "~0").replace('/', "~1"));
        return Err(field.error(
            ctx,
            format!("must be {KEY_FORMS}, got {text:?} (a field name is {hint:?} as a pointer)"),
        ));
    }
    let mut rest = text.as_str();
    while let Some(at) = rest.find('~') {
        rest = &rest[at + 1..];
        if !rest.starts_with(['0', '1']) {
            return Err(field.error(
                ctx,
                format!(
                    "{text:?} is not a JSON pointer: ~ must be followed by 0 (for ~) or 1 \
                     (for /)"
                ),
            ));
        }
    }
    Ok(KeySource::Pointer(text))
}

/// `subject:N` on a function none of whose subjects has N tokens would find
/// no key in any event; a subject ending in `>` may have any number.
fn tokens_within(
    ctx: &mut Ctx<'_>,
    field: &Field<'_, '_>,
    source: &KeySource,
    subjects: &Read<Vec<Spanned<String>>>,
) -> Read<()> {
    let (KeySource::SubjectToken(n), Ok(subjects)) = (source, subjects) else {
        return Ok(());
    };
    let counts: Vec<(&str, usize)> = subjects
        .iter()
        .map(|s| (s.get_ref().as_str(), s.get_ref().split('.').count()))
        .collect();
    let reaches = |(subject, count): &(&str, usize)| count >= n || subject.ends_with('>');
    if counts.is_empty() || counts.iter().any(reaches) {
        return Ok(());
    }
    let short: Vec<String> = counts
        .iter()
        .map(|(subject, count)| {
            let tokens = if *count == 1 { "token" } else { "tokens" };
            format!("{subject:?} has {count} {tokens}")
        })
        .collect();
    Err(field.error(
        ctx,
        format!(
            "reads subject token {n}, but no subject of the function has one: {}",
            short.join(", ")
        ),
    ))
}

/// `partitions = 8`: 1 to 64.
fn partitions(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<usize> {
    const EXPECTED: &str = "an integer from 1 to 64";
    let n = field.integer(ctx, EXPECTED)?;
    match usize::try_from(n) {
        Ok(n @ 1..=MAX_PARTITIONS) => Ok(n),
        _ => Err(field.wrong(ctx, EXPECTED)),
    }
}

/// `batch = { size = 100, wait = "50ms" }`.
fn batch(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<BatchConfig> {
    let section = Section::of(field, BATCH_KEYS, ctx)?;
    let size = match section.field("size") {
        Some(field) => batch_size(&field, ctx),
        None => Err(ctx.error(
            section.key_path("size"),
            section.span(),
            "is required: the most events in one handler call, like size = 100",
        )),
    };
    let wait = section.read(ctx, "wait", Field::nonzero_duration);
    section.finish(ctx);
    Ok(BatchConfig {
        size: size?,
        wait: wait?.unwrap_or(BATCH_WAIT),
    })
}

/// `size = 100`: 1 to 10000.
fn batch_size(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<usize> {
    const EXPECTED: &str = "an integer from 1 to 10000";
    let n = field.integer(ctx, EXPECTED)?;
    match usize::try_from(n) {
        Ok(n @ 1..=MAX_BATCH) => Ok(n),
        _ => Err(field.wrong(ctx, EXPECTED)),
    }
}

/// `rate = "200/s"` or `"600/m"`.
fn rate(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<Rate> {
    let text = field.string_or(ctx, RATE_FORMS)?;
    let parsed = text.split_once('/').and_then(|(calls, per)| {
        let per = match per {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            _ => return None,
        };
        let calls = u32::try_from(whole_number(calls)?).ok()?;
        (calls >= 1).then_some(Rate { calls, per })
    });
    parsed.ok_or_else(|| field.error(ctx, format!("must be {RATE_FORMS}, got {text:?}")))
}

/// Digits only (no sign, no space), as a number.
fn whole_number(text: &str) -> Option<usize> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}
