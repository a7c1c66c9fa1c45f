//! The durable pull consumer of each function: named after the function,
//! filtered to its subjects, created or updated to match the config.

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::Context;
use jetrun_config::FunctionConfig;

/// The consumer a function wants. `start` is where a consumer that has to be
/// made anew begins: the whole stream for a new function, or just past the
/// last ack floor the runner saw when it recreates one deleted behind its back.
fn consumer_config(function: &FunctionConfig, start: DeliverPolicy) -> pull::Config {
    let (filter_subject, filter_subjects) = match function.subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    pull::Config {
        durable_name: Some(function.name.clone()),
        description: Some(format!("jetrun function {}", function.name)),
        filter_subject,
        filter_subjects,
        deliver_policy: start,
        ack_policy: AckPolicy::Explicit,
        ack_wait: function.ack_wait,
        // Unlimited: the runner counts attempts itself and dead-letters the
        // last one. A server-side limit would silently stop redelivering an
        // event whose last attempt died with its runner.
        max_deliver: -1,
        max_ack_pending: function.max_ack_pending,
        ..Default::default()
    }
}

/// Binds the function's durable consumer: creates it when missing, updates it
/// when its settings differ. The deliver policy only matters for a new one.
pub(crate) async fn bind(
    js: &Context,
    function: &FunctionConfig,
    start: DeliverPolicy,
) -> anyhow::Result<PullConsumer> {
    let stream = js.get_stream(&function.stream).await.with_context(|| {
        format!(
            "cannot find stream {} for function {}",
            function.stream, function.name
        )
    })?;
    let mut want = consumer_config(function, start);
    if let Ok(existing) = stream.consumer_info(&function.name).await {
        // The deliver policy of an existing consumer cannot change; keep it.
        want.deliver_policy = existing.config.deliver_policy;
    }
    stream.create_consumer(want).await.with_context(|| {
        format!(
            "cannot bind consumer {} on stream {}",
            function.name, function.stream
        )
    })
}

/// Whether a consumer-info error says the consumer is gone.
pub(crate) fn is_consumer_not_found(
    err: &async_nats::jetstream::context::ConsumerInfoError,
) -> bool {
    matches!(err.kind(), ConsumerInfoErrorKind::NotFound)
}
