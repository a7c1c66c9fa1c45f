//! What becomes of a delivery once its handler has answered (or panicked):
//! acknowledged, redelivered after a backoff delay, or dead-lettered. Pure.

use std::time::Duration;

use jetrun_config::RetryPolicy;
use jetrun_functions::Failure;

/// Why an event went to the dead letters (`Jetrun-Reason`, and the `reason`
/// label of `jetrun_dead_letters_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Every attempt failed.
    Exhausted,
    /// The failure said retrying cannot help.
    Permanent,
    /// The last attempt panicked (a built-in's bug, a dependency's assert).
    Panic,
    /// Not handled: its key is parked behind an earlier dead letter
    /// (`on_dead_letter = "park"`). Never decided here.
    Parked,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Exhausted => "exhausted",
            Reason::Permanent => "permanent",
            Reason::Panic => "panic",
            Reason::Parked => "parked",
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Attempt {
    Handled,
    Failed(Failure),
    /// The handler (or what ran around it) panicked, with this message: a
    /// failure of this event only, retried like any other.
    Panicked(String),
}

impl Attempt {
    /// Why it failed, in words; empty when it did not.
    pub(crate) fn error(&self) -> String {
        match self {
            Attempt::Handled => String::new(),
            Attempt::Failed(failure) => failure.message.clone(),
            Attempt::Panicked(message) => format!("the handler panicked: {message}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    Ack,
    /// NAK with this delay: JetStream redelivers after it.
    Retry(Duration),
    DeadLetter(Reason),
}

/// `attempt` is JetStream's delivery count (from 1); `unit` a random number in
/// [0, 1) for the jitter.
pub(crate) fn decide(outcome: &Attempt, attempt: u64, policy: &RetryPolicy, unit: f64) -> Action {
    match outcome {
        Attempt::Handled => Action::Ack,
        Attempt::Failed(failure) if failure.is_permanent() => Action::DeadLetter(Reason::Permanent),
        Attempt::Failed(_) if policy.is_last(attempt) => Action::DeadLetter(Reason::Exhausted),
        Attempt::Panicked(_) if policy.is_last(attempt) => Action::DeadLetter(Reason::Panic),
        Attempt::Failed(_) | Attempt::Panicked(_) => Action::Retry(policy.delay(attempt, unit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(
            3,
            Duration::from_millis(200),
            2.0,
            Duration::from_secs(5),
            0.0,
        )
        .unwrap()
    }

    #[test]
    fn success_is_acked() {
        assert_eq!(decide(&Attempt::Handled, 1, &policy(), 0.5), Action::Ack);
    }

    #[test]
    fn retryable_failures_back_off_until_the_last_attempt() {
        let fail = Attempt::Failed(Failure::retryable("db down"));
        assert_eq!(
            decide(&fail, 1, &policy(), 0.5),
            Action::Retry(Duration::from_millis(200))
        );
        assert_eq!(
            decide(&fail, 2, &policy(), 0.5),
            Action::Retry(Duration::from_millis(400))
        );
        assert_eq!(
            decide(&fail, 3, &policy(), 0.5),
            Action::DeadLetter(Reason::Exhausted)
        );
        // Redelivered past the limit (a runner died in its last attempt).
        assert_eq!(
            decide(&fail, 9, &policy(), 0.5),
            Action::DeadLetter(Reason::Exhausted)
        );
    }

    #[test]
    fn permanent_failures_go_straight_to_the_dead_letters() {
        let fail = Attempt::Failed(Failure::permanent("no items"));
        assert_eq!(
            decide(&fail, 1, &policy(), 0.5),
            Action::DeadLetter(Reason::Permanent)
        );
    }

    #[test]
    fn a_panic_is_retried_then_dead_lettered_as_one() {
        let panicked = Attempt::Panicked("boom".into());
        assert_eq!(
            decide(&panicked, 1, &policy(), 0.5),
            Action::Retry(Duration::from_millis(200))
        );
        assert_eq!(
            decide(&panicked, 3, &policy(), 0.5),
            Action::DeadLetter(Reason::Panic)
        );
        assert_eq!(panicked.error(), "the handler panicked: boom");
    }
}
