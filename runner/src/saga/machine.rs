//! The saga state machine: how one instance of a `[sagas.NAME]` moves from
//! its start event, step by step, to `completed`, or through its undos to
//! `failed` (or `stuck`). Pure: the time is passed in and what to publish is
//! handed back; the runtime stores the instance (compare-and-set in a KV
//! bucket) and publishes.
//!
//! The rules:
//! - The start event publishes step 1's command. A success reply for the
//!   awaited step keeps its data under the step's name and publishes the next
//!   command, or `completed` after the last step.
//! - A step with a `delay` has its command published that much later (its
//!   [`Publish::due_ms`]; the runtime holds it until then): its timeout
//!   counts from that time, and the saga's deadline moves later by the
//!   delay, so no wait counts against the saga's `timeout`. Undos are never
//!   delayed.
//! - A failure reply, a step's timeout or the saga's timeout undoes, in
//!   reverse order, every step that completed, plus the step in flight when
//!   it timed out (its work may be done with the reply lost, so undos must be
//!   idempotent); never a step that answered failure. Then `failed`.
//! - An undo without `compensated` is published once; one with it is awaited,
//!   published again when its wait ends (the step's timeout plus the retry
//!   policy's delay), and an undo still unconfirmed after `max_attempts`
//!   leaves the instance `stuck`, kept for an operator; its confirmation, if
//!   it ever comes, resumes the undos.
//! - A reply that is not the awaited one changes nothing, and says why.

use std::collections::BTreeMap;
use std::time::Duration;

use jetrun_config::{SagaConfig, SagaStep};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Milliseconds since the UNIX epoch: how the machine is told the time and
/// how an instance keeps it.
pub(crate) type Millis = u64;

/// One saga instance: what is stored, as JSON, at its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Instance {
    pub(crate) saga: String,
    /// What the start event's data names the instance by.
    pub(crate) key: String,
    pub(crate) state: State,
    /// The step the instance is at (an index into the saga's steps): the one
    /// awaited while running, the one being undone while compensating or
    /// stuck; the last one worked on once finished.
    pub(crate) step: usize,
    /// The start event's data, plus each completed step's reply data under
    /// the step's name; every event the saga publishes carries it.
    pub(crate) data: Map<String, Value>,
    /// The start event's correlation id, carried by every event published.
    pub(crate) correlation_id: String,
    pub(crate) started_ms: Millis,
    pub(crate) updated_ms: Millis,
    /// When the awaited reply (running) or undo confirmation (compensating)
    /// is given up on.
    pub(crate) step_deadline_ms: Option<Millis>,
    /// When the whole saga is given up on, while it runs.
    pub(crate) saga_deadline_ms: Option<Millis>,
    /// The steps that answered success, in order.
    pub(crate) completed: Vec<usize>,
    /// The undos, once the saga failed or timed out.
    pub(crate) compensation: Option<Compensation>,
    /// Everything that happened, in order; a published event's id is derived
    /// from its place here.
    pub(crate) transitions: Vec<Transition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    Running,
    Compensating,
    Completed,
    Failed,
    /// An undo was never confirmed: kept, waiting for an operator (or the
    /// confirmation).
    Stuck,
}

impl State {
    /// Its name: the `state` label of `jetrun_saga_instances`, as stored.
    pub(crate) fn label(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Compensating => "compensating",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Stuck => "stuck",
        }
    }
}

/// The undos of a saga that failed or timed out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Compensation {
    pub(crate) cause: Cause,
    /// The steps still to undo, the next (or the one awaiting confirmation)
    /// first.
    pub(crate) pending: Vec<usize>,
    /// The steps undone, in order.
    pub(crate) undone: Vec<usize>,
    /// How often the undo of `pending[0]` has been published.
    pub(crate) attempts: u32,
}

/// Why a saga is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Cause {
    /// The step answered failure.
    Failure { step: usize },
    /// The step did not answer in time.
    StepTimeout { step: usize },
    /// The saga ran out of time, with `step` in flight.
    SagaTimeout { step: usize },
}

/// One entry of an instance's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Transition {
    pub(crate) at_ms: Millis,
    pub(crate) kind: Kind,
    /// The step's name; `None` for the saga's own events and timeout.
    pub(crate) step: Option<String>,
    /// The type published or received; `None` for a timeout.
    pub(crate) event_type: Option<String>,
    /// The id of the event published or received; `None` for a timeout.
    pub(crate) event_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A step's command was published.
    Command,
    /// The awaited step answered (success or failure).
    Reply,
    /// A step, an undo's confirmation or the saga ran out of time.
    Timeout,
    /// An undo was published.
    Compensate,
    /// An undo was confirmed.
    Compensated,
    /// `completed` was published.
    Completed,
    /// `failed` was published.
    Failed,
}

impl Kind {
    /// Its name: the `outcome` label of `jetrun_saga_transitions_total`, as
    /// stored.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Reply => "reply",
            Kind::Timeout => "timeout",
            Kind::Compensate => "compensate",
            Kind::Compensated => "compensated",
            Kind::Completed => "completed",
            Kind::Failed => "failed",
        }
    }
}

/// An event the machine is fed, as it needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received<'a> {
    pub(crate) id: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) data: &'a Value,
    /// Its correlation id; a start event without one starts its own (its id).
    pub(crate) correlation_id: Option<&'a str>,
}

/// What happened.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Input<'a> {
    /// The saga's start event, with the key its data names (see [`key_of`]).
    Start { key: &'a str, event: Received<'a> },
    /// One of the saga's reply types, for the instance it concerns.
    Reply(Received<'a>),
    /// The clock: act on the deadlines that have passed.
    Tick,
}

