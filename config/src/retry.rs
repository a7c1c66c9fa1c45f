//! The retry policy of a function: how many attempts, and the exponential
//! delay before each redelivery. Validated when built, so a policy that exists
//! is one that makes sense.

use std::time::Duration;

/// `retry = { max_attempts, initial_delay, multiplier, max_delay, jitter }`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: f64,
}

/// Why a retry policy was refused; each names the key at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidRetry {
    #[error("max_attempts must be at least 1, got {0}")]
    MaxAttempts(i64),
    #[error("multiplier must be at least 1.0, got {0}")]
    Multiplier(f64),
    #[error("jitter must be between 0.0 and 1.0, got {0}")]
    Jitter(f64),
    #[error("max_delay ({max:?}) must not be shorter than initial_delay ({initial:?})")]
    MaxDelay { initial: Duration, max: Duration },
}

impl InvalidRetry {
    /// The key of the `retry` table the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            InvalidRetry::MaxAttempts(_) => "max_attempts",
            InvalidRetry::Multiplier(_) => "multiplier",
            InvalidRetry::Jitter(_) => "jitter",
            InvalidRetry::MaxDelay { .. } => "max_delay",
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(300),
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    pub fn new(
        max_attempts: i64,
        initial_delay: Duration,
        multiplier: f64,
        max_delay: Duration,
        jitter: f64,
    ) -> Result<Self, InvalidRetry> {
        let max_attempts = u32::try_from(max_attempts)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or(InvalidRetry::MaxAttempts(max_attempts))?;
        if !(multiplier >= 1.0 && multiplier.is_finite()) {
            return Err(InvalidRetry::Multiplier(multiplier));
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(InvalidRetry::Jitter(jitter));
        }
        if max_delay < initial_delay {
            return Err(InvalidRetry::MaxDelay {
                initial: initial_delay,
                max: max_delay,
            });
        }
        Ok(RetryPolicy {
            max_attempts,
            initial_delay,
            multiplier,
            max_delay,
            jitter,
        })
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
    pub fn initial_delay(&self) -> Duration {
        self.initial_delay
    }
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// Whether attempt `attempt` (counting from 1) is the last one allowed.
    pub fn is_last(&self, attempt: u64) -> bool {
        attempt >= u64::from(self.max_attempts)
    }

    /// The delay before the redelivery that follows failed attempt `attempt`
    /// (counting from 1): `min(initial_delay * multiplier^(attempt-1), max_delay)`,
    /// then moved by up to ± `jitter` of itself. `unit` is a random number in
    /// [0, 1) (0.5 gives the delay without jitter).
    pub fn delay(&self, attempt: u64, unit: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(i32::MAX as u64) as i32;
        let base = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max_delay.as_secs_f64());
        let spread = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        // At most what a NAK delay can say (i64 nanoseconds, 292 years),
        // however huge max_delay and multiplier are.
        let longest = Duration::from_nanos(i64::MAX as u64);
        Duration::try_from_secs_f64((capped * spread).max(0.0))
            .map_or(longest, |delay| delay.min(longest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy::new(
            5,
            Duration::from_secs(1),
            2.0,
            Duration::from_secs(5),
            jitter,
        )
        .unwrap()
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let p = policy(0.0);
        let delays: Vec<_> = (1..=5).map(|n| p.delay(n, 0.9)).collect();
        let secs: Vec<f64> = delays.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, vec![1.0, 2.0, 4.0, 5.0, 5.0]);
    }

    #[test]
    fn jitter_moves_the_delay_within_its_bounds() {
        let p = policy(0.1);
        assert_eq!(p.delay(2, 0.5), Duration::from_secs(2));
        assert!((p.delay(2, 0.0).as_secs_f64() - 1.8).abs() < 1e-9);
        assert!((p.delay(2, 1.0).as_secs_f64() - 2.2).abs() < 1e-9);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = policy(0.0);
        assert_eq!(p.delay(u64::MAX, 0.5), Duration::from_secs(5));
    }

    #[test]
    fn last_attempt_is_max_attempts() {
        let p = policy(0.0);
        assert!(!p.is_last(4));
        assert!(p.is_last(5));
        assert!(p.is_last(6));
    }

    #[test]
    fn bad_policies_are_refused_at_construction() {
        let s = Duration::from_secs;
        assert_eq!(
            RetryPolicy::new(0, s(1), 2.0, s(5), 0.1),
            Err(InvalidRetry::MaxAttempts(0))
        );
        assert_eq!(
            RetryPolicy::new(3, s(1), 0.5, s(5), 0.1),
            Err(InvalidRetry::Multiplier(0.5))
        );
        assert_eq!(
            RetryPolicy::new(3, s(1), 2.0, s(5), 1.5),
            Err(InvalidRetry::Jitter(1.5))
        );
        assert_eq!(
            RetryPolicy::new(3, s(10), 2.0, s(5), 0.1),
            Err(InvalidRetry::MaxDelay {
                initial: s(10),
                max: s(5)
            })
        );
    }
}
