//! `[defaults]` and `[functions.NAME]`: each function's own keys read over
//! what it inherits, into a [`Draft`] that [`super::bind`] then binds to a
//! stream (a scheduled function's: the schedules stream, on its tick subject).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::bind::Binding;
use super::clashes;
use super::flow::{self, Flow, FLOW_KEYS};
use super::handler::{self, HANDLER_KEYS};
use super::retry;
use super::section::{Ctx, Field, Read, Reported, Section};
use crate::model::{
    AggregateConfig, FunctionConfig, Handler, ProjectionConfig, Role, ScheduleConfig,
    StreamBinding, Trigger,
};
use crate::retry::RetryPolicy;
use crate::schedule::{self, Schedule, SCHEDULE_FORMS};
use crate::{name, subject};

pub(super) const DEFAULTS_KEYS: &[&str] = &[
    "concurrency",
    "timeout",
    "retry",
    "ack_wait",
    "max_ack_pending",
];
pub(super) const FUNCTION_KEYS: &[&str] = &[
    HANDLER_KEYS[0],
    HANDLER_KEYS[1],
    HANDLER_KEYS[2],
    "subjects",
    "request",
    "aggregate",
    "projection",
    "stream",
    "concurrency",
    "timeout",
    "retry",
    "ack_wait",
    "max_ack_pending",
    "dead_letter",
    "emits",
    "json",
    "schedule",
    "time_zone",
    FLOW_KEYS[0],
    FLOW_KEYS[1],
    FLOW_KEYS[2],
    FLOW_KEYS[3],
    FLOW_KEYS[4],
    FLOW_KEYS[5],
];
pub(super) const PROJECTION_KEYS: &[&str] = &["bucket", "key"];

const CONCURRENCY: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(30);
const ACK_WAIT: Duration = Duration::from_secs(30);
const MAX_ACK_PENDING: i64 = 10_000;

/// What every function inherits: `[defaults]` over the built-in defaults;
/// `None` where `[defaults]` holds a value that could not be read.
pub(super) struct Defaults {
    pub(super) concurrency: Option<usize>,
    timeout: Option<Duration>,
    pub(super) ack_wait: Option<Duration>,
    pub(super) max_ack_pending: Option<i64>,
    pub(super) retry: retry::Inherited,
}

/// The keys `[defaults]` and a function share, as one table sets them.
struct Limits {
    concurrency: Read<Option<usize>>,
    timeout: Read<Option<Duration>>,
    ack_wait: Read<Option<Duration>>,
    max_ack_pending: Read<Option<i64>>,
}

impl Limits {
    fn read(ctx: &mut Ctx<'_>, section: &Section<'_, '_>) -> Limits {
        Limits {
            concurrency: section.read(ctx, "concurrency", Field::count),
            timeout: section.read(ctx, "timeout", Field::nonzero_duration),
            ack_wait: section.read(ctx, "ack_wait", Field::nonzero_duration),
            max_ack_pending: section.read(ctx, "max_ack_pending", Field::positive),
        }
    }
}

/// The value a table sets, else the inherited one; `None` if either is
/// unreadable.
fn over<T>(own: Read<Option<T>>, inherited: Option<T>) -> Option<T> {
    own.ok()?.or(inherited)
}

/// `[defaults]`, absent or not.
pub(super) fn defaults(ctx: &mut Ctx<'_>, field: Option<&Field<'_, '_>>) -> Defaults {
    let Ok(section) = Section::optional("defaults", field, DEFAULTS_KEYS, ctx) else {
        return Defaults {
            concurrency: None,
            timeout: None,
            ack_wait: None,
            max_ack_pending: None,
            retry: retry::Inherited::unknown(),
        };
    };
    let own = Limits::read(ctx, &section);
    let retry = retry::defaults(ctx, &section);
    section.finish_pointing(
        ctx,
        FLOW_KEYS,
        "is not a [defaults] key: key, on_dead_letter, missing_key, partitions, batch and rate \
         are set in each function's own table",
    );
    let defaults = Defaults {
        concurrency: over(own.concurrency, Some(CONCURRENCY)),
        timeout: over(own.timeout, Some(TIMEOUT)),
        ack_wait: over(own.ack_wait, Some(ACK_WAIT)),
        max_ack_pending: over(own.max_ack_pending, Some(MAX_ACK_PENDING)),
        retry,
    };
    // An error here is reported; functions inheriting both are not reported again.
    let _ = ack_window(
        ctx,
        &section,
        defaults.concurrency,
        defaults.max_ack_pending,
    );
    defaults
}

