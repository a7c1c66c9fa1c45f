//! Running one durable consumer, for a stream function or one of a saga's
//! streams alike: binding it (and binding it again when it is deleted behind
//! jetrun's back), pulling its messages within the concurrency limit,
//! calling the handler stack for each, publishing what it emitted, and
//! settling each message: an ack, a NAK delayed by the retry policy, or a
//! dead letter followed by `+TERM`. A drain stops pulling and lets what is
//! in flight finish; an abandoned drain NAKs what is left.
//!
//! - [`consumer`]: binding, the monitor (backlog gauges, ack floor,
//!   deletion) and the loop that binds again;
//! - [`pull`]: pulls as handler slots free up;
//! - [`deliver`]: one message from its envelope to its outcome;
//! - [`settle`]: the outcome to an ack, a NAK or a dead letter;
//! - [`retry`]: which of those (pure);
//! - [`dead_letter`]: a dead letter's headers and its publish.

mod batch;
mod consumer;
mod dead_letter;
mod deliver;
mod order;
mod partition;
mod pull;
mod retry;
mod settle;

use std::sync::Arc;

use async_nats::jetstream;
use jetrun_config::{BatchConfig, KeyConfig, RetryPolicy, StreamBinding};
use jetrun_functions::Function;

use crate::emit::Emitter;
use crate::flow::presence::Presence;
use crate::flow::rate::Limiter;
use crate::metrics::FunctionMetrics;
use crate::readiness::Readiness;
use crate::shutdown::Shutdown;

/// One durable consumer's work: a stream function's, or a saga's on one of
/// the streams holding its inputs.
pub(crate) struct Unit {
    /// How logs, metrics (`function` label) and `/readyz` name it: the
    /// function's name, or `saga-NAME@STREAM`.
    pub(crate) name: String,
    /// Who the consumer serves, for its description: `function NAME`, `saga NAME`.
    pub(crate) serves: String,
    pub(crate) binding: StreamBinding,
    pub(crate) retry: RetryPolicy,
    /// Messages handled at once in this process.
    pub(crate) concurrency: usize,
    /// `key`: the events of one key one at a time, in stream order.
    pub(crate) key: Option<KeyConfig>,
    /// `batch`: up to `size` events per handler call.
    pub(crate) batch: Option<BatchConfig>,
}

/// What one unit's deliveries share.
pub(crate) struct Shared {
    pub(crate) unit: Unit,
    /// The handler with its layers around it.
    pub(crate) handler: Arc<dyn Function>,
    /// Publishes what the handler emits; `None` for a handler that emits
    /// nothing (a saga publishes what it decides itself).
    pub(crate) emitter: Option<Emitter>,
    pub(crate) js: jetstream::Context,
    pub(crate) metrics: FunctionMetrics,
    /// This process among the function's live replicas (a function with
    /// `key` or `rate`; `None` otherwise).
    pub(crate) presence: Option<Presence>,
    /// `rate`: paces the handler calls of this replica.
    pub(crate) rate: Option<Limiter>,
}

/// Runs `shared.unit`'s consumer until `shutdown` drains it and every
/// message in flight has been settled (or abandoned and NAKed). Run under
/// `tasks::spawn`, which starts it again should it end early.
pub(crate) async fn run(shared: Arc<Shared>, readiness: Readiness, shutdown: Shutdown) {
    consumer::run(shared, readiness, shutdown).await;
}

#[cfg(test)]
mod tests {
    //! The whole path a message takes through jetrun's header handling, fuzzed:
    //! a raw header block (as the patched client hands it over: parsed, or
    //! carried raw when it cannot be read) and a body, read as an event, then
    //! the headers of what handling it makes (an emitted event with a type a
    //! handler chose, and the dead letter). Nothing panics, and no header
    //! jetrun builds carries a CR or LF.

    use std::str::FromStr;
    use std::time::SystemTime;

    use async_nats::connection::UNREADABLE_HEADERS;
    use async_nats::header::{HeaderName, HeaderValue};
    use async_nats::HeaderMap;
    use base64::prelude::{Engine, BASE64_STANDARD};
    use bytes::Bytes;
    use jetrun_functions::Emit;
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::dead_letter::DeadLetter;
    use super::retry::Reason;
    use crate::envelope::{self, Origin};

