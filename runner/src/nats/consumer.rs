//! The durable pull consumer of each function: named after the function,
//! filtered to its subjects, created or updated to match the config.

use anyhow::{bail, Context as _};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::Context;
use jetrun_config::FunctionConfig;

/// How jetrun's consumers describe themselves, so it can tell one it did
/// not make.
const DESCRIPTION: &str = "jetrun function";

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
        description: Some(format!("{DESCRIPTION} {}", function.name)),
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
        let theirs = &existing.config;
        if !theirs
            .description
            .as_deref()
            .unwrap_or("")
            .starts_with(DESCRIPTION)
        {
            bail!(
                "consumer {} on stream {} exists and was not made by jetrun ({}); \
                 jetrun will not take it over: rename the function, or delete the consumer \
                 (`nats consumer rm {} {}`) if nothing else uses it",
                function.name,
                function.stream,
                theirs.description.as_deref().unwrap_or("no description"),
                function.stream,
                function.name,
            );
        }
        let filters = |one: &str, many: &[String]| {
            let mut all = many.to_vec();
            if !one.is_empty() {
                all.push(one.to_string());
            }
            all.sort();
            all
        };
        let was = filters(&theirs.filter_subject, &theirs.filter_subjects);
        let now = filters(&want.filter_subject, &want.filter_subjects);
        if was != now {
            tracing::warn!(
                function = %function.name,
                ?was,
                ?now,
                "The consumer's subjects change. If another jetrun config uses a function of \
                 this name on this stream, the two now fight over one consumer: rename one."
            );
        }
        // The deliver policy of an existing consumer cannot change; keep it.
        want.deliver_policy = theirs.deliver_policy;
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