/// `max_ack_pending` must leave room for `concurrency` events in flight (the
/// rest of the window holds events waiting out a delayed NAK). Reported on
/// the key `section` sets, if it sets either.
fn ack_window(
    ctx: &mut Ctx<'_>,
    section: &Section<'_, '_>,
    concurrency: Option<usize>,
    max_ack_pending: Option<i64>,
) -> Read<()> {
    let (Some(concurrency), Some(max_ack_pending)) = (concurrency, max_ack_pending) else {
        return Err(Reported);
    };
    if i128::from(max_ack_pending) >= concurrency as i128 {
        return Ok(());
    }
    if let Some(field) = section.field("max_ack_pending") {
        Err(field.error(
            ctx,
            format!("must be at least concurrency ({concurrency}), got {max_ack_pending}"),
        ))
    } else if let Some(field) = section.field("concurrency") {
        Err(field.error(
            ctx,
            format!("must not be more than max_ack_pending ({max_ack_pending}), got {concurrency}"),
        ))
    } else {
        Err(Reported)
    }
}

/// A function's role as read: an aggregate by name, until `[aggregates]` is read.
enum RoleDraft {
    Plain,
    Aggregate(String),
    Projection(ProjectionConfig),
}

/// One function as read, before it is bound to a stream.
pub(super) struct Draft {
    pub(super) name: String,
    /// `functions.NAME`.
    pub(super) path: String,
    /// Where the function's table starts (its `[functions.NAME]` header).
    pub(super) span: Option<Range<usize>>,
    /// Valid subject filters, none overlapping another (none for a request
    /// function).
    pub(super) subjects: Read<Vec<Spanned<String>>>,
    /// `request = "subject"`: a request function, bound to no stream.
    pub(super) request: Option<String>,
    /// `aggregate = "NAME"`, checked against `[aggregates]` once read.
    pub(super) aggregate: Option<Spanned<String>>,
    /// `stream = "NAME"`, a valid stream name.
    pub(super) stream: Read<Option<Spanned<String>>>,
    /// `dead_letter = "subject"`, a valid subject without wildcards.
    pub(super) dead_letter: Read<Option<Spanned<String>>>,
    /// `schedule = "..."` (with `time_zone`), valid: a scheduled function,
    /// whose subjects are its tick subject, on the schedules stream.
    pub(super) schedule: Read<Option<ScheduleConfig>>,
    settings: Option<Settings>,
}

/// A function's keys that need no binding.
struct Settings {
    handler: Handler,
    role: RoleDraft,
    emits: Option<Vec<String>>,
    concurrency: usize,
    timeout: Duration,
    retry: RetryPolicy,
    json: bool,
    ack_wait: Duration,
    max_ack_pending: i64,
    flow: Flow,
}

