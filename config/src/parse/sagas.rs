//! `[sagas.NAME]`: declarative sagas, each a start event, ordered steps (a
//! command, the replies ending it, an optional undo) and the events ending
//! it. Every type is a subject a declared stream captures, and each plays one
//! role in its saga: participants and the saga tell events apart by type alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use toml::Spanned;

use super::function::Defaults;
use super::retry;
use super::section::{Ctx, Field, Read, Reported, Section};
use super::streams::Streams;
use crate::model::{SagaConfig, SagaStep, StreamBinding};
use crate::name;
use crate::subject;

pub(super) const SAGA_KEYS: &[&str] = &[
    "start",
    "key",
    "timeout",
    "completed",
    "failed",
    "retry",
    "retention",
    "steps",
];

/// How long an ended instance is kept when the saga says nothing.
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub(super) const STEP_KEYS: &[&str] = &[
    "name",
    "command",
    "success",
    "failure",
    "compensate",
    "compensated",
    "timeout",
    "delay",
];

/// A step's timeout when it sets none: a function's built-in timeout.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// `[sagas]`, absent or not: the sagas that could be read, by name.
pub(super) fn read(
    ctx: &mut Ctx<'_>,
    field: Option<&Field<'_, '_>>,
    streams: &Streams,
    defaults: &Defaults,
) -> BTreeMap<String, SagaConfig> {
    let mut sagas = BTreeMap::new();
    let Ok(section) = Section::optional("sagas", field, &[], ctx) else {
        return sagas;
    };
    for (name, field) in section.entries() {
        if !name::is_function_name(name) {
            ctx.error(
                field.path.clone(),
                field.key_span.as_ref(),
                "is not a valid saga name: use only letters, digits, - and _",
            );
            continue;
        }
        if let Ok(saga) = saga(ctx, name, &field, streams, defaults) {
            sagas.insert(name.to_owned(), saga);
        }
    }
    sagas
}

/// An event type as written: a subject without wildcards, and where it is.
struct Type {
    path: String,
    subject: Spanned<String>,
}

/// One step as read, its types kept with their places.
struct Step {
    name: Spanned<String>,
    command: Type,
    success: Vec<Type>,
    failure: Vec<Type>,
    compensate: Option<Type>,
    compensated: Option<Type>,
    timeout: Duration,
    delay: Option<Duration>,
}

