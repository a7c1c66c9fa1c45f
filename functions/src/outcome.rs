//! What a function returns: events to emit on success, or a failure whose
//! kind (retryable or permanent) is decided where the failure is made.

use std::fmt;

/// The result of one call.
pub type Outcome = Result<Vec<Emit>, Failure>;

/// An event a function asks the runner to publish once it succeeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    /// The CloudEvents `type`; also the subject when `subject` is `None`.
    pub event_type: String,
    /// The subject to publish on, when it differs from the type.
    pub subject: Option<String>,
    /// The event's data, published as JSON.
    pub data: serde_json::Value,
}

impl Emit {
    pub fn new(event_type: impl Into<String>, data: serde_json::Value) -> Self {
        Emit {
            event_type: event_type.into(),
            subject: None,
            data,
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
}

impl Failure {
    pub fn retryable(message: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Retryable,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Permanent,
            message: message.into(),
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
