//! `[streams.NAME]`: the streams jetrun creates and updates, their subjects,
//! and the checks between them (no two overlap; none reaches into `dlq.>`
//! nor into the subjects jetrun keeps for scheduled functions).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use toml::Spanned;

use super::clashes;
use super::section::{join, Ctx, Field, Read, Reported, Section};
use crate::model::{DeadLetters, Retention, Storage, StreamConfig};
use crate::name;
use crate::subject;

/// What the schedules stream holds: the ticks and the schedules.
const SCHEDULE_TICKS: &str = "jetrun.schedule.>";
const SCHEDULE_HOLDERS: &str = "jetrun.schedules.>";

pub(super) const STREAM_KEYS: &[&str] = &[
    "subjects",
    "storage",
    "replicas",
    "max_age",
    "duplicate_window",
    "retention",
    "manage",
];

/// The declared streams, as functions are bound to them.
pub(super) struct Streams {
    /// Every valid name declared, readable or not.
    pub(super) names: BTreeSet<String>,
    /// Each stream's valid subjects, with their spans, by name.
    pub(super) subjects: BTreeMap<String, Vec<Spanned<String>>>,
    /// The streams that could be read whole, by name.
    pub(super) configs: BTreeMap<String, StreamConfig>,
    /// Whether every stream's name and subjects could be read: when not, a
    /// subject no stream seems to capture may be captured by a broken one,
    /// so that is not reported.
    pub(super) complete: bool,
    /// Where dead letters go (`[dead_letters]`), which no declared stream
    /// may take.
    pub(super) dead_letters: DeadLetters,
    /// The stream of scheduled functions (`[schedules] stream`), which no
    /// declared stream may be; `None` when it could not be read.
    pub(super) schedules_stream: Option<String>,
}

impl Streams {
    /// The first declared stream (by name) with a subject capturing `filter`.
    pub(super) fn capturing(&self, filter: &str) -> Option<&str> {
        self.subjects
            .iter()
            .find(|(_, subjects)| {
                subjects
                    .iter()
                    .any(|s| subject::captures(s.get_ref(), filter))
            })
            .map(|(name, _)| name.as_str())
    }
}

/// `[streams]`, absent or not.
pub(super) fn read(
    ctx: &mut Ctx<'_>,
    field: Option<&Field<'_, '_>>,
    dead_letters: DeadLetters,
    schedules_stream: Option<String>,
) -> Streams {
    let mut streams = Streams {
        names: BTreeSet::new(),
        subjects: BTreeMap::new(),
        configs: BTreeMap::new(),
        complete: true,
        dead_letters,
        schedules_stream,
    };
    let Ok(section) = Section::optional("streams", field, &[], ctx) else {
        streams.complete = false;
        return streams;
    };
    for (name, field) in section.entries() {
        let named = stream_name(ctx, name, &field, &streams);
        let (subjects, config) = stream(ctx, &field, &streams);
        if named.is_ok() {
            streams.names.insert(name.to_owned());
        }
        match (named, subjects) {
            (Ok(()), Ok(subjects)) => {
                streams.subjects.insert(name.to_owned(), subjects);
            }
            _ => streams.complete = false,
        }
        if let (Ok(()), Ok(config)) = (named, config) {
            streams.configs.insert(name.to_owned(), config);
        }
    }
    no_overlaps(ctx, &streams);
    streams
}

fn stream_name(
    ctx: &mut Ctx<'_>,
    name: &str,
    field: &Field<'_, '_>,
    streams: &Streams,
) -> Read<()> {
    let dead_letters = &streams.dead_letters;
    if streams.schedules_stream.as_deref() == Some(name) {
        return Err(ctx.error(
            field.path.clone(),
            field.key_span.as_ref(),
            format!(
                "is reserved: jetrun creates and manages the {name} stream for scheduled \
                 functions ({} and {}) and delayed events (jetrun.delayed.>); pick another name",
                SCHEDULE_TICKS, SCHEDULE_HOLDERS
            ),
        ));
    }
    if name == dead_letters.stream {
        return Err(ctx.error(
            field.path.clone(),
            field.key_span.as_ref(),
            format!(
                "is reserved: jetrun creates and manages the {} stream for dead letters ({}); \
                 pick another name",
                dead_letters.stream,
                dead_letters.subjects()
            ),
        ));
    }
    if !name::is_stream_name(name) {
        return Err(ctx.error(
            field.path.clone(),
            field.key_span.as_ref(),
            format!("is not a valid stream name: {}", name::STREAM_NAME_RULE),
        ));
    }
    Ok(())
}