fn saga(
    ctx: &mut Ctx<'_>,
    name: &str,
    field: &Field<'_, '_>,
    streams: &Streams,
    defaults: &Defaults,
) -> Read<SagaConfig> {
    let section = Section::of(field, SAGA_KEYS, ctx)?;
    let required = |ctx: &mut Ctx<'_>, key: &str, example: &str| {
        ctx.error(
            section.key_path(key),
            section.span(),
            format!("is required, like {key} = {example}"),
        )
    };
    let start = match section.field("start") {
        Some(field) => event_type(&field, ctx),
        None => Err(required(ctx, "start", "\"order.placed\"")),
    };
    let key = match section.field("key") {
        Some(field) => super::aggregates::pointer(&field, ctx),
        None => Err(required(ctx, "key", "\"order_id\"")),
    };
    let timeout = section.read(ctx, "timeout", Field::nonzero_duration);
    let retention = section.read(ctx, "retention", Field::nonzero_duration);
    let completed = match section.field("completed") {
        Some(field) => event_type(&field, ctx),
        None => Err(required(ctx, "completed", "\"order.fulfilled\"")),
    };
    let failed = match section.field("failed") {
        Some(field) => event_type(&field, ctx),
        None => Err(required(ctx, "failed", "\"order.cancelled\"")),
    };
    let retry = retry::function(ctx, &section, &defaults.retry);
    let steps = match section.field("steps") {
        Some(field) => steps(ctx, &field),
        None => Err(ctx.error(
            section.key_path("steps"),
            section.span(),
            format!(
                "is required: at least one step, like [[{}]] with name, command and success",
                section.key_path("steps")
            ),
        )),
    };
    section.finish(ctx);

    let mut roles: Vec<(&Type, String)> = Vec::new();
    for (t, role) in [
        (&start, "start"),
        (&completed, "completed"),
        (&failed, "failed"),
    ] {
        roles.extend(t.as_ref().ok().map(|t| (t, format!("the {role} type"))));
    }
    for step in steps.iter().flatten() {
        let of = |role: &str| format!("{role} of step {}", step.name.get_ref());
        roles.push((&step.command, of("the command")));
        roles.extend(step.success.iter().map(|t| (t, of("a success type"))));
        roles.extend(step.failure.iter().map(|t| (t, of("a failure type"))));
        roles.extend(
            step.compensate
                .iter()
                .map(|t| (t, of("the compensate type"))),
        );
        roles.extend(
            step.compensated
                .iter()
                .map(|t| (t, of("the compensated type"))),
        );
    }
    let captured = captured(ctx, &roles, streams);
    let one_role_each = one_role_each(ctx, &roles);

    let (steps, retry) = (steps?, retry.ok_or(Reported)?);
    captured?;
    one_role_each?;
    let into = |t: Type| t.subject.into_inner();
    let (Some(concurrency), Some(ack_wait), Some(max_ack_pending)) = (
        defaults.concurrency,
        defaults.ack_wait,
        defaults.max_ack_pending,
    ) else {
        return Err(Reported);
    };
    let start = into(start?);
    let mut inputs = vec![start.clone()];
    for step in &steps {
        let types = step
            .success
            .iter()
            .chain(&step.failure)
            .chain(&step.compensated);
        inputs.extend(types.map(|t| t.subject.get_ref().clone()));
    }
    let mut by_stream: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for input in inputs {
        if let Some(stream) = streams.capturing(&input) {
            by_stream.entry(stream).or_default().push(input);
        }
    }
    let consumer = name::saga_consumer(name);
    let consumers = by_stream
        .into_iter()
        .map(|(stream, subjects)| StreamBinding {
            consumer: consumer.clone(),
            subjects,
            stream: stream.to_owned(),
            managed: true,
            dead_letter: streams.dead_letters.subject(&consumer),
            ack_wait,
            max_ack_pending,
        })
        .collect();
    Ok(SagaConfig {
        name: name.to_owned(),
        start,
        key: key?,
        timeout: timeout?,
        completed: into(completed?),
        failed: into(failed?),
        retry,
        steps: steps
            .into_iter()
            .map(|step| SagaStep {
                name: step.name.into_inner(),
                command: into(step.command),
                success: step.success.into_iter().map(into).collect(),
                failure: step.failure.into_iter().map(into).collect(),
                compensate: step.compensate.map(into),
                compensated: step.compensated.map(into),
                timeout: step.timeout,
                delay: step.delay,
            })
            .collect(),
        consumers,
        concurrency,
        retention: retention?.unwrap_or(RETENTION),
    })
}

/// `[[sagas.NAME.steps]]`: at least one, each at `steps[i]`, names unique.
fn steps(ctx: &mut Ctx<'_>, field: &Field<'_, '_>) -> Read<Vec<Step>> {
    let expected = format!("a non-empty list of steps, like [[{}]] tables", field.path);
    let elements = match field.elements() {
        Some(elements) if !elements.is_empty() => elements,
        _ => return Err(field.wrong(ctx, &expected)),
    };
    let mut out = Vec::with_capacity(elements.len());
    let mut names = BTreeSet::new();
    let mut failed = false;
    for (i, element) in elements.into_iter().enumerate() {
        let element = Field {
            path: format!("{}[{i}]", field.path),
            ..element
        };
        let (name, step) = step(ctx, &element);
        if let Some((path, name)) = name {
            if !names.insert(name.get_ref().clone()) {
                ctx.error(
                    path,
                    Some(&name.span()),
                    format!(
                        "{:?} names another step already; step names must be unique in a saga",
                        name.get_ref()
                    ),
                );
                failed = true;
            }
        }
        match step {
            Ok(step) => out.push(step),
            Err(Reported) => failed = true,
        }
    }
    if failed {
        Err(Reported)
    } else {
        Ok(out)
    }
}