/// An event to publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Publish {
    /// The event's type, also the subject it is published on.
    pub(crate) event_type: String,
    /// The instance's data.
    pub(crate) data: Value,
    /// `saga` (the saga's name) and `sagakey` (the instance's key).
    pub(crate) extensions: BTreeMap<String, String>,
    pub(crate) correlation_id: String,
    /// The event that led to it; `None` after a timeout.
    pub(crate) causation_id: Option<String>,
    /// A UUID v5 of the saga, the key and the transition's place in the
    /// timeline: handling the same input again after a crash publishes the
    /// same ids, which the stream's duplicate window drops.
    pub(crate) event_id: String,
    /// When it is to be stored on its subject, if not at once: a delayed
    /// step's command. Decided with the change and kept in the outbox, so a
    /// republish holds it for the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) due_ms: Option<Millis>,
}

/// What the machine decided.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Boxed: an instance is large and most inputs change it.
    Changed(Box<Change>),
    /// Nothing to store or publish.
    Unchanged(Why),
}

/// A new instance to store (compare-and-set), and what to publish.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub(crate) instance: Instance,
    /// In order.
    pub(crate) publish: Vec<Publish>,
    /// When to tick the instance next; `None`: never (it is finished or stuck).
    pub(crate) next_deadline_ms: Option<Millis>,
}

/// Why an input changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The step already answered, the undo was already confirmed, or the
    /// instance already exists.
    Duplicate,
    /// The instance moved on: the step timed out, the saga is being undone or
    /// is finished.
    Late,
    /// The instance never asked for it (a reply for a step not commanded yet,
    /// a confirmation of an undo not published or not awaited).
    Unexpected,
    /// There is no such instance, or the type is none of the saga's replies.
    Unknown,
    /// A tick before any deadline, or for an instance that has none.
    NotDue,
}

impl Why {
    /// The `reason` label of `jetrun_saga_replies_ignored_total`; `None` for
    /// a tick that was not due (not an input, not counted).
    pub(crate) fn label(self) -> Option<&'static str> {
        match self {
            Why::Duplicate => Some("duplicate"),
            Why::Late => Some("late"),
            Why::Unexpected => Some("unexpected"),
            Why::Unknown => Some("unknown"),
            Why::NotDue => None,
        }
    }
}

/// Why a start event names no instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("its data is not a JSON object; the saga's key is read from it at {pointer}")]
    NotAnObject { pointer: String },
    #[error("its data has no key at {pointer}; put the instance's key there")]
    Missing { pointer: String },
    #[error("its key at {pointer} must be a non-empty string or a number, got {got}")]
    NotAKey { pointer: String, got: String },
}

/// The key a start event's data names its instance by.
pub(crate) fn key_of(saga: &SagaConfig, data: &Value) -> Result<String, KeyError> {
    let pointer = || saga.key.clone();
    if !data.is_object() {
        return Err(KeyError::NotAnObject { pointer: pointer() });
    }
    match data.pointer(&saga.key) {
        None => Err(KeyError::Missing { pointer: pointer() }),
        Some(Value::String(key)) if !key.is_empty() => Ok(key.clone()),
        Some(Value::Number(key)) => Ok(key.to_string()),
        Some(other) => Err(KeyError::NotAKey {
            pointer: pointer(),
            got: other.to_string(),
        }),
    }
}

/// Feeds `input` to the instance `current` (`None`: there is none) at `now`.
pub(crate) fn advance(
    saga: &SagaConfig,
    current: Option<&Instance>,
    input: Input<'_>,
    now: Millis,
) -> Outcome {
    match (input, current) {
        (Input::Start { .. }, Some(_)) => Outcome::Unchanged(Why::Duplicate),
        (Input::Start { key, event }, None) => start(saga, key, event, now),
        (Input::Reply(_) | Input::Tick, None) => Outcome::Unchanged(Why::Unknown),
        (Input::Reply(event), Some(instance)) => reply(saga, instance, event, now),
        (Input::Tick, Some(instance)) => tick(saga, instance, now),
    }
}

impl Instance {
    /// When the instance is to be ticked next: the earlier of its deadlines
    /// while running, the awaited undo's while compensating, else never.
    pub(crate) fn next_deadline_ms(&self) -> Option<Millis> {
        match self.state {
            State::Running => match (self.step_deadline_ms, self.saga_deadline_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            State::Compensating => self.step_deadline_ms,
            State::Completed | State::Failed | State::Stuck => None,
        }
    }
}

/// What a reply type is to a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Success,
    Failure,
    Compensated,
}

/// The step and role of reply type `event_type`; each type plays one role in
/// a saga (the config checks it).
fn role_of(saga: &SagaConfig, event_type: &str) -> Option<(usize, Role)> {
    saga.steps.iter().enumerate().find_map(|(i, step)| {
        let is = |types: &[String]| types.iter().any(|t| t == event_type);
        if is(&step.success) {
            Some((i, Role::Success))
        } else if is(&step.failure) {
            Some((i, Role::Failure))
        } else if step.compensated.as_deref() == Some(event_type) {
            Some((i, Role::Compensated))
        } else {
            None
        }
    })
}

fn start(saga: &SagaConfig, key: &str, event: Received<'_>, now: Millis) -> Outcome {
    let instance = Instance {
        saga: saga.name.clone(),
        key: key.to_owned(),
        state: State::Running,
        step: 0,
        // `key_of` refuses data that is not an object.
        data: event.data.as_object().cloned().unwrap_or_default(),
        correlation_id: event.correlation_id.unwrap_or(event.id).to_owned(),
        started_ms: now,
        updated_ms: now,
        step_deadline_ms: None,
        saga_deadline_ms: saga.timeout.map(|timeout| after(now, timeout)),
        completed: Vec::new(),
        compensation: None,
        transitions: Vec::new(),
    };
    let mut run = Run::new(saga, instance, now, Some(event.id));
    run.command(0);
    run.finish()
}