impl Draft {
    /// The function's config, once bound; `None` if anything it needs could
    /// not be read (an aggregate it names, say).
    /// `binding` is `None` for a request function.
    pub(super) fn finish(
        self,
        binding: Option<Binding>,
        aggregates: &BTreeMap<String, AggregateConfig>,
    ) -> Option<FunctionConfig> {
        let settings = self.settings?;
        let role = match settings.role {
            RoleDraft::Plain => Role::Plain,
            RoleDraft::Aggregate(name) => Role::Aggregate(aggregates.get(&name)?.clone()),
            RoleDraft::Projection(projection) => Role::Projection(projection),
        };
        let trigger = match (self.request, binding) {
            (Some(subject), _) => Trigger::Request { subject },
            (None, Some(binding)) => Trigger::Stream(StreamBinding {
                consumer: self.name.clone(),
                subjects: self
                    .subjects
                    .ok()?
                    .into_iter()
                    .map(Spanned::into_inner)
                    .collect(),
                stream: binding.stream,
                managed: binding.managed,
                dead_letter: binding.dead_letter,
                ack_wait: settings.ack_wait,
                max_ack_pending: settings.max_ack_pending,
            }),
            (None, None) => return None,
        };
        Some(FunctionConfig {
            name: self.name,
            trigger,
            role,
            handler: settings.handler,
            concurrency: settings.concurrency,
            timeout: settings.timeout,
            retry: settings.retry,
            emits: settings.emits,
            json: settings.json,
            key: settings.flow.key,
            batch: settings.flow.batch,
            rate: settings.flow.rate,
            schedule: self.schedule.ok()?,
        })
    }
}

/// `[functions]`: at least one function, each with a valid name.
pub(super) fn read_all(
    ctx: &mut Ctx<'_>,
    field: Option<&Field<'_, '_>>,
    defaults: &Defaults,
    base_dir: &Path,
    builtins: &[&str],
) -> Vec<Draft> {
    const NONE: &str =
        "must declare at least one function, like [functions.hello] with subjects and a handler";
    let Some(field) = field else {
        ctx.error("functions", None, NONE);
        return Vec::new();
    };
    let Ok(section) = Section::of(field, &[], ctx) else {
        return Vec::new();
    };
    let entries = section.entries();
    if entries.is_empty() {
        ctx.error("functions", section.span(), NONE);
    }
    let mut drafts = Vec::with_capacity(entries.len());
    for (name, field) in entries {
        let named = if name::is_function_name(name) {
            Ok(())
        } else {
            Err(ctx.error(
                field.path.clone(),
                field.key_span.as_ref(),
                "is not a valid function name: it is also the durable consumer's name, \
                 so use only letters, digits, - and _",
            ))
        };
        let draft = function(ctx, name, &field, defaults, base_dir, builtins);
        if let (Ok(()), Ok(draft)) = (named, draft) {
            drafts.push(draft);
        }
    }
    drafts
}

