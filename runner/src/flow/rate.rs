//! `rate = "N/s"`: handler calls started per second across every replica of
//! a function. No replica asks another for a token: each paces its own
//! calls at `rate / live replicas` (the count from [`Presence`]), so the sum
//! stays at the rate, and the pace changes the moment the count does. A
//! pacer spaces the calls by its interval, with a burst of at most one: a
//! call after an idle spell starts at once, the next one an interval later.

use std::time::Duration;

use jetrun_config::Rate;
use prometheus::Counter;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use super::presence::{Presence, HEARTBEAT, MISSED};

/// One function's pacer in this process.
pub(crate) struct Limiter {
    /// The function's whole rate, in calls per second.
    per_second: f64,
    /// Waited for before the first call; `None` in tests.
    presence: Option<Presence>,
    /// The live replicas of the function.
    live: watch::Receiver<usize>,
    /// When the last call was let start. Held, in turn (first come, first
    /// served), by the call waiting for the next start.
    last: Mutex<Option<Instant>>,
    /// `jetrun_rate_limited_seconds_total{function}`.
    waited: Counter,
}

impl Limiter {
    pub(crate) fn new(rate: Rate, presence: Presence, waited: Counter) -> Limiter {
        Limiter {
            per_second: rate.per_second(),
            live: presence.watch(),
            presence: Some(presence),
            last: Mutex::new(None),
            waited,
        }
    }

    /// Waits until a call may start, counting the wait. Dropping the future
    /// gives its turn up (the call never started, nothing is used).
    pub(crate) async fn wait(&self) {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        if let (None, Some(presence)) = (*last, &self.presence) {
            // The first call waits until the replicas already running are
            // counted, so a joining replica never starts at the whole rate.
            presence.settled(HEARTBEAT * MISSED).await;
        }
        let mut live = self.live.clone();
        loop {
            let interval = interval(self.per_second, *live.borrow_and_update());
            let start = next_start(*last, Instant::now(), interval);
            tokio::select! {
                () = tokio::time::sleep_until(start) => {
                    *last = Some(start);
                    break;
                }
                // The replicas changed: the same wait under the new interval.
                changed = live.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(start).await;
                        *last = Some(start);
                        break;
                    }
                }
            }
        }
        drop(last);
        self.waited.inc_by(asked.elapsed().as_secs_f64());
    }
}

/// The spacing of one replica's calls: `live` replicas share `per_second`.
fn interval(per_second: f64, live: usize) -> Duration {
    Duration::from_secs_f64(live.max(1) as f64 / per_second)
}

/// When the next call may start: an interval after the last one, and never
/// before `now` (time left unused is not saved up: a burst of at most one).
fn next_start(last: Option<Instant>, now: Instant, interval: Duration) -> Instant {
    match last {
        Some(last) => (last + interval).max(now),
        None => now,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn replicas_share_the_rate() {
        assert_eq!(interval(200.0, 1), Duration::from_millis(5));
        assert_eq!(interval(200.0, 2), Duration::from_millis(10));
        assert_eq!(interval(200.0, 0), Duration::from_millis(5));
        let per_minute = Rate {
            calls: 30,
            per: Duration::from_secs(60),
        };
        assert_eq!(interval(per_minute.per_second(), 3), Duration::from_secs(6));
    }

    #[test]
    fn calls_are_spaced_by_the_interval_without_saving_idle_time() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(next_start(None, t0, ms(5)), t0);
        // Asked right after the last start: one interval after it.
        assert_eq!(next_start(Some(t0), t0 + ms(1), ms(5)), t0 + ms(5));
        // Asked long after: at once, and no more than one at once.
        let late = t0 + ms(1_000);
        assert_eq!(next_start(Some(t0), late, ms(5)), late);
        assert_eq!(next_start(Some(late), late, ms(5)), late + ms(5));
    }

    fn limiter(per_second: u32, live: watch::Receiver<usize>) -> (Arc<Limiter>, Counter) {
        let waited = Counter::new("waited", "waited").unwrap();
        let limiter = Limiter {
            per_second: f64::from(per_second),
            presence: None,
            live,
            last: Mutex::new(None),
            waited: waited.clone(),
        };
        (Arc::new(limiter), waited)
    }

    /// Starts `n` calls at once; when each was let start.
    async fn starts(limiter: &Arc<Limiter>, n: usize) -> Vec<Instant> {
        futures::future::join_all((0..n).map(|_| async {
            limiter.wait().await;
            Instant::now()
        }))
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_limiter_starts_calls_at_its_rate_and_counts_the_wait() {
        let (_count, live) = watch::channel(1);
        let (limiter, waited) = limiter(100, live);
        let t0 = Instant::now();
        let starts = starts(&limiter, 50).await;
        for (i, start) in starts.iter().enumerate() {
            assert_eq!(
                start.duration_since(t0),
                Duration::from_millis(10 * i as u64)
            );
        }
        // Waited: 0 + 10 + 20 + ... + 490 ms.
        let expected = (0..50).map(|i| 0.01 * f64::from(i)).sum::<f64>();
        assert!((waited.get() - expected).abs() < 1e-6, "{}", waited.get());
    }

    #[tokio::test(start_paused = true)]
    async fn a_limiter_follows_the_live_count_at_once() {
        let (count, live) = watch::channel(1);
        let (limiter, _) = limiter(100, live);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let calls = tokio::spawn({
            let limiter = limiter.clone();
            async move { starts(&limiter, 6).await }
        });
        // A second replica joins 12 ms in, while the call due at 20 ms
        // waits: it is now due 20 ms after the one at 10 ms.
        tokio::time::sleep(ms(12)).await;
        count.send_replace(2);
        // It leaves again after the call at 50 ms.
        tokio::time::sleep(ms(40)).await;
        count.send_replace(1);
        let starts: Vec<_> = calls.await.unwrap();
        let offsets: Vec<_> = starts.iter().map(|s| s.duration_since(t0)).collect();
        assert_eq!(offsets, [0, 10, 30, 50, 60, 70].map(ms));
    }
}