/// One step, and its name (with its path) when that could be read, so that
/// names are checked even when the rest of the step is wrong.
fn step(
    ctx: &mut Ctx<'_>,
    field: &Field<'_, '_>,
) -> (Option<(String, Spanned<String>)>, Read<Step>) {
    let section = match Section::of(field, STEP_KEYS, ctx) {
        Ok(section) => section,
        Err(reported) => return (None, Err(reported)),
    };
    let required = |ctx: &mut Ctx<'_>, key: &str, example: &str| {
        ctx.error(
            section.key_path(key),
            section.span(),
            format!("is required, like {key} = {example}"),
        )
    };
    let name = match section.field("name") {
        Some(field) => step_name(&field, ctx),
        None => Err(required(ctx, "name", "\"reserve\"")),
    };
    let command = match section.field("command") {
        Some(field) => event_type(&field, ctx),
        None => Err(required(ctx, "command", "\"inventory.reserve\"")),
    };
    let success = match section.field("success") {
        Some(field) => event_types(&field, ctx),
        None => Err(required(ctx, "success", "\"inventory.reserved\"")),
    };
    let failure = section.read(ctx, "failure", event_types);
    let compensate = section.read(ctx, "compensate", event_type);
    let compensated = section.read(ctx, "compensated", event_type);
    let timeout = section.read(ctx, "timeout", Field::nonzero_duration);
    let delay = section.read(ctx, "delay", Field::nonzero_duration);
    section.finish(ctx);
    let undo = match (&compensate, section.field("compensated")) {
        (Ok(None), Some(field)) => Err(field.error(
            ctx,
            "has no meaning without compensate: set the event type that undoes the step",
        )),
        _ => Ok(()),
    };
    let named = name
        .as_ref()
        .ok()
        .map(|name| (section.key_path("name"), name.clone()));
    let step = match (
        undo,
        name,
        command,
        success,
        failure,
        compensate,
        compensated,
        timeout,
        delay,
    ) {
        (
            Ok(()),
            Ok(name),
            Ok(command),
            Ok(success),
            Ok(failure),
            Ok(compensate),
            Ok(compensated),
            Ok(timeout),
            Ok(delay),
        ) => Ok(Step {
            name,
            command,
            success,
            failure: failure.unwrap_or_default(),
            compensate,
            compensated,
            timeout: timeout.unwrap_or(STEP_TIMEOUT),
            delay,
        }),
        _ => Err(Reported),
    };
    (named, step)
}

/// `name = "reserve"`: letters, digits, - and _.
fn step_name(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<Spanned<String>> {
    let name = field.non_empty_string(ctx)?;
    if !name::is_function_name(&name) {
        return Err(field.error(
            ctx,
            format!("{name:?} is not a valid step name: use only letters, digits, - and _"),
        ));
    }
    Ok(Spanned::new(field.span(), name))
}

/// One event type: a subject without wildcards.
fn event_type(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<Type> {
    let text = field.non_empty_string(ctx)?;
    checked(ctx, &field.path, Spanned::new(field.span(), text))
}

/// One event type, or a non-empty list of them.
fn event_types(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<Vec<Type>> {
    if field.value.get_ref().as_str().is_some() {
        return Ok(vec![event_type(field, ctx)?]);
    }
    let subjects = field.strings(
        ctx,
        "an event type or a non-empty list of them, like [\"inventory.reserved\"]",
    )?;
    let types: Vec<Read<Type>> = subjects
        .into_iter()
        .map(|subject| checked(ctx, &field.path, subject))
        .collect();
    types.into_iter().collect()
}

fn checked(ctx: &mut Ctx<'_>, path: &str, subject: Spanned<String>) -> Read<Type> {
    if let Err(why) = subject::check(subject.get_ref(), false) {
        return Err(ctx.error(
            path,
            Some(&subject.span()),
            format!(
                "{:?} is not a valid event type: {why} (event types are subjects)",
                subject.get_ref()
            ),
        ));
    }
    Ok(Type {
        path: path.to_owned(),
        subject,
    })
}

/// Every type a declared stream captures: the saga publishes and receives
/// its events through streams.
fn captured(ctx: &mut Ctx<'_>, roles: &[(&Type, String)], streams: &Streams) -> Read<()> {
    let mut result = Ok(());
    for (t, _) in roles {
        if streams.capturing(t.subject.get_ref()).is_some() {
            continue;
        }
        result = Err(Reported);
        if streams.complete {
            ctx.error(
                t.path.clone(),
                Some(&t.subject.span()),
                format!(
                    "{:?} is not captured by any [streams.*] entry; add it to a stream's \
                     subjects (a saga's events travel through streams)",
                    t.subject.get_ref()
                ),
            );
        }
    }
    result
}

/// No type in two roles: each is reported where it is written again.
fn one_role_each(ctx: &mut Ctx<'_>, roles: &[(&Type, String)]) -> Read<()> {
    let mut result = Ok(());
    for (i, (t, _)) in roles.iter().enumerate() {
        let earlier = roles[..i]
            .iter()
            .find(|(e, _)| e.subject.get_ref() == t.subject.get_ref());
        if let Some((_, role)) = earlier {
            result = Err(ctx.error(
                t.path.clone(),
                Some(&t.subject.span()),
                format!(
                    "{:?} is already {role}; an event type plays one role in a saga, since \
                     participants and the saga tell events apart by type alone",
                    t.subject.get_ref()
                ),
            ));
        }
    }
    result
}