fn reply(saga: &SagaConfig, instance: &Instance, event: Received<'_>, now: Millis) -> Outcome {
    let Some((step, role)) = role_of(saga, event.event_type) else {
        return Outcome::Unchanged(Why::Unknown);
    };
    let awaited_undo = instance
        .compensation
        .as_ref()
        .and_then(|c| c.pending.first().copied())
        .filter(|&u| saga.steps[u].compensated.is_some());
    let mut run = Run::new(saga, instance.clone(), now, Some(event.id));
    match (instance.state, role) {
        (State::Running, Role::Success) if step == instance.step => {
            run.record(
                Kind::Reply,
                Some(step),
                Some(event.event_type),
                Some(event.id),
            );
            let name = saga.steps[step].name.clone();
            run.instance.data.insert(name, event.data.clone());
            run.instance.completed.push(step);
            if step + 1 < saga.steps.len() {
                run.command(step + 1);
            } else {
                run.instance.state = State::Completed;
                run.instance.step_deadline_ms = None;
                run.publish(Kind::Completed, None, &saga.completed);
            }
        }
        (State::Running, Role::Failure) if step == instance.step => {
            run.record(
                Kind::Reply,
                Some(step),
                Some(event.event_type),
                Some(event.id),
            );
            let undo = instance.completed.iter().rev().copied().collect();
            run.compensate(Cause::Failure { step }, undo);
        }
        (State::Compensating | State::Stuck, Role::Compensated) if awaited_undo == Some(step) => {
            run.record(
                Kind::Compensated,
                Some(step),
                Some(event.event_type),
                Some(event.id),
            );
            let compensation = run.compensation();
            compensation.pending.remove(0);
            compensation.undone.push(step);
            run.instance.state = State::Compensating;
            run.undo_next();
        }
        _ => return Outcome::Unchanged(why(saga, instance, step, role)),
    }
    run.finish()
}

/// Why a reply for `step` in `role` changes nothing.
fn why(saga: &SagaConfig, instance: &Instance, step: usize, role: Role) -> Why {
    let undone = instance
        .compensation
        .as_ref()
        .is_some_and(|c| c.undone.contains(&step));
    let failed = instance
        .compensation
        .as_ref()
        .is_some_and(|c| c.cause == Cause::Failure { step });
    let commanded = instance.transitions.iter().any(|t| {
        t.kind == Kind::Command && t.step.as_deref() == Some(saga.steps[step].name.as_str())
    });
    match role {
        Role::Success | Role::Failure if instance.completed.contains(&step) => Why::Duplicate,
        Role::Failure if failed => Why::Duplicate,
        Role::Compensated if undone => Why::Duplicate,
        Role::Success | Role::Failure if commanded && instance.state != State::Running => Why::Late,
        _ => Why::Unexpected,
    }
}

fn tick(saga: &SagaConfig, instance: &Instance, now: Millis) -> Outcome {
    let due = |deadline: Option<Millis>| deadline.filter(|&d| d <= now);
    let mut run = Run::new(saga, instance.clone(), now, None);
    match instance.state {
        State::Running => {
            let step = instance.step;
            let cause = match (
                due(instance.step_deadline_ms),
                due(instance.saga_deadline_ms),
            ) {
                (None, None) => return Outcome::Unchanged(Why::NotDue),
                (Some(s), Some(g)) if s < g => Cause::StepTimeout { step },
                (Some(_), None) => Cause::StepTimeout { step },
                (_, Some(_)) => Cause::SagaTimeout { step },
            };
            let timed_out = match cause {
                Cause::StepTimeout { step } => Some(step),
                _ => None,
            };
            run.record(Kind::Timeout, timed_out, None, None);
            // The step in flight too: its work may be done, the reply lost.
            let undo = std::iter::once(step)
                .chain(instance.completed.iter().rev().copied())
                .collect();
            run.compensate(cause, undo);
        }
        State::Compensating => {
            if due(instance.step_deadline_ms).is_none() {
                return Outcome::Unchanged(Why::NotDue);
            }
            let compensation = run.compensation();
            let (step, attempts) = (compensation.pending[0], compensation.attempts);
            run.record(Kind::Timeout, Some(step), None, None);
            if saga.retry.is_last(u64::from(attempts)) {
                run.instance.state = State::Stuck;
                run.instance.step_deadline_ms = None;
            } else {
                run.publish_undo(step);
            }
        }
        State::Completed | State::Failed | State::Stuck => return Outcome::Unchanged(Why::NotDue),
    }
    run.finish()
}

/// One input being handled: the instance as it changes and what to publish.
struct Run<'s> {
    saga: &'s SagaConfig,
    instance: Instance,
    publish: Vec<Publish>,
    now: Millis,
    /// The id of the event handled; `None` for a tick.
    cause: Option<String>,
}

impl<'s> Run<'s> {
    fn new(saga: &'s SagaConfig, instance: Instance, now: Millis, cause: Option<&str>) -> Self {
        Run {
            saga,
            instance,
            publish: Vec::new(),
            now,
            cause: cause.map(str::to_owned),
        }
    }

    fn finish(mut self) -> Outcome {
        self.instance.updated_ms = self.now;
        Outcome::Changed(Box::new(Change {
            next_deadline_ms: self.instance.next_deadline_ms(),
            instance: self.instance,
            publish: self.publish,
        }))
    }