/// One `[streams.NAME]` table: its valid subjects (for binding, even when
/// other keys are wrong) and its whole config.
fn stream(
    ctx: &mut Ctx<'_>,
    field: &Field<'_, '_>,
    streams: &Streams,
) -> (Read<Vec<Spanned<String>>>, Read<StreamConfig>) {
    let section = match Section::of(field, STREAM_KEYS, ctx) {
        Ok(section) => section,
        Err(reported) => return (Err(reported), Err(reported)),
    };
    let subjects = match section.field("subjects") {
        Some(field) => subjects(ctx, &field, streams),
        None => Err(ctx.error(
            section.key_path("subjects"),
            section.span(),
            "is required: the subjects the stream holds, like [\"order.>\"]",
        )),
    };
    let storage = section.read(ctx, "storage", |f, ctx| {
        f.one_of(ctx, &[("file", Storage::File), ("memory", Storage::Memory)])
    });
    let replicas = section.read(ctx, "replicas", replicas);
    let max_age = section.read(ctx, "max_age", Field::nonzero_duration);
    let duplicate_window = section.read(ctx, "duplicate_window", Field::nonzero_duration);
    let retention = section.read(ctx, "retention", |f, ctx| {
        f.one_of(
            ctx,
            &[
                ("limits", Retention::Limits),
                ("interest", Retention::Interest),
                ("workqueue", Retention::WorkQueue),
            ],
        )
    });
    let manage = section.read(ctx, "manage", Field::boolean);
    section.finish(ctx);

    let windows = window_within_age(ctx, &section, max_age, duplicate_window);
    let config = match (&subjects, storage, replicas, windows, retention, manage) {
        (
            Ok(subjects),
            Ok(storage),
            Ok(replicas),
            Ok((max_age, duplicate_window)),
            Ok(retention),
            Ok(manage),
        ) => Ok(StreamConfig {
            subjects: subjects.iter().map(|s| s.get_ref().clone()).collect(),
            storage: storage.unwrap_or(Storage::File),
            replicas: replicas.unwrap_or(1),
            max_age,
            duplicate_window,
            retention: retention.unwrap_or(Retention::Limits),
            manage,
        }),
        _ => Err(Reported),
    };
    (subjects, config)
}

/// `max_age` and `duplicate_window`, the window no longer than the age.
fn window_within_age(
    ctx: &mut Ctx<'_>,
    section: &Section<'_, '_>,
    max_age: Read<Option<Duration>>,
    duplicate_window: Read<Option<Duration>>,
) -> Read<(Option<Duration>, Option<Duration>)> {
    let (max_age, duplicate_window) = (max_age?, duplicate_window?);
    if let (Some(age), Some(window), Some(field)) =
        (max_age, duplicate_window, section.field("duplicate_window"))
    {
        if window > age {
            return Err(field.error(
                ctx,
                format!(
                    "must not be longer than max_age ({}), got {:?}",
                    humantime::format_duration(age),
                    humantime::format_duration(window).to_string()
                ),
            ));
        }
    }
    Ok((max_age, duplicate_window))
}

/// A non-empty list of valid subjects, none reaching into the dead letters'
/// (`dlq.>`) nor naming those of scheduled functions (`jetrun.schedule.>`).
fn subjects(
    ctx: &mut Ctx<'_>,
    field: &Field<'_, '_>,
    streams: &Streams,
) -> Read<Vec<Spanned<String>>> {
    let dead_letters = &streams.dead_letters;
    let dlq_subjects = dead_letters.subjects();
    let schedules = streams
        .schedules_stream
        .as_deref()
        .unwrap_or(name::SCHEDULES_STREAM);
    let subjects = field.strings(ctx, "a non-empty list of subjects, like [\"order.>\"]")?;
    let mut failed = false;
    for s in &subjects {
        let error = match subject::check(s.get_ref(), true) {
            Err(why) => Some(format!("{:?} is not a valid subject: {why}", s.get_ref())),
            Ok(()) if subject::overlaps(s.get_ref(), &dlq_subjects) => Some(format!(
                "{:?} overlaps {dlq_subjects}, which the {} stream holds for dead letters; \
                 pick subjects outside it",
                s.get_ref(),
                dead_letters.stream
            )),
            Ok(()) => clashes::kept_for_schedules(s.get_ref(), true).map(|(taken, what)| {
                clashes::stream_overlaps_schedules(s.get_ref(), taken, what, schedules)
            }),
        };
        if let Some(message) = error {
            ctx.error(field.path.clone(), Some(&s.span()), message);
            failed = true;
        }
    }
    if failed {
        Err(Reported)
    } else {
        Ok(subjects)
    }
}

/// 1 to 5 (JetStream's limit).
fn replicas(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<usize> {
    const EXPECTED: &str = "an integer from 1 to 5";
    let n = field.integer(ctx, EXPECTED)?;
    match usize::try_from(n) {
        Ok(n @ 1..=5) => Ok(n),
        _ => Err(field.wrong(ctx, EXPECTED)),
    }
}

/// JetStream refuses a stream whose subjects overlap another's.
fn no_overlaps(ctx: &mut Ctx<'_>, streams: &Streams) {
    let all: Vec<(&String, &Spanned<String>)> = streams
        .subjects
        .iter()
        .flat_map(|(name, subjects)| subjects.iter().map(move |s| (name, s)))
        .collect();
    for (i, (name, s)) in all.iter().enumerate() {
        let earlier = all[..i]
            .iter()
            .find(|(other, o)| other != name && subject::overlaps(o.get_ref(), s.get_ref()));
        if let Some((other, o)) = earlier {
            ctx.error(
                format!("{}.subjects", join("streams", name)),
                Some(&s.span()),
                format!(
                    "{:?} overlaps {:?} of stream {other}; JetStream refuses streams whose \
                     subjects overlap",
                    s.get_ref(),
                    o.get_ref()
                ),
            );
        }
    }
}
