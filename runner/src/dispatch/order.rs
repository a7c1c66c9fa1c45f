//! The order of the events of one key, within one partition this runner is
//! pinned on: one event of a key at a time, the next only once the one
//! before is settled for good (acked or dead-lettered). A retrying event
//! holds its key until its redelivery is handled; the events behind it wait
//! here, kept alive with in-progress acks, in stream order.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::flow::key::Key;

/// How a delivery of a keyed event ended, as its key sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    /// Acked, dead-lettered, or given back at shutdown: the key moves on.
    Done,
    /// NAKed to be redelivered after this delay: the key waits for it.
    Retrying(Duration),
}

/// One key's state.
#[derive(Debug)]
struct KeyState<T> {
    /// The stream sequence of the event holding the key (running, or
    /// waiting for its redelivery).
    head: u64,
    /// When the head's redelivery is due, while it is retrying.
    retry_at: Option<Instant>,
    /// The events behind it, in the order they arrived (stream order).
    waiting: VecDeque<(u64, T)>,
}

/// What to do with an event that arrived.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit<T> {
    /// Its key is free (or it is the redelivery of the key's head): start it.
    Start(T),
    /// Its key is held: it waits (kept here).
    Wait,
    /// It is the key's head, running now: a second delivery of it, dropped.
    Running,
}

/// The keys of one partition with an event running, retrying or waiting.
#[derive(Debug)]
pub(super) struct Order<T> {
    keys: HashMap<Key, KeyState<T>>,
    /// Events waiting behind their key, across keys.
    waiting: usize,
}

impl<T> Default for Order<T> {
    fn default() -> Self {
        Order {
            keys: HashMap::new(),
            waiting: 0,
        }
    }
}

impl<T> Order<T> {
    /// An event of `key` at `sequence` arrived.
    pub(super) fn admit(&mut self, key: &Key, sequence: u64, item: T) -> Admit<T> {
        match self.keys.get_mut(key) {
            None => {
                self.keys.insert(
                    key.clone(),
                    KeyState {
                        head: sequence,
                        retry_at: None,
                        waiting: VecDeque::new(),
                    },
                );
                Admit::Start(item)
            }
            Some(state) if state.head == sequence && state.retry_at.is_some() => {
                // The head again: its redelivery after a retry.
                state.retry_at = None;
                Admit::Start(item)
            }
            // The head again while it runs (its in-progress acks were late):
            // the run under way settles it.
            Some(state) if state.head == sequence => Admit::Running,
            Some(state) => {
                if let Some(place) = state.waiting.iter_mut().find(|(s, _)| *s == sequence) {
                    // Delivered again while waiting (its in-progress acks
                    // were late): keep the newest delivery, in its place.
                    place.1 = item;
                } else {
                    state.waiting.push_back((sequence, item));
                    self.waiting += 1;
                }
                Admit::Wait
            }
        }
    }

    /// The event of `key` at `sequence` was settled: the next event of the
    /// key, when it is free now.
    pub(super) fn settled(&mut self, key: &Key, sequence: u64, settled: Settled) -> Option<T> {
        let state = self.keys.get_mut(key)?;
        if state.head != sequence {
            return None;
        }
        match settled {
            Settled::Retrying(delay) => {
                state.retry_at = Some(Instant::now() + delay);
                None
            }
            Settled::Done => match state.waiting.pop_front() {
                Some((next, item)) => {
                    self.waiting -= 1;
                    state.head = next;
                    state.retry_at = None;
                    Some(item)
                }
                None => {
                    self.keys.remove(key);
                    None
                }
            },
        }
    }

    /// Events waiting behind their key.
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Whether no key is held (nothing running, retrying or waiting).
    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every waiting event, for in-progress acks.
    pub(super) fn waiting_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.keys
            .values_mut()
            .flat_map(|state| state.waiting.iter_mut().map(|(_, item)| item))
    }

    /// Lets go of the keys whose head is retrying (this runner stops
    /// pulling: the redelivery will go to whoever pulls next): their
    /// waiting events, each with how long to wait before it is redelivered
    /// so that it comes back after its head (the head's remaining delay,
    /// plus a step per place in line).
    pub(super) fn release_retrying(&mut self) -> Vec<(T, Duration)> {
        let now = Instant::now();
        let mut released = Vec::new();
        self.keys.retain(|_, state| {
            let Some(retry_at) = state.retry_at else {
                return true;
            };
            let base = retry_at.saturating_duration_since(now);
            for (place, (_, item)) in state.waiting.drain(..).enumerate() {
                released.push((item, base + RELEASE_STEP * (place as u32 + 1)));
            }
            false
        });
        self.waiting -= released.len();
        released
    }

    /// Every waiting event, the keys' heads kept (what runs still holds
    /// its key).
    pub(super) fn release_waiting(&mut self) -> Vec<T> {
        self.waiting = 0;
        let mut released = Vec::new();
        self.keys.retain(|_, state| {
            released.extend(state.waiting.drain(..).map(|(_, item)| item));
            // A retrying head is not coming back here.
            state.retry_at.is_none()
        });
        released
    }

    /// The keys whose retrying head is `grace` past its redelivery time
    /// and has not come back.
    pub(super) fn overdue(&self, grace: Duration) -> Vec<(Key, u64)> {
        let now = Instant::now();
        self.keys
            .iter()
            .filter(|(_, state)| state.retry_at.is_some_and(|at| now > at + grace))
            .map(|(key, state)| (key.clone(), state.head))
            .collect()
    }

    /// Lets go of every key: all waiting events.
    pub(super) fn release_all(&mut self) -> Vec<T> {
        self.waiting = 0;
        self.keys
            .drain()
            .flat_map(|(_, state)| state.waiting.into_iter().map(|(_, item)| item))
            .collect()
    }
}