    fn step(&self, step: usize) -> &'s SagaStep {
        &self.saga.steps[step]
    }

    fn compensation(&mut self) -> &mut Compensation {
        self.instance
            .compensation
            .as_mut()
            .expect("compensating instances have a compensation")
    }

    fn record(
        &mut self,
        kind: Kind,
        step: Option<usize>,
        event_type: Option<&str>,
        event_id: Option<&str>,
    ) {
        let step = step.map(|step| self.step(step).name.clone());
        self.instance.transitions.push(Transition {
            at_ms: self.now,
            kind,
            step,
            event_type: event_type.map(str::to_owned),
            event_id: event_id.map(str::to_owned),
        });
    }

    /// Publishes `event_type` as the next transition, at once; returns its id.
    fn publish(&mut self, kind: Kind, step: Option<usize>, event_type: &str) -> Uuid {
        self.publish_at(kind, step, event_type, None)
    }

    /// Publishes `event_type` as the next transition, at `due_ms` when
    /// given, else at once; returns its id.
    fn publish_at(
        &mut self,
        kind: Kind,
        step: Option<usize>,
        event_type: &str,
        due_ms: Option<Millis>,
    ) -> Uuid {
        let id = event_id(
            &self.instance.saga,
            &self.instance.key,
            self.instance.transitions.len(),
        );
        let event_id = id.to_string();
        self.record(kind, step, Some(event_type), Some(&event_id));
        let extensions = [
            ("saga", &self.instance.saga),
            ("sagakey", &self.instance.key),
        ];
        self.publish.push(Publish {
            event_type: event_type.to_owned(),
            data: Value::Object(self.instance.data.clone()),
            extensions: extensions
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect(),
            correlation_id: self.instance.correlation_id.clone(),
            causation_id: self.cause.clone(),
            event_id,
            due_ms,
        });
        id
    }

    /// Asks for `step`: at once, or after its `delay`. A delayed command's
    /// reply is awaited for the step's timeout from the command's delivery,
    /// and the saga's deadline moves later by the delay.
    fn command(&mut self, step: usize) {
        let saga = self.saga;
        let (timeout, delay) = (saga.steps[step].timeout, saga.steps[step].delay);
        let due = delay.map(|delay| after(self.now, delay));
        self.instance.step = step;
        self.instance.step_deadline_ms = Some(after(due.unwrap_or(self.now), timeout));
        if let Some(delay) = delay {
            self.instance.saga_deadline_ms = self
                .instance
                .saga_deadline_ms
                .map(|deadline| after(deadline, delay));
        }
        self.publish_at(Kind::Command, Some(step), &saga.steps[step].command, due);
    }

    /// Starts undoing the steps of `undo` (in that order) that can be undone.
    fn compensate(&mut self, cause: Cause, undo: Vec<usize>) {
        let saga = self.saga;
        self.instance.state = State::Compensating;
        self.instance.step_deadline_ms = None;
        self.instance.compensation = Some(Compensation {
            cause,
            pending: undo
                .into_iter()
                .filter(|&step| saga.steps[step].compensate.is_some())
                .collect(),
            undone: Vec::new(),
            attempts: 0,
        });
        self.undo_next();
    }

    /// Publishes the pending undos up to the first one to await, or, when
    /// none is left, `failed`.
    fn undo_next(&mut self) {
        loop {
            let compensation = self.compensation();
            compensation.attempts = 0;
            let Some(&step) = compensation.pending.first() else {
                self.instance.state = State::Failed;
                self.instance.step_deadline_ms = None;
                let failed = self.saga.failed.clone();
                self.publish(Kind::Failed, None, &failed);
                return;
            };
            self.instance.step = step;
            self.publish_undo(step);
            if self.step(step).compensated.is_some() {
                return;
            }
            let compensation = self.compensation();
            compensation.pending.remove(0);
            compensation.undone.push(step);
        }
    }

    /// Publishes the undo of `step` (again); when it is awaited, sets the
    /// end of its wait: the step's timeout, plus the retry policy's delay
    /// when another attempt may follow.
    fn publish_undo(&mut self, step: usize) {
        let saga = self.saga;
        let compensate = saga.steps[step]
            .compensate
            .as_deref()
            .expect("only steps with compensate are undone");
        let id = self.publish(Kind::Compensate, Some(step), compensate);
        let compensation = self.compensation();
        compensation.attempts += 1;
        let attempts = u64::from(compensation.attempts);
        self.instance.step_deadline_ms = saga.steps[step].compensated.as_ref().map(|_| {
            let wait = after(self.now, saga.steps[step].timeout);
            if saga.retry.is_last(attempts) {
                wait
            } else {
                after(wait, saga.retry.delay(attempts, unit(&id)))
            }
        });
    }
}

/// The id of the event published as transition `index` of instance `key`.
fn event_id(saga: &str, key: &str, index: usize) -> Uuid {
    let name = format!("saga\u{0}{saga}\u{0}{key}\u{0}{index}");
    Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes())
}

/// A number in [0, 1) drawn from `id`: the jitter of a delay, spread across
/// instances yet the same when the same input is handled again.
fn unit(id: &Uuid) -> f64 {
    let (high, _) = id.as_u64_pair();
    (high >> 11) as f64 / (1u64 << 53) as f64
}