    /// Headers off the wire: each line read as the client reads it, or, when
    /// one cannot be, the whole block carried raw (vendor/async-nats/PATCHED.md).
    fn off_the_wire(lines: &[(String, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            match (
                HeaderName::from_str(name),
                HeaderValue::from_str(value.trim()),
            ) {
                (Ok(name), Ok(value)) => map.append(name, value),
                _ => {
                    let mut raw = b"NATS/1.0\r\n".to_vec();
                    for (name, value) in lines {
                        raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                    }
                    let mut map = HeaderMap::new();
                    map.insert(UNREADABLE_HEADERS, BASE64_STANDARD.encode(raw).as_str());
                    return map;
                }
            }
        }
        map
    }

    fn clean(headers: &HeaderMap) -> bool {
        headers
            .iter()
            .all(|(_, values)| values.iter().all(|v| !v.as_str().contains(['\r', '\n'])))
    }

    fn line() -> impl Strategy<Value = (String, String)> {
        let name = prop_oneof![
            3 => proptest::sample::select(&["ce-id", "ce-type", "ce-source", "ce-specversion",
                "ce-correlationid", "ce-causationid", "traceparent", "Nats-Msg-Id", "Nats-TTL",
                "Nats-Expected-Stream", "content-type"][..]).prop_map(str::to_owned),
            1 => ".{0,12}",
        ];
        let value = prop_oneof![
            3 => "[ -~]{0,24}",
            1 => ".{0,24}",
            1 => Just("a\nb".to_string()),
            1 => Just("1.0".to_string()),
        ];
        (name, value)
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            vec(any::<u8>(), 0..128),
            (".{0,16}", ".{0,16}").prop_map(|(id, correlation)| {
                serde_json::to_vec(&serde_json::json!({
                    "event_type": "ev.in", "data": {}, "event_id": id,
                    "correlation_id": correlation,
                }))
                .unwrap()
            }),
            (".{0,16}", ".{0,16}").prop_map(|(id, ty)| {
                serde_json::to_vec(&serde_json::json!({
                    "specversion": "1.0", "id": id, "type": ty, "source": "s", "data": 1,
                }))
                .unwrap()
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn any_message_reaches_emitted_and_dead_letter_headers_without_a_panic(
            lines in vec(line(), 0..8),
            body in body(),
            emitted_type in prop_oneof![3 => "[a-z.]{1,12}", 1 => ".{0,12}"],
            error in ".{0,64}",
        ) {
            let headers = off_the_wire(&lines);
            let origin = Origin {
                subject: "ev.in",
                stream: "EVENTS",
                sequence: 7,
                published: SystemTime::UNIX_EPOCH,
            };
            let body = Bytes::from(body);
            if let Ok(event) = envelope::read_event(&origin, Some(&headers), &body) {
                let emit = Emit::new(emitted_type, serde_json::json!({}));
                let id = envelope::emitted_id("f", &event, 0);
                if let Ok(out) = envelope::emitted_headers("f", &event, &id, &emit, None) {
                    prop_assert!(clean(&out), "{out:?}");
                }
            }
            let letter = DeadLetter {
                function: "f",
                reason: Reason::Permanent,
                error: &error,
                attempts: 1,
                subject: "ev.in",
                stream: "EVENTS",
                stream_created: 1,
                sequence: 7,
                failed_at: SystemTime::UNIX_EPOCH,
            };
            let dead = letter.headers(Some(&headers));
            prop_assert!(dead.is_ok(), "{dead:?}");
            let dead = dead.unwrap();
            prop_assert!(clean(&dead));
            let directives = dead
                .iter()
                .filter(|(name, _)| {
                    let name: &str = name.as_ref();
                    name.to_ascii_lowercase().starts_with("nats-") && name != "Nats-Msg-Id"
                })
                .count();
            prop_assert_eq!(directives, 0, "{:?}", dead);
        }
    }
}
