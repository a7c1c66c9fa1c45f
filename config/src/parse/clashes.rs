//! Names jetrun derives that two parts of a config would share: a function
//! named like a saga's durable consumer (`saga-<name>`, which also takes its
//! dead-letter subject), and projection buckets named like a bucket jetrun
//! keeps (`jetrun_*`) or like the bucket a rebuild of another projection
//! fills (`<bucket>_<n>`), and a function named like a durable consumer of a
//! keyed function on its stream (`<name>-p<n>`, one per partition). Each is
//! refused with its key path and line.
//! Also the subjects jetrun keeps in its schedules stream (`jetrun.schedule.>`
//! for ticks, `jetrun.schedules.>` for the schedules, `jetrun.delayed.>` for
//! delayed events), which no stream, function subject or emit of the config
//! may take, and the name of the relay of delayed events (`jetrun-delayed`),
//! which no function may take.
//! Also warns of a saga step whose timeout a redelivered command cannot meet.

use std::collections::BTreeMap;
use std::ops::Range;

use super::function::Draft;
use super::section::{Ctx, Field, Section};
use super::streams::Streams;
use crate::model::{FunctionConfig, Role, SagaConfig};
use crate::{name, subject};

/// Bucket names that belong to jetrun itself.
const RESERVED_BUCKETS: [&str; 4] = [
    name::PROJECTION_POINTERS,
    "jetrun_saga_",
    "jetrun_snapshots_",
    "jetrun_dead_letters",
];

/// The subjects jetrun keeps in its schedules stream: the ticks, the
/// messages holding the schedules, and delayed events.
const SCHEDULE_SUBJECTS: [&str; 3] = [
    "jetrun.schedule.>",
    "jetrun.schedules.>",
    "jetrun.delayed.>",
];

/// The subjects jetrun keeps for scheduled functions that `subject`
/// overlaps, and what jetrun keeps there. With `outright`, only a subject
/// naming the `jetrun` space (its first token written out) counts: `>`
/// alone takes them only from a stream, and only when the config schedules
/// a function.
pub(super) fn kept_for_schedules(
    subject: &str,
    outright: bool,
) -> Option<(&'static str, &'static str)> {
    if outright && subject.split('.').next() != Some("jetrun") {
        return None;
    }
    let taken = SCHEDULE_SUBJECTS
        .iter()
        .find(|kept| subject::overlaps(kept, subject))?;
    let what = if *taken == SCHEDULE_SUBJECTS[0] {
        "scheduled functions' ticks"
    } else if *taken == SCHEDULE_SUBJECTS[1] {
        "scheduled functions' schedules"
    } else {
        "delayed events"
    };
    Some((taken, what))
}

/// The error of a declared stream's subject `s` overlapping `taken`.
pub(super) fn stream_overlaps_schedules(s: &str, taken: &str, what: &str, stream: &str) -> String {
    format!(
        "{s:?} overlaps {taken}, which jetrun keeps for {what} in stream {stream}; JetStream \
         refuses streams whose subjects overlap, so pick subjects outside it"
    )
}

/// With a scheduled function, jetrun makes its schedules stream holding
/// `jetrun.schedule.>` and `jetrun.schedules.>`: JetStream refuses it when a
/// declared stream's subjects overlap those (`>`, `*.schedule.>`; those
/// naming `jetrun` outright are refused as the stream is read).
pub(super) fn schedules_stream_apart(ctx: &mut Ctx<'_>, streams: &Streams, stream: &str) {
    for (name, subjects) in &streams.subjects {
        for s in subjects {
            if kept_for_schedules(s.get_ref(), true).is_some() {
                continue;
            }
            if let Some((taken, what)) = kept_for_schedules(s.get_ref(), false) {
                ctx.error(
                    format!("{}.subjects", super::section::join("streams", name)),
                    Some(&s.span()),
                    stream_overlaps_schedules(s.get_ref(), taken, what, stream),
                );
            }
        }
    }
}

/// Where a function is written.
pub(super) struct Place {
    name: String,
    path: String,
    span: Option<Range<usize>>,
}

impl Place {
    pub(super) fn of(draft: &Draft) -> Place {
        Place {
            name: draft.name.clone(),
            path: draft.path.clone(),
            span: draft.span.clone(),
        }
    }
}

