//! A diagnostic (`--count-pulls`): the pull requests a durable consumer sends
//! and the batch each asks for, seen by a plain subscription to
//! `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`. The server copies every
//! request to it, which costs a little CPU, so it is off by default.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::harness::Harness;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub(crate) struct PullStats {
    pub(crate) requests: u64,
    /// The mean `batch` the requests asked for.
    pub(crate) mean_batch: f64,
}

pub(crate) struct PullCounter {
    task: JoinHandle<()>,
    /// (requests, sum of their batches).
    seen: Arc<Mutex<(u64, u64)>>,
}

#[derive(Deserialize)]
struct PullRequest {
    #[serde(default = "one")]
    batch: u64,
}

fn one() -> u64 {
    1
}

impl PullCounter {
    pub(crate) async fn start(
        harness: &Harness,
        stream: &str,
        durable: &str,
    ) -> anyhow::Result<Self> {
        let client = harness.connect().await?;
        let subject = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}");
        let mut subscription = client
            .subscribe(subject.clone())
            .await
            .with_context(|| format!("subscribe to {subject}"))?;
        client
            .flush()
            .await
            .context("flush the pull subscription")?;
        let seen: Arc<Mutex<(u64, u64)>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Some(message) = subscription.next().await {
                let batch = batch_of(&message.payload);
                if let Ok(mut seen) = record.lock() {
                    seen.0 += 1;
                    seen.1 += batch;
                }
            }
        });
        Ok(PullCounter { task, seen })
    }

    pub(crate) fn finish(self) -> PullStats {
        self.task.abort();
        let (requests, batches) = self.seen.lock().map(|s| *s).unwrap_or_default();
        PullStats {
            requests,
            mean_batch: match requests {
                0 => 0.0,
                n => batches as f64 / n as f64,
            },
        }
    }
}

/// A pull request's batch: its JSON's `batch`, 1 when absent; an empty
/// payload asks for one message.
fn batch_of(payload: &[u8]) -> u64 {
    serde_json::from_slice::<PullRequest>(payload).map_or(1, |r| r.batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_requests_give_their_batch() {
        assert_eq!(batch_of(br#"{"batch":256,"expires":5000000000}"#), 256);
        assert_eq!(batch_of(br#"{"expires":5000000000}"#), 1);
        assert_eq!(batch_of(b""), 1);
    }
}
