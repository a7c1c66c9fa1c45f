//! Waiting for conditions with a deadline: tests poll what they expect every
//! 50 ms instead of sleeping and hoping.

use std::future::Future;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);

/// Polls `f` every 50 ms until it returns true; panics naming `what` when
/// `timeout` passes first.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Checks `f` every 50 ms for `duration` and panics naming `what` the first
/// time it is false. This is how a test shows that something does *not*
/// happen (no redelivery after the ack wait, say): the wait is the point.
pub async fn holds_for<F, Fut>(duration: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        assert!(
            f().await,
            "{what} stopped holding after {:?}",
            start.elapsed()
        );
        if start.elapsed() >= duration {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}
