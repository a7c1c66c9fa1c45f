//! How long-lived work stops, and how it waits for NATS: one [`Shutdown`]
//! signal (draining, then abandoning what is still in flight) that every
//! consumer, endpoint and saga task watches, and one [`retry_until`] loop
//! with one backoff and one log throttle for everything that must wait
//! until NATS agrees (binding a consumer, opening a bucket, registering the
//! micro service).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// What a task watches to know when to stop. Cloned freely.
#[derive(Clone)]
pub(crate) struct Shutdown {
    draining: watch::Receiver<bool>,
    abandon: watch::Receiver<bool>,
}

/// The levers of a [`Shutdown`]: whoever owns the work holds it.
pub(crate) struct Control {
    draining: watch::Sender<bool>,
    abandon: watch::Sender<bool>,
}

impl Control {
    pub(crate) fn new() -> (Control, Shutdown) {
        let (draining, draining_rx) = watch::channel(false);
        let (abandon, abandon_rx) = watch::channel(false);
        (
            Control { draining, abandon },
            Shutdown {
                draining: draining_rx,
                abandon: abandon_rx,
            },
        )
    }

    /// Stop taking new work; let the work in flight finish.
    pub(crate) fn drain(&self) {
        let _ = self.draining.send(true);
    }

    /// The drain ran out of time: give back what is still in flight (NAK
    /// it, answer 503).
    pub(crate) fn abandon(&self) {
        let _ = self.draining.send(true);
        let _ = self.abandon.send(true);
    }
}

impl Shutdown {
    /// Whether the drain has begun.
    pub(crate) fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves once the drain begins (or the [`Control`] is gone).
    pub(crate) async fn draining(&self) {
        let mut flag = self.draining.clone();
        let _ = flag.wait_for(|set| *set).await;
    }

    /// Resolves once what is in flight must be given back (or the
    /// [`Control`] is gone).
    pub(crate) async fn abandoned(&self) {
        let mut flag = self.abandon.clone();
        let _ = flag.wait_for(|set| *set).await;
    }
}

/// The first pause between attempts; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between attempts.
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// After the first failure, one in this many is logged as a warning (about
/// one every 30 s at [`MAX_PAUSE`]); the rest at debug level.
const LOG_EVERY: u32 = 30;

/// Runs `op` until it succeeds, pausing between attempts, or until the
/// drain begins (`None`). `what` completes "Cannot ... yet; retrying." in the
/// log, which is written in the caller's span (the function, the saga).
pub(crate) async fn retry_until<T, E, F, Fut>(
    what: &str,
    shutdown: &Shutdown,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let mut failures = 0u32;
    let mut pause = FIRST_PAUSE;
    loop {
        let attempt = tokio::select! {
            biased;
            () = shutdown.draining() => return None,
            attempt = op() => attempt,
        };
        match attempt {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(attempts = failures + 1, "Can {what} now.");
                }
                return Some(value);
            }
            Err(err) => {
                failures += 1;
                let error = crate::redact::text(&err.to_string());
                if failures % LOG_EVERY == 1 {
                    tracing::warn!(%error, attempts = failures, "Cannot {what} yet; retrying.");
                } else {
                    tracing::debug!(%error, attempts = failures, "Cannot {what} yet; retrying.");
                }
            }
        }
        tokio::select! {
            () = shutdown.draining() => return None,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_until_it_works() {
        let (_trigger, shutdown) = Control::new();
        let calls = AtomicU32::new(0);
        let got = retry_until("count", &shutdown, || async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                n @ 0..=3 => Err(format!("attempt {n}")),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(got, Some(4));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_drain_begins() {
        let (trigger, shutdown) = Control::new();
        let retrying = retry_until("fail", &shutdown, || async { Err::<(), _>("down") });
        let drain = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            trigger.drain();
        };
        let (got, ()) = tokio::join!(retrying, drain);
        assert_eq!(got, None);
        assert!(shutdown.is_draining());
    }

    #[tokio::test(start_paused = true)]
    async fn abandoning_also_drains() {
        let (trigger, shutdown) = Control::new();
        trigger.abandon();
        shutdown.draining().await;
        shutdown.abandoned().await;
    }
}
