//! Every consumer jetrun makes, in one place: the durable pull consumers it
//! owns (one per stream function, one per saga and stream), created or
//! updated to match the config, and the ordered ephemeral readers that read
//! a stream's history (`jetrun events`, `jetrun replay`, projection rebuilds,
//! aggregate loads) without touching any durable consumer.

use anyhow::{bail, Context as _};
use async_nats::jetstream::consumer::pull::{self, OrderedConfig};
use async_nats::jetstream::consumer::{
    AckPolicy, Consumer, DeliverPolicy, PriorityPolicy, PullConsumer,
};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::Context;
use jetrun_config::StreamBinding;

/// How jetrun's durable consumers begin their description, so it can tell
/// one it did not make.
const OWNED: &str = "jetrun ";

/// A durable consumer jetrun owns: its binding (stream, subjects, ack wait,
/// max ack pending) and who it serves (`function NAME`, `saga NAME`), which
/// goes into its description.
pub(crate) struct Durable<'a> {
    pub(crate) binding: &'a StreamBinding,
    pub(crate) serves: String,
    /// A partition of a keyed function: the consumer pins one client at a
    /// time (a priority group in pinned-client mode, [`PIN_GROUP`]).
    pub(crate) pinned: bool,
}

/// The priority group every pull on a pinned consumer names.
pub(crate) const PIN_GROUP: &str = "jetrun";

/// How long a pinned client keeps its pin without pulling: the failover
/// time after a runner dies. jetrun's pulls on a pinned consumer never
/// leave a gap of more than a few seconds.
pub(crate) const PIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A consumer's subjects as JetStream takes them: one filter, or several.
fn filters(subjects: &[String]) -> (String, Vec<String>) {
    match subjects {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    }
}

/// When a stream was created (Unix nanoseconds): a stream deleted and made
/// again starts its sequences over, and this tells the two apart.
pub(crate) fn created_ns(info: &async_nats::jetstream::stream::Info) -> u64 {
    u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0)
}

/// Where a consumer stood when last seen: on which stream (its creation
/// time) and up to which sequence every message was acked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Floor {
    pub(crate) stream_created: u64,
    pub(crate) ack_floor: u64,
}

/// A bound consumer and where it stands now.
pub(crate) struct Bound {
    pub(crate) consumer: PullConsumer,
    pub(crate) floor: Floor,
}