/// `now` plus `duration`, in milliseconds.
fn after(now: Millis, duration: Duration) -> Millis {
    now.saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use jetrun_config::RetryPolicy;
    use serde_json::json;

    use super::*;

    #[test]
    fn metric_labels_are_the_stored_names() {
        use State::*;
        for state in [Running, Compensating, Completed, Failed, Stuck] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.label());
        }
        for kind in [
            Kind::Command,
            Kind::Reply,
            Kind::Timeout,
            Kind::Compensate,
            Kind::Compensated,
            Kind::Completed,
            Kind::Failed,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.label());
        }
    }

    const SECOND: Millis = 1_000;

    /// A step whose types are `<name>.do`, `.done`, `.failed`, `.undo` and,
    /// when `awaited`, `.undone`; 30s to answer.
    fn step(name: &str, awaited: bool) -> SagaStep {
        SagaStep {
            name: name.into(),
            command: format!("{name}.do"),
            success: vec![format!("{name}.done")],
            failure: vec![format!("{name}.failed")],
            compensate: Some(format!("{name}.undo")),
            compensated: awaited.then(|| format!("{name}.undone")),
            timeout: Duration::from_secs(30),
            delay: None,
        }
    }

    /// reserve, charge, ship; 10 minutes in all; undos awaited 3 times at
    /// most, 1s then 2s apart (no jitter).
    fn fulfil(steps: Vec<SagaStep>) -> SagaConfig {
        SagaConfig {
            name: "fulfil".into(),
            start: "order.placed".into(),
            key: "/order_id".into(),
            timeout: Some(Duration::from_secs(600)),
            completed: "order.fulfilled".into(),
            failed: "order.cancelled".into(),
            retry: RetryPolicy::new(3, Duration::from_secs(1), 2.0, Duration::from_secs(10), 0.0)
                .unwrap(),
            steps,
            consumers: Vec::new(),
            concurrency: 16,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }

    fn three_steps() -> SagaConfig {
        fulfil(vec![
            step("reserve", false),
            step("charge", false),
            step("ship", false),
        ])
    }

    fn changed(outcome: Outcome) -> Change {
        match outcome {
            Outcome::Changed(change) => *change,
            Outcome::Unchanged(why) => panic!("expected a change, got {why:?}"),
        }
    }

    /// Order `o-1` placed at `now`.
    fn start(saga: &SagaConfig, now: Millis) -> Change {
        let data = json!({ "order_id": "o-1", "total": 42 });
        let event = Received {
            id: "e-start",
            event_type: "order.placed",
            data: &data,
            correlation_id: Some("c-1"),
        };
        changed(advance(saga, None, Input::Start { key: "o-1", event }, now))
    }

    /// A reply of `event_type` (id `r-<type>`) carrying `data`.
    fn reply(
        saga: &SagaConfig,
        instance: Option<&Instance>,
        event_type: &str,
        data: Value,
        now: Millis,
    ) -> Outcome {
        let id = format!("r-{event_type}");
        let event = Received {
            id: &id,
            event_type,
            data: &data,
            correlation_id: Some("c-1"),
        };
        advance(saga, instance, Input::Reply(event), now)
    }

    fn answered(saga: &SagaConfig, instance: &Instance, event_type: &str, now: Millis) -> Change {
        changed(reply(saga, Some(instance), event_type, json!({}), now))
    }

    fn tick(saga: &SagaConfig, instance: &Instance, now: Millis) -> Outcome {
        advance(saga, Some(instance), Input::Tick, now)
    }

    fn published(change: &Change) -> Vec<&str> {
        change
            .publish
            .iter()
            .map(|p| p.event_type.as_str())
            .collect()
    }

    fn kinds(instance: &Instance) -> Vec<Kind> {
        instance.transitions.iter().map(|t| t.kind).collect()
    }

    #[test]
    fn the_happy_path_commands_each_step_in_order_then_completes() {
        let saga = three_steps();
        let started = start(&saga, 0);
        assert_eq!(published(&started), ["reserve.do"]);
        let command = &started.publish[0];
        assert_eq!(command.data, json!({ "order_id": "o-1", "total": 42 }));
        assert_eq!(command.correlation_id, "c-1");
        assert_eq!(command.causation_id.as_deref(), Some("e-start"));
        assert_eq!(
            command.extensions,
            BTreeMap::from([
                ("saga".to_string(), "fulfil".to_string()),
                ("sagakey".to_string(), "o-1".to_string()),
            ])
        );
        assert_eq!(started.instance.state, State::Running);
        // The step's 30s come before the saga's 10 minutes.
        assert_eq!(started.next_deadline_ms, Some(30 * SECOND));
        assert_eq!(started.instance.saga_deadline_ms, Some(600 * SECOND));

        let reserved = changed(reply(
            &saga,
            Some(&started.instance),
            "reserve.done",
            json!({ "reservation": "r-9" }),
            SECOND,
        ));
        assert_eq!(published(&reserved), ["charge.do"]);
        assert_eq!(
            reserved.publish[0].causation_id.as_deref(),
            Some("r-reserve.done")
        );
        assert_eq!(
            reserved.publish[0].data,
            json!({ "order_id": "o-1", "total": 42, "reserve": { "reservation": "r-9" } })
        );
        assert_eq!(reserved.next_deadline_ms, Some(31 * SECOND));

        let charged = answered(&saga, &reserved.instance, "charge.done", 2 * SECOND);
        assert_eq!(published(&charged), ["ship.do"]);
        let shipped = answered(&saga, &charged.instance, "ship.done", 3 * SECOND);
        assert_eq!(published(&shipped), ["order.fulfilled"]);

        let done = &shipped.instance;
        assert_eq!(done.state, State::Completed);
        assert_eq!(shipped.next_deadline_ms, None);
        assert_eq!(done.completed, [0, 1, 2]);
        assert_eq!(done.updated_ms, 3 * SECOND);
        assert_eq!(
            kinds(done),
            [
                Kind::Command,
                Kind::Reply,
                Kind::Command,
                Kind::Reply,
                Kind::Command,
                Kind::Reply,
                Kind::Completed
            ]
        );
        let steps: Vec<Option<&str>> = done.transitions.iter().map(|t| t.step.as_deref()).collect();
        assert_eq!(
            steps,
            [
                Some("reserve"),
                Some("reserve"),
                Some("charge"),
                Some("charge"),
                Some("ship"),
                Some("ship"),
                None
            ]
        );
        assert_eq!(
            done.transitions[1].event_id.as_deref(),
            Some("r-reserve.done")
        );
    }

    #[test]
    fn a_failure_at_step_3_undoes_steps_2_then_1_then_fails() {
        // reserve's undo is confirmed; charge's is published once.
        let saga = fulfil(vec![
            step("reserve", true),
            step("charge", false),
            step("ship", false),
        ]);
        let started = start(&saga, 0);
        let reserved = answered(&saga, &started.instance, "reserve.done", SECOND);
        let charged = answered(&saga, &reserved.instance, "charge.done", 2 * SECOND);
        let refused = answered(&saga, &charged.instance, "ship.failed", 3 * SECOND);

        // ship answered failure: nothing of it to undo.
        assert_eq!(published(&refused), ["charge.undo", "reserve.undo"]);
        let undoing = &refused.instance;
        assert_eq!(undoing.state, State::Compensating);
        assert_eq!(undoing.step, 0);
        let compensation = undoing.compensation.as_ref().unwrap();
        assert_eq!(compensation.cause, Cause::Failure { step: 2 });
        assert_eq!(
            (
                compensation.pending.as_slice(),
                compensation.undone.as_slice()
            ),
            (&[0][..], &[1][..])
        );
        assert_eq!(compensation.attempts, 1);
        assert_eq!(refused.next_deadline_ms, Some((3 + 30 + 1) * SECOND));

        let undone = answered(&saga, undoing, "reserve.undone", 4 * SECOND);
        assert_eq!(published(&undone), ["order.cancelled"]);
        assert_eq!(undone.instance.state, State::Failed);
        assert_eq!(undone.next_deadline_ms, None);
        assert_eq!(
            undone.instance.compensation.as_ref().unwrap().undone,
            [1, 0]
        );
        assert_eq!(
            kinds(&undone.instance)[5..],
            [
                Kind::Reply,
                Kind::Compensate,
                Kind::Compensate,
                Kind::Compensated,
                Kind::Failed
            ]
        );
    }

    #[test]
    fn a_step_timeout_undoes_that_step_and_the_ones_before() {
        let saga = three_steps();
        let started = start(&saga, 0);
        let reserved = answered(&saga, &started.instance, "reserve.done", SECOND);
        assert_eq!(
            tick(&saga, &reserved.instance, 31 * SECOND - 1),
            Outcome::Unchanged(Why::NotDue)
        );

        let timed_out = changed(tick(&saga, &reserved.instance, 31 * SECOND));
        // charge may have been done with its reply lost: undone too.
        assert_eq!(
            published(&timed_out),
            ["charge.undo", "reserve.undo", "order.cancelled"]
        );
        assert!(timed_out.publish.iter().all(|p| p.causation_id.is_none()));
        let failed = &timed_out.instance;
        assert_eq!(failed.state, State::Failed);
        let compensation = failed.compensation.as_ref().unwrap();
        assert_eq!(compensation.cause, Cause::StepTimeout { step: 1 });
        assert_eq!(compensation.undone, [1, 0]);
        assert_eq!(
            failed.transitions[3],
            Transition {
                at_ms: 31 * SECOND,
                kind: Kind::Timeout,
                step: Some("charge".into()),
                event_type: None,
                event_id: None,
            }
        );
    }

    #[test]
    fn steps_without_an_undo_are_skipped() {
        let mut saga = three_steps();
        saga.steps[0].compensate = None;
        let started = start(&saga, 0);
        let reserved = answered(&saga, &started.instance, "reserve.done", SECOND);
        let refused = answered(&saga, &reserved.instance, "charge.failed", 2 * SECOND);
        assert_eq!(published(&refused), ["order.cancelled"]);
        assert_eq!(refused.instance.state, State::Failed);
    }

    #[test]
    fn an_awaited_undo_is_published_again_with_backoff_then_left_stuck() {
        let saga = fulfil(vec![step("reserve", true), step("charge", false)]);
        let started = start(&saga, 0);
        let reserved = answered(&saga, &started.instance, "reserve.done", SECOND);
        let refused = answered(&saga, &reserved.instance, "charge.failed", 2 * SECOND);
        assert_eq!(published(&refused), ["reserve.undo"]);

        // Each wait: the step's 30s, plus 1s, then 2s; the last attempt's 30s alone.
        let mut instance = refused.instance;
        let mut ids = vec![refused.publish[0].event_id.clone()];
        let mut deadline = refused.next_deadline_ms.unwrap();
        assert_eq!(deadline, (2 + 30 + 1) * SECOND);
        for (attempt, wait) in [(2, 30 + 2), (3, 30)] {
            assert_eq!(
                tick(&saga, &instance, deadline - 1),
                Outcome::Unchanged(Why::NotDue)
            );
            let again = changed(tick(&saga, &instance, deadline));
            assert_eq!(published(&again), ["reserve.undo"]);
            ids.push(again.publish[0].event_id.clone());
            assert_eq!(
                again.instance.compensation.as_ref().unwrap().attempts,
                attempt
            );
            assert_eq!(again.next_deadline_ms, Some(deadline + wait * SECOND));
            deadline = again.next_deadline_ms.unwrap();
            instance = again.instance;
        }
        ids.dedup();
        assert_eq!(ids.len(), 3, "each attempt is a new event: {ids:?}");

        let stuck = changed(tick(&saga, &instance, deadline));
        assert!(stuck.publish.is_empty());
        assert_eq!(stuck.instance.state, State::Stuck);
        assert_eq!(stuck.next_deadline_ms, None);
        assert_eq!(
            tick(&saga, &stuck.instance, deadline + 3_600 * SECOND),
            Outcome::Unchanged(Why::NotDue)
        );
        assert_eq!(
            kinds(&stuck.instance)[3..],
            [
                Kind::Reply,
                Kind::Compensate,
                Kind::Timeout,
                Kind::Compensate,
                Kind::Timeout,
                Kind::Compensate,
                Kind::Timeout
            ]
        );

        // The confirmation, however late, finishes the undos.
        let undone = answered(
            &saga,
            &stuck.instance,
            "reserve.undone",
            deadline + 60 * SECOND,
        );
        assert_eq!(published(&undone), ["order.cancelled"]);
        assert_eq!(undone.instance.state, State::Failed);
    }

    #[test]
    fn replies_that_change_nothing_say_why() {
        let saga = three_steps();
        let started = start(&saga, 0);
        let reserved = answered(&saga, &started.instance, "reserve.done", SECOND);
        let at_charge = Some(&reserved.instance);
        let why = |instance: Option<&Instance>, event_type: &str| match reply(
            &saga,
            instance,
            event_type,
            json!({}),
            2 * SECOND,
        ) {
            Outcome::Unchanged(why) => why,
            Outcome::Changed(change) => panic!("{event_type} changed {change:?}"),
        };

        let data = json!({ "order_id": "o-1" });
        let again = Received {
            id: "e-start-2",
            event_type: "order.placed",
            data: &data,
            correlation_id: None,
        };
        assert_eq!(
            advance(
                &saga,
                at_charge,
                Input::Start {
                    key: "o-1",
                    event: again
                },
                SECOND
            ),
            Outcome::Unchanged(Why::Duplicate)
        );
        assert_eq!(why(at_charge, "reserve.done"), Why::Duplicate);
        assert_eq!(why(at_charge, "reserve.failed"), Why::Duplicate);
        assert_eq!(why(at_charge, "ship.done"), Why::Unexpected);
        assert_eq!(why(None, "charge.done"), Why::Unknown);
        assert_eq!(why(at_charge, "payment.done"), Why::Unknown);
        assert_eq!(
            advance(&saga, None, Input::Tick, SECOND),
            Outcome::Unchanged(Why::Unknown)
        );

        // charge times out: its reply comes too late.
        let timed_out = changed(tick(&saga, &reserved.instance, 31 * SECOND));
        let failed = Some(&timed_out.instance);
        assert_eq!(why(failed, "charge.done"), Why::Late);
        assert_eq!(why(failed, "reserve.done"), Why::Duplicate);
        assert_eq!(why(failed, "ship.done"), Why::Unexpected);

        // A failure, answered twice.
        let refused = answered(&saga, &reserved.instance, "charge.failed", 2 * SECOND);
        assert_eq!(
            why(Some(&refused.instance), "charge.failed"),
            Why::Duplicate
        );
        assert_eq!(why(Some(&refused.instance), "charge.done"), Why::Late);

        // An undo confirmed twice, and one never awaited.
        let saga = fulfil(vec![step("reserve", true), step("charge", true)]);
        let started = start(&saga, 0);
        let running = &started.instance;
        assert_eq!(
            reply(&saga, Some(running), "reserve.undone", json!({}), SECOND),
            Outcome::Unchanged(Why::Unexpected)
        );
        let reserved = answered(&saga, running, "reserve.done", SECOND);
        let refused = answered(&saga, &reserved.instance, "charge.failed", 2 * SECOND);
        let undone = answered(&saga, &refused.instance, "reserve.undone", 3 * SECOND);
        assert_eq!(
            reply(
                &saga,
                Some(&undone.instance),
                "reserve.undone",
                json!({}),
                4 * SECOND
            ),
            Outcome::Unchanged(Why::Duplicate)
        );
        assert_eq!(
            reply(
                &saga,
                Some(&undone.instance),
                "charge.undone",
                json!({}),
                4 * SECOND
            ),
            Outcome::Unchanged(Why::Unexpected)
        );
    }

    #[test]
    fn the_saga_timeout_undoes_what_was_done_and_the_step_in_flight() {
        let mut saga = three_steps();
        for step in &mut saga.steps {
            step.timeout = Duration::from_secs(3_600);
        }
        let started = start(&saga, 0);
        let reserved = answered(&saga, &started.instance, "reserve.done", SECOND);
        assert_eq!(reserved.next_deadline_ms, Some(600 * SECOND));

        let timed_out = changed(tick(&saga, &reserved.instance, 600 * SECOND));
        assert_eq!(
            published(&timed_out),
            ["charge.undo", "reserve.undo", "order.cancelled"]
        );
        let failed = &timed_out.instance;
        assert_eq!(
            failed.compensation.as_ref().unwrap().cause,
            Cause::SagaTimeout { step: 1 }
        );
        assert_eq!(failed.transitions[3].kind, Kind::Timeout);
        assert_eq!(failed.transitions[3].step, None);
    }

    #[test]
    fn a_delayed_step_is_published_later_and_its_timeouts_count_from_delivery() {
        const HOUR: Millis = 3_600 * SECOND;
        let mut saga = three_steps();
        saga.steps[1].delay = Some(Duration::from_secs(3_600));
        let started = start(&saga, 0);
        assert_eq!(started.publish[0].due_ms, None);
        let reserved = answered(&saga, &started.instance, "reserve.done", SECOND);

        // charge.do is due an hour after reserve's reply, and awaited 30s from then.
        assert_eq!(published(&reserved), ["charge.do"]);
        assert_eq!(reserved.publish[0].due_ms, Some(SECOND + HOUR));
        let waiting = &reserved.instance;
        assert_eq!(waiting.step_deadline_ms, Some(SECOND + HOUR + 30 * SECOND));
        // The saga's 10 minutes do not count the hour.
        assert_eq!(waiting.saga_deadline_ms, Some(600 * SECOND + HOUR));
        assert_eq!(reserved.next_deadline_ms, Some(SECOND + HOUR + 30 * SECOND));
        assert_eq!(
            tick(&saga, waiting, 31 * SECOND),
            Outcome::Unchanged(Why::NotDue)
        );
        assert_eq!(
            tick(&saga, waiting, HOUR + 31 * SECOND - 1),
            Outcome::Unchanged(Why::NotDue)
        );

        // Answered 20s after its delivery: the next step is not delayed.
        let charged = answered(&saga, waiting, "charge.done", HOUR + 21 * SECOND);
        assert_eq!(published(&charged), ["ship.do"]);
        assert_eq!(charged.publish[0].due_ms, None);
        assert_eq!(charged.next_deadline_ms, Some(HOUR + 51 * SECOND));

        // Timed out once its wait is over: the undos go out at once.
        let timed_out = changed(tick(&saga, waiting, HOUR + 31 * SECOND));
        assert_eq!(
            published(&timed_out),
            ["charge.undo", "reserve.undo", "order.cancelled"]
        );
        assert!(timed_out.publish.iter().all(|p| p.due_ms.is_none()));
        assert_eq!(
            timed_out.instance.compensation.as_ref().unwrap().cause,
            Cause::StepTimeout { step: 1 }
        );
    }

    #[test]
    fn a_delayed_first_step_moves_the_saga_deadline_by_its_delay() {
        let mut saga = three_steps();
        saga.steps[0].delay = Some(Duration::from_secs(10));
        saga.steps[0].timeout = Duration::from_secs(3_600);
        let started = start(&saga, 5 * SECOND);
        assert_eq!(published(&started), ["reserve.do"]);
        assert_eq!(started.publish[0].due_ms, Some(15 * SECOND));
        assert_eq!(started.instance.step_deadline_ms, Some(3_615 * SECOND));
        assert_eq!(started.instance.saga_deadline_ms, Some(615 * SECOND));
        assert_eq!(started.next_deadline_ms, Some(615 * SECOND));
        assert_eq!(
            tick(&saga, &started.instance, 615 * SECOND - 1),
            Outcome::Unchanged(Why::NotDue)
        );
        let timed_out = changed(tick(&saga, &started.instance, 615 * SECOND));
        assert_eq!(
            timed_out.instance.compensation.as_ref().unwrap().cause,
            Cause::SagaTimeout { step: 0 }
        );
        assert_eq!(published(&timed_out), ["reserve.undo", "order.cancelled"]);
        assert!(timed_out.publish.iter().all(|p| p.due_ms.is_none()));
    }

    #[test]
    fn an_outbox_keeps_when_a_command_is_due() {
        let mut saga = three_steps();
        saga.steps[0].delay = Some(Duration::from_secs(10));
        let started = start(&saga, 0);
        let delayed = &started.publish[0];
        let text = serde_json::to_string(delayed).unwrap();
        assert_eq!(&serde_json::from_str::<Publish>(&text).unwrap(), delayed);
        let reserved = answered(&saga, &started.instance, "reserve.done", SECOND);
        let at_once = serde_json::to_value(&reserved.publish[0]).unwrap();
        assert!(at_once.get("due_ms").is_none(), "{at_once}");
        // An outbox stored before delays existed reads as published at once.
        let mut old = at_once.clone();
        old.as_object_mut().unwrap().remove("due_ms");
        assert_eq!(
            serde_json::from_value::<Publish>(old).unwrap(),
            reserved.publish[0]
        );
    }

    #[test]
    fn event_ids_derive_from_saga_key_and_transition() {
        let saga = three_steps();
        let first = start(&saga, 0);
        let second = start(&saga, 5 * SECOND);
        assert_eq!(first.publish, second.publish);
        assert_eq!(
            first.publish[0].event_id,
            event_id("fulfil", "o-1", 0).to_string()
        );

        // Handling the same reply again (say, after a crash before it was
        // acked) publishes the same event.
        let reserved = answered(&saga, &first.instance, "reserve.done", SECOND);
        let again = answered(&saga, &first.instance, "reserve.done", 9 * SECOND);
        assert_eq!(reserved.publish, again.publish);
        assert_eq!(
            reserved.publish[0].event_id,
            event_id("fulfil", "o-1", 2).to_string()
        );

        let ids = [
            event_id("fulfil", "o-1", 0),
            event_id("fulfil", "o-1", 1),
            event_id("fulfil", "o-2", 0),
            event_id("other", "o-1", 0),
        ];
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn an_instance_round_trips_through_json() {
        let saga = fulfil(vec![step("reserve", true), step("charge", false)]);
        let started = start(&saga, 0);
        let reserved = changed(reply(
            &saga,
            Some(&started.instance),
            "reserve.done",
            json!({ "reservation": "r-9" }),
            SECOND,
        ));
        let refused = answered(&saga, &reserved.instance, "charge.failed", 2 * SECOND);
        let instance = refused.instance;

        let text = serde_json::to_string(&instance).unwrap();
        let back: Instance = serde_json::from_str(&text).unwrap();
        assert_eq!(back, instance);

        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["state"], "compensating");
        assert_eq!(json["data"]["reserve"], json!({ "reservation": "r-9" }));
        assert_eq!(
            json["compensation"]["cause"],
            json!({ "kind": "failure", "step": 1 })
        );
        assert_eq!(json["transitions"][0]["kind"], "command");
        assert_eq!(json["correlation_id"], "c-1");
    }

    #[test]
    fn the_key_is_read_from_the_start_event() {
        let saga = three_steps();
        assert_eq!(
            key_of(&saga, &json!({ "order_id": "o-1" })),
            Ok("o-1".into())
        );
        assert_eq!(
            key_of(&saga, &json!({ "order_id": 1001 })),
            Ok("1001".into())
        );
        let pointer = "/order_id".to_string();
        assert_eq!(
            key_of(&saga, &json!({ "id": 1 })),
            Err(KeyError::Missing {
                pointer: pointer.clone()
            })
        );
        assert_eq!(
            key_of(&saga, &json!({ "order_id": "" })),
            Err(KeyError::NotAKey {
                pointer: pointer.clone(),
                got: "\"\"".into()
            })
        );
        assert_eq!(
            key_of(&saga, &json!("o-1")),
            Err(KeyError::NotAnObject { pointer })
        );
        assert_eq!(
            key_of(&saga, &json!({ "order_id": true }))
                .unwrap_err()
                .to_string(),
            "its key at /order_id must be a non-empty string or a number, got true"
        );
    }
}