/// One `[functions.NAME]` table.
fn function(
    ctx: &mut Ctx<'_>,
    name: &str,
    field: &Field<'_, '_>,
    defaults: &Defaults,
    base_dir: &Path,
    builtins: &[&str],
) -> Read<Draft> {
    let section = Section::of(field, FUNCTION_KEYS, ctx)?;
    let handler = handler::read(ctx, &section, base_dir, builtins);
    let schedule = schedule(ctx, &section);
    let scheduled = section.field("schedule");
    for key in ["subjects", "stream", "request"] {
        if let (Some(_), Some(field)) = (&scheduled, section.field(key)) {
            field.error(
                ctx,
                format!(
                    "has no meaning for a scheduled function (schedule = ...): its events are \
                     its ticks, on {} in the schedules stream; drop {key}",
                    name::schedule_tick_subject(name)
                ),
            );
        }
    }
    let request = match scheduled {
        Some(_) => Ok(None),
        None => section.read(ctx, "request", request),
    };
    let subjects = match (section.field("subjects"), &request) {
        // A scheduled function's one subject is its tick subject.
        (None, Ok(None)) if scheduled.is_some() => Ok(vec![Spanned::new(
            scheduled.as_ref().map(Field::span).unwrap_or_default(),
            name::schedule_tick_subject(name),
        )]),
        (Some(_), _) if scheduled.is_some() => Err(Reported),
        (Some(field), Ok(None)) => subjects(ctx, &field),
        (Some(field), Ok(Some(_))) => Err(field.error(
            ctx,
            "a function has either subjects (it consumes a stream) or request \
             (it answers requests), not both",
        )),
        (Some(_), Err(Reported)) => Err(Reported),
        (None, Ok(Some(_))) => Ok(Vec::new()),
        (None, _) => Err(ctx.error(
            section.key_path("subjects"),
            section.span(),
            "is required: the subjects the function runs for, like [\"order.placed\"] \
             (or request = \"subject\" for a function answering requests, or \
             schedule = \"...\" for one running on a schedule)",
        )),
    };
    let aggregate = section.read(ctx, "aggregate", |f, ctx| {
        Ok(Spanned::new(f.span(), f.non_empty_string(ctx)?))
    });
    let projection = section.read(ctx, "projection", projection);
    let role = match (aggregate.clone(), projection) {
        (Ok(Some(_)), Ok(Some(_))) => Err(ctx.error(
            section.key_path("projection"),
            section.span(),
            "a function is either an aggregate's command handler or a projection, not both",
        )),
        (Ok(Some(name)), Ok(None)) => Ok(RoleDraft::Aggregate(name.into_inner())),
        (Ok(None), Ok(Some(projection))) => Ok(RoleDraft::Projection(projection)),
        (Ok(None), Ok(None)) => Ok(RoleDraft::Plain),
        _ => Err(Reported),
    };
    let is_request = matches!(request, Ok(Some(_)));
    for key in ["stream", "dead_letter", "emits"].iter().chain(FLOW_KEYS) {
        if let (true, Some(field)) = (is_request, section.field(key)) {
            field.error(
                ctx,
                format!("has no meaning for a request function (request = ...): {key} is for stream functions"),
            );
        }
    }
    let stream = match (&scheduled, section.field("stream")) {
        (Some(_), Some(_)) => Err(Reported),
        _ => section.read(ctx, "stream", stream),
    };
    let dead_letter = section.read(ctx, "dead_letter", dead_letter);
    let json = section.read(ctx, "json", Field::boolean);
    let emits = section.read(ctx, "emits", emits);
    let own = Limits::read(ctx, &section);
    let retry = retry::function(ctx, &section, &defaults.retry);
    let flow = flow::read(ctx, &section, &subjects, is_request);
    let flow = flow.and_then(|flow| batch_alone(ctx, &section, flow));
    section.finish(ctx);

    // A projection on a stream applies each key's events in stream order
    // (one older than the last applied is skipped), so unless its own table
    // says otherwise it takes one event at a time, whatever [defaults] say.
    let one_at_a_time = matches!(&role, Ok(RoleDraft::Projection(_))) && !is_request;
    let (concurrency, max_ack_pending) = if one_at_a_time {
        let concurrency = over(own.concurrency, Some(1));
        let window = concurrency.and_then(|c| i64::try_from(c).ok());
        (concurrency, over(own.max_ack_pending, window))
    } else {
        (
            over(own.concurrency, defaults.concurrency),
            over(own.max_ack_pending, defaults.max_ack_pending),
        )
    };
    let window = ack_window(ctx, &section, concurrency, max_ack_pending);
    let flow = flow.and_then(|flow| batch_window(ctx, &section, flow, max_ack_pending));
    let settings = match (
        window,
        role,
        handler,
        emits,
        concurrency,
        over(own.timeout, defaults.timeout),
        retry,
        json,
        over(own.ack_wait, defaults.ack_wait),
        max_ack_pending,
        flow,
    ) {
        (
            Ok(()),
            Ok(role),
            Ok(handler),
            Ok(emits),
            Some(concurrency),
            Some(timeout),
            Some(retry),
            Ok(json),
            Some(ack_wait),
            Some(max_ack_pending),
            Ok(flow),
        ) => Some(Settings {
            handler,
            role,
            emits: emits.map(|list| list.into_iter().map(Spanned::into_inner).collect()),
            concurrency,
            timeout,
            retry,
            json: json.unwrap_or(false),
            ack_wait,
            max_ack_pending,
            flow,
        }),
        _ => None,
    };
    let settings = settings.filter(|settings| {
        handler::http_timeout_within(ctx, &section, &settings.handler, settings.timeout).is_ok()
    });
    Ok(Draft {
        name: name.to_owned(),
        path: section.path().to_owned(),
        span: section.span().cloned(),
        subjects,
        request: request.ok().flatten(),
        aggregate: aggregate.ok().flatten(),
        stream,
        dead_letter,
        schedule,
        settings,
    })
}