impl Durable<'_> {
    /// The consumer's config. `start` is where a consumer that has to be made
    /// anew begins: the whole stream for a new one, or just past the last ack
    /// floor seen when one deleted behind jetrun's back is made again.
    fn config(&self, start: DeliverPolicy) -> pull::Config {
        let binding = self.binding;
        let (filter_subject, filter_subjects) = filters(&binding.subjects);
        pull::Config {
            durable_name: Some(binding.consumer.clone()),
            description: Some(format!("{OWNED}{}", self.serves)),
            filter_subject,
            filter_subjects,
            deliver_policy: start,
            ack_policy: AckPolicy::Explicit,
            ack_wait: binding.ack_wait,
            // Unlimited: the runner counts attempts itself and dead-letters the
            // last one. A server-side limit would silently stop redelivering an
            // event whose last attempt died with its runner.
            max_deliver: -1,
            max_ack_pending: binding.max_ack_pending,
            priority_policy: if self.pinned {
                PriorityPolicy::PinnedClient
            } else {
                PriorityPolicy::None
            },
            priority_groups: if self.pinned {
                vec![PIN_GROUP.to_string()]
            } else {
                Vec::new()
            },
            priority_timeout: if self.pinned {
                PIN_TIMEOUT
            } else {
                std::time::Duration::ZERO
            },
            ..Default::default()
        }
    }

    /// Binds the consumer: creates it when missing, updates it when its
    /// settings (subjects included) differ. One that has to be made anew
    /// starts just past `seen`, the floor this process last saw, when its
    /// stream is the same one; at the stream's beginning when there is none,
    /// or when the stream was deleted and made again since (its sequences
    /// started over).
    pub(crate) async fn bind(&self, js: &Context, seen: Option<Floor>) -> anyhow::Result<Bound> {
        let binding = self.binding;
        let (stream_name, name) = (&binding.stream, &binding.consumer);
        let stream = js
            .get_stream(stream_name)
            .await
            .with_context(|| format!("cannot find stream {stream_name} for {}", self.serves))?;
        let stream_created = created_ns(stream.cached_info());
        let start = match seen {
            Some(seen) if seen.stream_created == stream_created && seen.ack_floor > 0 => {
                DeliverPolicy::ByStartSequence {
                    start_sequence: seen.ack_floor + 1,
                }
            }
            Some(seen) if seen.stream_created != stream_created => {
                tracing::warn!(
                    stream = %stream_name,
                    consumer = %name,
                    "The stream was deleted and made again since the consumer was bound; its \
                     sequences started over, so a consumer made anew starts at its beginning."
                );
                DeliverPolicy::All
            }
            _ => DeliverPolicy::All,
        };
        let mut want = self.config(start);
        if let Ok(existing) = stream.consumer_info(name).await {
            let theirs = &existing.config;
            let description = theirs.description.as_deref().unwrap_or("");
            if !description.starts_with(OWNED) {
                bail!(
                    "consumer {name} on stream {stream_name} exists and was not made by jetrun \
                     ({}); jetrun will not take it over: rename the function, or delete the \
                     consumer (`nats consumer rm {stream_name} {name}`) if nothing else uses it",
                    if description.is_empty() {
                        "no description"
                    } else {
                        description
                    },
                );
            }
            let all = |one: &str, many: &[String]| {
                let mut all = many.to_vec();
                if !one.is_empty() {
                    all.push(one.to_string());
                }
                all.sort();
                all
            };
            let was = all(&theirs.filter_subject, &theirs.filter_subjects);
            let now = all(&want.filter_subject, &want.filter_subjects);
            if was != now {
                tracing::warn!(
                    consumer = %name,
                    ?was,
                    ?now,
                    "The consumer's subjects change. If another jetrun config runs a consumer of \
                     this name on this stream, the two now fight over one consumer: rename one."
                );
            }
            // The deliver policy of an existing consumer cannot change; keep it.
            want.deliver_policy = theirs.deliver_policy;
        } else if seen.is_none() {
            // Made anew with no floor seen by this process: a new function's,
            // or one deleted while no runner was running. Both start at the
            // stream's beginning; say how much that is.
            let held = stream.cached_info().state.messages;
            if held > 0 {
                tracing::warn!(
                    stream = %stream_name,
                    consumer = %name,
                    subjects = ?binding.subjects,
                    stream_messages = held,
                    "Creating the consumer; it starts at the beginning of its stream, so every \
                     event already stored on its subjects is delivered (again, if a consumer of \
                     this name was deleted while no runner was running). To start elsewhere, \
                     create it first: see docs/RELIABILITY.md."
                );
            }
        }
        let consumer = stream
            .create_consumer(want)
            .await
            .with_context(|| format!("cannot bind consumer {name} on stream {stream_name}"))?;
        let floor = Floor {
            stream_created,
            ack_floor: consumer.cached_info().ack_floor.stream_sequence,
        };
        Ok(Bound { consumer, floor })
    }
}

/// An ordered ephemeral reader of a stream's messages on some subjects, from
/// a start on: it leaves every durable consumer alone. `describes` names it
/// for whoever lists the stream's consumers meanwhile.
pub(crate) struct Reader<'a> {
    pub(crate) stream: &'a str,
    pub(crate) subjects: &'a [String],
    pub(crate) start: DeliverPolicy,
    pub(crate) describes: &'a str,
}

impl Reader<'_> {
    pub(crate) async fn open(&self, js: &Context) -> anyhow::Result<Consumer<OrderedConfig>> {
        let (filter_subject, filter_subjects) = filters(self.subjects);
        let stream = js
            .get_stream_no_info(self.stream)
            .await
            .with_context(|| format!("cannot read stream {}", self.stream))?;
        stream
            .create_consumer(OrderedConfig {
                description: Some(self.describes.to_string()),
                filter_subject,
                filter_subjects,
                deliver_policy: self.start,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot read stream {}", self.stream))
    }
}

/// Whether a consumer-info error says the consumer is gone (with its
/// stream, or alone).
pub(crate) fn is_consumer_not_found(
    err: &async_nats::jetstream::context::ConsumerInfoError,
) -> bool {
    matches!(
        err.kind(),
        ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
    )
}