/// Refuses functions whose names or buckets clash with names jetrun derives.
pub(super) fn check(
    ctx: &mut Ctx<'_>,
    drafts: &[Place],
    functions: &BTreeMap<String, FunctionConfig>,
    sagas: &BTreeMap<String, SagaConfig>,
) {
    for draft in drafts {
        if draft.name == name::DELAYED_RELAY {
            ctx.error(
                draft.path.clone(),
                draft.span.as_ref(),
                format!(
                    "{} is the name of jetrun's relay of delayed events (its durable consumer \
                     and metrics); rename the function",
                    name::DELAYED_RELAY
                ),
            );
        }
        if let Some(saga) = draft
            .name
            .strip_prefix("saga-")
            .filter(|s| sagas.contains_key(*s))
        {
            ctx.error(
                draft.path.clone(),
                draft.span.as_ref(),
                format!(
                    "is the name of saga {saga}'s durable consumer and takes its dead-letter \
                     subject ({}); rename the function",
                    sagas[saga]
                        .consumers
                        .first()
                        .map_or("its own", |c| c.dead_letter.as_str())
                ),
            );
        }
    }
    partition_consumers(ctx, drafts, functions);
    let buckets: Vec<(&str, &str)> = functions
        .values()
        .filter_map(|f| match &f.role {
            Role::Projection(p) => Some((f.name.as_str(), p.bucket.as_str())),
            _ => None,
        })
        .collect();
    for (function, bucket) in &buckets {
        let draft = drafts.iter().find(|d| d.name == *function);
        let (path, span) = (
            format!("functions.{function}.projection.bucket"),
            draft.and_then(|d| d.span.as_ref()),
        );
        if let Some(reserved) = RESERVED_BUCKETS.iter().find(|r| bucket.starts_with(**r)) {
            ctx.error(
                path,
                span,
                format!(
                    "{bucket:?} is a name jetrun keeps for itself ({reserved}...); pick another"
                ),
            );
            continue;
        }
        let rebuilt = buckets.iter().find(|(_, other)| {
            bucket
                .strip_prefix(*other)
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        });
        if let Some((other_function, other)) = rebuilt {
            ctx.error(
                path,
                span,
                format!(
                    "{bucket:?} is a name `jetrun projection rebuild` gives the buckets of \
                     {other:?} (function {other_function}); pick another"
                ),
            );
        }
    }
}

/// A keyed function's partitions are durable consumers `<consumer>-p<n>` on
/// its stream: an unkeyed function of that name on that stream would share
/// one of them.
fn partition_consumers(
    ctx: &mut Ctx<'_>,
    drafts: &[Place],
    functions: &BTreeMap<String, FunctionConfig>,
) {
    for keyed in functions.values() {
        let (Some(key), Some(binding)) = (&keyed.key, keyed.binding()) else {
            continue;
        };
        for other in functions.values().filter(|f| f.key.is_none()) {
            let Some(theirs) = other.binding().filter(|b| b.stream == binding.stream) else {
                continue;
            };
            let taken = (0..key.partitions)
                .any(|i| name::partition_consumer(&binding.consumer, i) == theirs.consumer);
            let Some(place) = drafts.iter().find(|d| d.name == other.name) else {
                continue;
            };
            if taken {
                ctx.error(
                    place.path.clone(),
                    place.span.as_ref(),
                    format!(
                        "is the name of a durable consumer of function {} on stream {} (its {} \
                         key partitions are consumers {} to {}); rename the function",
                        keyed.name,
                        binding.stream,
                        key.partitions,
                        name::partition_consumer(&binding.consumer, 0),
                        name::partition_consumer(&binding.consumer, key.partitions - 1),
                    ),
                );
            }
        }
    }
}

/// Warns of each saga step whose timeout is shorter than the `ack_wait` of a
/// function of this config consuming its command: a command in flight on a
/// runner that dies comes back only after that ack wait, too late to answer.
pub(super) fn short_step_timeouts(
    ctx: &mut Ctx<'_>,
    field: Option<&Field<'_, '_>>,
    functions: &BTreeMap<String, FunctionConfig>,
    sagas: &BTreeMap<String, SagaConfig>,
) {
    let Some(Ok(section)) = field.map(|f| Section::of(f, &[], ctx)) else {
        return;
    };
    for (saga_name, saga_field) in section.entries() {
        let Some(saga) = sagas.get(saga_name) else {
            continue;
        };
        let steps = Section::of(&saga_field, &["steps"], ctx)
            .ok()
            .and_then(|s| s.field("steps"))
            .and_then(|f| f.elements())
            .unwrap_or_default();
        for (i, step) in saga.steps.iter().enumerate() {
            let consumer = functions.values().find(|f| {
                f.binding().is_some_and(|b| {
                    b.ack_wait > step.timeout
                        && b.subjects
                            .iter()
                            .any(|s| crate::subject_matches(s, &step.command))
                })
            });
            let Some(consumer) = consumer else { continue };
            let ack_wait = consumer.binding().map(|b| b.ack_wait).unwrap_or_default();
            let span = steps.get(i).map(|element| {
                Section::of(element, &["timeout"], ctx)
                    .ok()
                    .and_then(|s| s.field("timeout"))
                    .map_or_else(|| element.span(), |f| f.span())
            });
            ctx.warn(
                format!("sagas.{saga_name}.steps[{i}].timeout"),
                span.as_ref(),
                format!(
                    "({}) is shorter than the ack_wait ({}) of function {}, which consumes \
                     the step's command {}: a command in flight on a runner that dies is \
                     redelivered only after that ack wait, too late to be answered; raise the \
                     step's timeout or lower the function's ack_wait",
                    humantime::format_duration(step.timeout),
                    humantime::format_duration(ack_wait),
                    consumer.name,
                    step.command
                ),
            );
        }
    }
}