/// `schedule = "..."` and `time_zone = "..."`, checked as nats-server reads
/// them.
fn schedule(ctx: &mut Ctx<'_>, section: &Section<'_, '_>) -> Read<Option<ScheduleConfig>> {
    let time_zone = section.read(ctx, "time_zone", |field, ctx| {
        let name = field.string(ctx)?;
        match schedule::time_zone_named(&name) {
            Ok(_) => Ok(name),
            Err(why) => Err(field.error(ctx, why)),
        }
    });
    let Some(field) = section.field("schedule") else {
        if let Some(field) = section.field("time_zone") {
            field.error(
                ctx,
                "has no meaning without schedule: it is the time zone a schedule's cron is read in",
            );
        }
        return time_zone.and(Ok(None));
    };
    let expected = format!("a string: {SCHEDULE_FORMS}");
    let expression = field.string_or(ctx, &expected)?;
    let time_zone = time_zone?;
    match Schedule::parse(&expression, time_zone.as_deref()) {
        Ok(_) => Ok(Some(ScheduleConfig {
            expression,
            time_zone,
        })),
        Err(why) => match (why.strip_prefix("time zone "), section.field("time_zone")) {
            (Some(why), Some(time_zone)) => Err(time_zone.error(ctx, why)),
            _ => Err(field.error(ctx, why)),
        },
    }
}

/// A batch goes to a plain function: an aggregate's command handler and a
/// projection take one event at a time.
fn batch_alone(ctx: &mut Ctx<'_>, section: &Section<'_, '_>, flow: Flow) -> Read<Flow> {
    let Some(field) = section.field("batch").filter(|_| flow.batch.is_some()) else {
        return Ok(flow);
    };
    let parks = flow
        .key
        .as_ref()
        .is_some_and(|key| key.on_dead_letter == crate::OnDeadLetter::Park);
    if parks {
        return Err(field.error(
            ctx,
            "cannot go with on_dead_letter = \"park\" yet: a batch's items are not checked \
             against the parked keys; use one or the other",
        ));
    }
    let role = if section.field("aggregate").is_some() {
        "an aggregate's command handler (aggregate = ...), which handles one command at a time"
    } else if section.field("projection").is_some() {
        "a projection (projection = ...), which applies one event at a time"
    } else {
        return Ok(flow);
    };
    Err(field.error(ctx, format!("has no meaning for {role}")))
}

/// A batch is filled from the events delivered and not yet acked, so
/// `max_ack_pending` below `batch.size` would never let one fill. Reported
/// on `max_ack_pending` when the function sets it, else on `batch.size`.
fn batch_window(
    ctx: &mut Ctx<'_>,
    section: &Section<'_, '_>,
    flow: Flow,
    max_ack_pending: Option<i64>,
) -> Read<Flow> {
    let (Some(batch), Some(max_ack_pending)) = (&flow.batch, max_ack_pending) else {
        return Ok(flow);
    };
    if i128::from(max_ack_pending) >= batch.size as i128 {
        return Ok(flow);
    }
    let size = batch.size;
    if let Some(field) = section.field("max_ack_pending") {
        return Err(field.error(
            ctx,
            format!("must be at least batch.size ({size}), got {max_ack_pending}"),
        ));
    }
    let batch = section.field("batch").expect("a batch was read");
    let field = Section::of(&batch, flow::BATCH_KEYS, ctx)?
        .field("size")
        .expect("a batch size was read");
    Err(field.error(
        ctx,
        format!(
            "must not be more than max_ack_pending ({max_ack_pending}, from [defaults]), \
             got {size}: a batch is filled from the events delivered and not yet acked"
        ),
    ))
}

