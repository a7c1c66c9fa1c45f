//! What a function returns: events to emit and, for the functions that
//! answer (request, aggregate and projection functions), a result; or a
//! failure whose kind (retryable or permanent) is decided where the failure
//! is made.

use std::fmt;

use bytes::Bytes;

/// The result of one call.
pub type Outcome = Result<Output, Failure>;

/// What a successful call gives back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// Events to publish (a stream function's choreography).
    pub emits: Vec<Emit>,
    /// The function's result, as it wrote it: a request function's reply,
    /// an aggregate's `{"append", ...}`, a projection's `{"state"}`. `None`
    /// for a function that only emits.
    pub result: Option<Bytes>,
}

impl Output {
    /// A result and no events.
    pub fn result(result: impl Into<Bytes>) -> Self {
        Output {
            emits: Vec::new(),
            result: Some(result.into()),
        }
    }
}

impl From<Vec<Emit>> for Output {
    fn from(emits: Vec<Emit>) -> Self {
        Output {
            emits,
            result: None,
        }
    }
}

/// An event a function asks the runner to publish once it succeeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    /// The CloudEvents `type`; also the subject when `subject` is `None`.
    pub event_type: String,
    /// The subject to publish on, when it differs from the type.
    pub subject: Option<String>,
    /// The event's data, published as JSON.
    pub data: serde_json::Value,
    /// When the event is to be stored on its subject, if not at once: a
    /// delayed event (nats-server 2.12 or later; see docs/schedules.md).
    pub later: Option<Later>,
}

/// When a delayed event is stored on its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Later {
    /// This long after the call that emitted it succeeded.
    After(std::time::Duration),
    /// At this time (right away when it is past).
    At(std::time::SystemTime),
}

impl Emit {
    pub fn new(event_type: impl Into<String>, data: serde_json::Value) -> Self {
        Emit {
            event_type: event_type.into(),
            subject: None,
            data,
            later: None,
        }
    }

    /// The same event, stored `delay` after the call succeeds.
    pub fn after(self, delay: std::time::Duration) -> Self {
        Emit {
            later: Some(Later::After(delay)),
            ..self
        }
    }

    /// The same event, stored at `at`.
    pub fn at(self, at: std::time::SystemTime) -> Self {
        Emit {
            later: Some(Later::At(at)),
            ..self
        }
    }

    /// The subject the event goes to.
    pub fn subject(&self) -> &str {
        self.subject.as_deref().unwrap_or(&self.event_type)
    }
}

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Redelivered after a backoff delay, until the attempts run out.
    Retryable,
    /// Dead-lettered at once: retrying bad data helps no one.
    Permanent,
}

/// A failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    /// The NATS micro error code a request function answers with, when the
    /// kind does not say it: 409 for a conflict that outlived its retries,
    /// 504 for a timeout. `None`: 400 when permanent, else 500.
    pub status: Option<u16>,
}

impl Failure {
    pub fn retryable(message: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Retryable,
            message: message.into(),
            status: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Permanent,
            message: message.into(),
            status: None,
        }
    }

    /// The same failure, answered with `status` by a request function.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// The code a request function answers this failure with.
    pub fn service_code(&self) -> u16 {
        match (self.status, self.kind) {
            (Some(status), _) => status,
            (None, FailureKind::Permanent) => 400,
            (None, FailureKind::Retryable) => 500,
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}