/// How much later than the one before it each released event is
/// redelivered.
const RELEASE_STEP: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Key {
        Key::for_tests(k)
    }

    #[test]
    fn one_event_of_a_key_at_a_time_in_order() {
        let mut order = Order::default();
        assert_eq!(order.admit(&key("a"), 1, "a1"), Admit::Start("a1"));
        assert_eq!(order.admit(&key("b"), 2, "b2"), Admit::Start("b2"));
        assert_eq!(order.admit(&key("a"), 3, "a3"), Admit::Wait);
        assert_eq!(order.admit(&key("a"), 4, "a4"), Admit::Wait);
        assert_eq!(order.waiting(), 2);
        assert_eq!(order.settled(&key("a"), 1, Settled::Done), Some("a3"));
        assert_eq!(order.settled(&key("b"), 2, Settled::Done), None);
        assert_eq!(order.settled(&key("a"), 3, Settled::Done), Some("a4"));
        assert_eq!(order.settled(&key("a"), 4, Settled::Done), None);
        assert!(order.is_empty());
        assert_eq!(order.waiting(), 0);
    }

    #[test]
    fn a_retrying_event_holds_its_key_until_its_redelivery_is_settled() {
        let mut order = Order::default();
        assert_eq!(order.admit(&key("a"), 1, "a1"), Admit::Start("a1"));
        assert_eq!(order.admit(&key("a"), 2, "a2"), Admit::Wait);
        let delay = Duration::from_secs(1);
        assert_eq!(order.settled(&key("a"), 1, Settled::Retrying(delay)), None);
        assert_eq!(order.admit(&key("a"), 3, "a3"), Admit::Wait);
        // The redelivery of the head starts at once.
        assert_eq!(
            order.admit(&key("a"), 1, "a1 again"),
            Admit::Start("a1 again")
        );
        assert_eq!(order.settled(&key("a"), 1, Settled::Done), Some("a2"));
        // A late redelivery of a waiting event replaces it in its place.
        assert_eq!(order.admit(&key("a"), 3, "a3 again"), Admit::Wait);
        assert_eq!(order.waiting(), 1);
        assert_eq!(order.settled(&key("a"), 2, Settled::Done), Some("a3 again"));
    }

    #[test]
    fn giving_back_keeps_the_running_heads_and_a_lost_retry_frees_its_key() {
        let mut order = Order::default();
        order.admit(&key("a"), 1, "a1");
        order.admit(&key("a"), 2, "a2");
        order.admit(&key("b"), 3, "b3");
        order.admit(&key("b"), 4, "b4");
        order.settled(&key("b"), 3, Settled::Retrying(Duration::ZERO));
        let mut released = order.release_waiting();
        released.sort();
        assert_eq!(released, vec!["a2", "b4"]);
        assert_eq!(order.waiting(), 0);
        // a's head still runs: a new event of a waits.
        assert_eq!(order.admit(&key("a"), 5, "a5"), Admit::Wait);
        // b's retrying head went with the partition.
        assert_eq!(order.admit(&key("b"), 6, "b6"), Admit::Start("b6"));
        order.settled(&key("b"), 6, Settled::Retrying(Duration::ZERO));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(order.overdue(Duration::from_millis(1)), vec![(key("b"), 6)]);
        assert!(order.overdue(Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn released_events_come_back_after_their_retrying_head() {
        let mut order = Order::default();
        order.admit(&key("a"), 1, "a1");
        order.admit(&key("a"), 2, "a2");
        order.admit(&key("a"), 3, "a3");
        order.admit(&key("b"), 4, "b4");
        order.admit(&key("b"), 5, "b5");
        order.settled(&key("a"), 1, Settled::Retrying(Duration::from_secs(2)));
        let released = order.release_retrying();
        assert_eq!(released.len(), 2);
        assert!(released[0].1 > Duration::from_millis(1900) && released[0].1 < released[1].1);
        assert_eq!(order.waiting(), 1, "b is running, not retrying: kept");
        assert_eq!(order.release_all(), vec!["b5"]);
        assert!(order.is_empty());
    }
}