/// `request = "cmd.order.place"`: a subject (wildcards allowed).
fn request(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<String> {
    let subject = field.non_empty_string(ctx)?;
    if let Err(why) = subject::check(&subject, true) {
        return Err(field.error(ctx, format!("{subject:?} is not a valid subject: {why}")));
    }
    Ok(subject)
}

/// `projection = { bucket = "orders_by_user", key = "/user_id" }`.
fn projection(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<ProjectionConfig> {
    let section = Section::of(field, PROJECTION_KEYS, ctx)?;
    let bucket = match section.field("bucket") {
        Some(field) => {
            let name = field.non_empty_string(ctx)?;
            if name::is_function_name(&name) {
                Ok(name)
            } else {
                Err(field.error(
                    ctx,
                    format!(
                        "{name:?} is not a valid KV bucket name: use only letters, digits, - and _"
                    ),
                ))
            }
        }
        None => Err(ctx.error(
            section.key_path("bucket"),
            section.span(),
            "is required: the KV bucket of the read model, like bucket = \"orders_by_user\"",
        )),
    };
    let key = match section.field("key") {
        Some(field) => super::aggregates::pointer(&field, ctx),
        None => Err(ctx.error(
            section.key_path("key"),
            section.span(),
            "is required: where the event's data names the key, like key = \"/user_id\"",
        )),
    };
    section.finish(ctx);
    Ok(ProjectionConfig {
        bucket: bucket?,
        key: key?,
    })
}

/// A non-empty list of valid subject filters, none overlapping another (a
/// consumer's filters must not).
fn subjects(ctx: &mut Ctx<'_>, field: &Field<'_, '_>) -> Read<Vec<Spanned<String>>> {
    let subjects = field.strings(ctx, "a non-empty list of subjects, like [\"order.placed\"]")?;
    let mut failed = false;
    for (i, s) in subjects.iter().enumerate() {
        let error = match subject::check(s.get_ref(), true) {
            Err(why) => Some(format!("{:?} is not a valid subject: {why}", s.get_ref())),
            Ok(()) if clashes::kept_for_schedules(s.get_ref(), true).is_some() => {
                clashes::kept_for_schedules(s.get_ref(), true).map(|(taken, what)| {
                    format!(
                        "{:?} overlaps {taken}, which jetrun keeps for {what}; to run a \
                         function on a schedule, set schedule = \"...\" instead of subjects",
                        s.get_ref()
                    )
                })
            }
            Ok(()) => subjects[..i]
                .iter()
                .find(|earlier| subject::overlaps(earlier.get_ref(), s.get_ref()))
                .map(|earlier| {
                    format!(
                        "{:?} overlaps {:?}; a consumer's subject filters must not overlap",
                        s.get_ref(),
                        earlier.get_ref()
                    )
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

/// `emits = ["inventory.>"]`: valid subjects, wildcards allowed.
fn emits(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<Vec<Spanned<String>>> {
    let subjects = field.strings(ctx, "a non-empty list of subjects, like [\"inventory.>\"]")?;
    let mut failed = false;
    for s in &subjects {
        let error = match subject::check(s.get_ref(), true) {
            Err(why) => Some(format!("{:?} is not a valid subject: {why}", s.get_ref())),
            Ok(()) => clashes::kept_for_schedules(s.get_ref(), true).map(|(taken, what)| {
                format!(
                    "{:?} overlaps {taken}, which jetrun keeps for {what}; a function emits \
                     no events there",
                    s.get_ref()
                )
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

/// `stream = "NAME"`.
fn stream(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<Spanned<String>> {
    let name = field.string(ctx)?;
    if !name::is_stream_name(&name) {
        return Err(field.error(
            ctx,
            format!(
                "{name:?} is not a valid stream name: {}",
                name::STREAM_NAME_RULE
            ),
        ));
    }
    Ok(Spanned::new(field.span(), name))
}

/// `dead_letter = "subject"`, a subject a message can be published to.
fn dead_letter(field: &Field<'_, '_>, ctx: &mut Ctx<'_>) -> Read<Spanned<String>> {
    let subject = field.string(ctx)?;
    if let Err(why) = subject::check(&subject, false) {
        return Err(field.error(ctx, format!("{subject:?} is not a valid subject: {why}")));
    }
    Ok(Spanned::new(field.span(), subject))
}
