//! `jetrun projection rebuild FUNCTION`: a projection's read model built
//! again from its stream, by the same wrapped handler a live delivery runs
//! (`handler::build` + `eventsourcing::wrap`), reading the stream with an
//! ephemeral ordered consumer.
//!
//! A rebuild fills a new bucket (`<bucket>_<n>`) aside, reading the stream
//! in passes, while readers keep the old one. Then it pauses the function's
//! durable consumer, applies what the live function handled meanwhile (up
//! to the consumer's last delivered sequence; the per-key applied sequence
//! makes an event applied twice a no-op), moves the pointer
//! (`jetrun_projections`), waits for every reader to follow it and resumes
//! the consumer. The old bucket is deleted, unless `--keep-old`. Key
//! `<bucket>.rebuild` of `jetrun_projections` marks a rebuild in progress:
//! a second one is refused.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::{self, stream};
use clap::Subcommand;
use jetrun_config::{Config, FunctionConfig, ProjectionConfig, Role, StreamBinding};
use jetrun_functions::{Context, Function};
use serde_json::{json, Value};

use super::args::FunctionArg;
use super::session::{self, Stopped};
use crate::eventsourcing::projection;
use crate::layers;
use crate::metrics::Metrics;
use crate::nats::{self, History, Item, Start};

/// `jetrun projection --help`'s examples.
pub(crate) const EXAMPLES: &str = "\
Examples:
  jetrun projection rebuild order_summary -c config/examples/orders-cqrs.toml

`nats kv get jetrun_projections BUCKET` names the bucket a projection's
readers use after a rebuild (none: the configured bucket itself).";

const REBUILD_EXAMPLES: &str = "\
Examples:
  jetrun projection rebuild order_summary -c config/examples/orders-cqrs.toml
  jetrun projection rebuild order_summary --keep-old -c config/examples/orders-cqrs.toml

The function's events are applied in stream order to a new KV bucket,
<bucket>_<n>, while readers (the running function and its queries) keep
using the current one; once it has caught up, the pointer
jetrun_projections.<bucket> moves to it. One rebuild of a bucket at a time:
while one runs, key <bucket>.rebuild of jetrun_projections says so and a
second one is refused.";

/// A rebuild reads the stream in passes, each up to the stream's last
/// sequence when it starts, until at most [`PAUSED_CATCH_UP`] events are
/// left or after this many passes; what is left it applies with the live
/// consumer paused.
const MAX_PASSES: u32 = 5;

/// Events a rebuild leaves for the catch-up under the pause.
const PAUSED_CATCH_UP: u64 = 100;

/// How long a rebuild pauses the live function's consumer at most: the
/// server resumes it by itself then, should the rebuild die.
const PAUSE_LIMIT: Duration = Duration::from_secs(60);

/// Time kept in hand before the pause ends.
const PAUSE_MARGIN: Duration = Duration::from_secs(5);

/// A progress line every this many events.
const PROGRESS_EVERY: u64 = 1000;

/// The arguments of `jetrun projection`.
#[derive(clap::Args)]
pub(crate) struct ProjectionArgs {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Build a projection's read model again into a new bucket, and switch
    /// readers to it once it has caught up.
    ///
    /// Queries never see a half-built model: they read the old bucket until
    /// the new one holds every event of the stream. Prints the new bucket.
    #[command(after_help = REBUILD_EXAMPLES)]
    Rebuild(RebuildArgs),
}

#[derive(clap::Args)]
struct RebuildArgs {
    #[command(flatten)]
    target: FunctionArg,
    /// Keep the bucket readers used before (it is deleted otherwise).
    #[arg(long)]
    keep_old: bool,
    /// Print the outcome as a JSON object on stdout (progress goes to
    /// stderr).
    #[arg(long)]
    json: bool,
}

/// Where a rebuild's progress lines go: stdout, or stderr under `--json`.
#[derive(Debug, Clone, Copy)]
struct Say {
    json: bool,
}

impl Say {
    fn line(self, text: std::fmt::Arguments<'_>) {
        match self.json {
            true => eprintln!("{text}"),
            false => println!("{text}"),
        }
    }
}

/// A progress line of a rebuild, through [`Say`].
macro_rules! say {
    ($say:expr, $($arg:tt)*) => {
        $say.line(format_args!($($arg)*))
    };
}

/// What a finished rebuild did.
struct Rebuilt {
    bucket: String,
    /// The bucket readers used before, when there was one.
    old: Option<String>,
    kept_old: bool,
    counts: Counts,
}

/// Runs `jetrun projection VERB`.
pub(crate) async fn projection(args: ProjectionArgs) -> ExitCode {
    let Verb::Rebuild(rebuild_args) = &args.verb;
    let target = &rebuild_args.target;
    let loaded = match session::load(&target.config.path()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    session::exit(
        async {
            let config = &loaded.config;
            session::function(config, &target.config.path(), &target.function)?;
            let (function, handler) = session::handler(&loaded, &target.function)?;
            let (projection, binding) = projection_of(config, function)
                .map_err(|err| Stopped::Usage(format!("{err:#}")))?;
            let js = session::connect(&config.nats).await?;
            let target = Target {
                function,
                binding,
                projection,
            };
            let say = Say {
                json: rebuild_args.json,
            };
            let rebuilt =
                rebuild(&js, &target, handler.clone(), rebuild_args.keep_old, say).await?;
            if say.json {
                let counts = rebuilt.counts;
                let outcome = json!({
                    "function": function.name,
                    "projection": target.projection.bucket,
                    "bucket": rebuilt.bucket,
                    "old_bucket": rebuilt.old,
                    "kept_old": rebuilt.kept_old,
                    "events": counts.events(),
                    "stored": counts.stored,
                    "deleted": counts.deleted,
                    "skipped": counts.skipped,
                    "failed": counts.failed,
                });
                println!("{outcome}");
            }
            Ok(ExitCode::SUCCESS)
        }
        .await,
    )
}

/// The function a rebuild runs, where it reads, and what it builds.
struct Target<'a> {
    function: &'a FunctionConfig,
    binding: &'a StreamBinding,
    projection: &'a ProjectionConfig,
}

/// The projection of `function`, when it is a stream function that alone
/// writes its bucket.
fn projection_of<'a>(
    config: &Config,
    function: &'a FunctionConfig,
) -> anyhow::Result<(&'a ProjectionConfig, &'a StreamBinding)> {
    let Role::Projection(projection) = &function.role else {
        bail!(
            "function {} has no projection = {{ bucket, key }}: there is no read model to build",
            function.name
        );
    };
    let writers: Vec<&str> = config
        .functions
        .values()
        .filter(|f| f.binding().is_some())
        .filter(|f| matches!(&f.role, Role::Projection(p) if p.bucket == projection.bucket))
        .map(|f| f.name.as_str())
        .collect();
    let Some(binding) = function.binding() else {
        bail!(
            "function {} is a query (request = ...): it reads bucket {} but does not build it; \
             rebuild the stream function that does ({})",
            function.name,
            projection.bucket,
            if writers.is_empty() {
                "none in this config".to_string()
            } else {
                writers.join(", ")
            }
        );
    };
    if writers.len() > 1 {
        bail!(
            "functions {} all project into bucket {}; a rebuild applies one function's events and \
             would lose the others': give each function a bucket of its own",
            writers.join(", "),
            projection.bucket
        );
    }
    Ok((projection, binding))
}

/// The bucket a rebuild fills: `<logical>_<n+1>` after `<logical>_<n>`,
/// `<logical>_1` after the configured bucket itself.
fn next_bucket(logical: &str, current: &str) -> String {
    let n = current
        .strip_prefix(logical)
        .and_then(|rest| rest.strip_prefix('_'))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    format!("{logical}_{}", n + 1)
}

/// What became of the events applied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    stored: u64,
    deleted: u64,
    skipped: u64,
    /// Failed permanently (the live function dead-letters these).
    failed: u64,
}

impl Counts {
    fn events(&self) -> u64 {
        self.stored + self.deleted + self.skipped + self.failed
    }

    /// Counts one result of the projector (`{"outcome": ...}`).
    fn count(&mut self, result: Option<&[u8]>) {
        let outcome = result
            .and_then(|r| serde_json::from_slice::<Value>(r).ok())
            .and_then(|v| v.get("outcome").and_then(Value::as_str).map(str::to_string));
        match outcome.as_deref() {
            Some("deleted") => self.deleted += 1,
            Some("skipped") => self.skipped += 1,
            _ => self.stored += 1,
        }
    }

    fn since(&self, before: Counts) -> Counts {
        Counts {
            stored: self.stored - before.stored,
            deleted: self.deleted - before.deleted,
            skipped: self.skipped - before.skipped,
            failed: self.failed - before.failed,
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} events: {} stored, {} deleted, {} skipped (applied already), {} failed permanently",
            self.events(),
            self.stored,
            self.deleted,
            self.skipped,
            self.failed
        )
    }
}

/// Applies a function's events, in stream order, through its wrapped handler.
struct Applier {
    js: jetstream::Context,
    function: FunctionConfig,
    binding: StreamBinding,
    handler: Arc<dyn Function>,
    counts: Counts,
    /// When the stream read was created, as live deliveries tell it.
    stream_created: u64,
    say: Say,
}

impl Applier {
    /// `inner`, wrapped as a live delivery wraps it, projecting into
    /// `bucket`.
    fn new(
        js: &jetstream::Context,
        target: &Target<'_>,
        bucket: &str,
        inner: Arc<dyn Function>,
        say: Say,
    ) -> Self {
        let mut config = target.function.clone();
        config.role = Role::Projection(ProjectionConfig {
            bucket: bucket.to_string(),
            key: target.projection.key.clone(),
        });
        let metrics = Metrics::new();
        let handles = metrics.for_function(&config.name);
        Applier {
            js: js.clone(),
            handler: layers::stack(&config, inner, js, &metrics, &handles),
            function: config,
            binding: target.binding.clone(),
            counts: Counts::default(),
            stream_created: 0,
            say,
        }
    }

    /// Applies the function's events with stream sequences `from..=to`.
    async fn apply(&mut self, from: u64, to: u64) -> anyhow::Result<()> {
        let describes = format!("jetrun projection rebuild {}", self.function.name);
        let mut history = History::open(
            &self.js,
            &self.binding.stream,
            &self.binding.subjects,
            Start::Sequence(from.max(1)),
            to,
            &describes,
        )
        .await?;
        while let Some(item) = history.next().await? {
            match item {
                Item::Message(stored) => {
                    let subject = stored.message.subject.to_string();
                    self.apply_one(stored.event(), &subject, stored.sequence)
                        .await?;
                }
                Item::Unreadable(unreadable) => {
                    // Live, the function dead-letters it.
                    eprintln!("jetrun: {unreadable}");
                    self.counts.failed += 1;
                }
            }
            if self.counts.events() % PROGRESS_EVERY == 0 {
                say!(self.say, "  {} events", self.counts.events());
            }
        }
        Ok(())
    }

    /// Applies one event, retrying as the function's retry policy says. A
    /// permanent failure is counted and skipped (live, it is dead-lettered);
    /// a retryable one that outlasts the policy stops the run.
    async fn apply_one(
        &mut self,
        event: Result<jetrun_functions::Event, jetrun_functions::Failure>,
        subject: &str,
        sequence: u64,
    ) -> anyhow::Result<()> {
        let retry = &self.function.retry;
        let mut attempt = 1;
        loop {
            let ctx = Context {
                function: self.function.name.clone(),
                attempt,
                subject: subject.to_string(),
                stream: self.binding.stream.clone(),
                stream_created: self.stream_created,
                sequence,
                trace: None,
            };
            let outcome = match &event {
                Ok(event) => self.handler.call(event, &ctx).await,
                Err(failure) => Err(failure.clone()),
            };
            match outcome {
                Ok(output) => {
                    self.counts.count(output.result.as_deref());
                    return Ok(());
                }
                Err(failure) if failure.is_permanent() => {
                    eprintln!(
                        "jetrun: sequence {sequence} ({subject}) failed permanently and is \
                         skipped: {failure}"
                    );
                    self.counts.failed += 1;
                    return Ok(());
                }
                Err(failure) if retry.is_last(attempt) => bail!(
                    "sequence {sequence} ({subject}) failed {attempt} times, the function's \
                     retry.max_attempts: {failure}"
                ),
                Err(failure) => {
                    let delay = retry.delay(attempt, fastrand::f64());
                    eprintln!(
                        "jetrun: sequence {sequence} ({subject}) failed (attempt {attempt}); \
                         retrying in {delay:?}: {failure}"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// The stream's last sequence now, and when the stream was created.
async fn last_sequence(js: &jetstream::Context, stream: &str) -> anyhow::Result<(u64, u64)> {
    let mut handle = js
        .get_stream(stream)
        .await
        .with_context(|| format!("cannot find stream {stream}"))?;
    let info = handle
        .info()
        .await
        .with_context(|| format!("cannot read stream {stream}"))?;
    Ok((info.state.last_sequence, nats::created_ns(info)))
}

/// The live function's durable consumer, paused: it delivers nothing new
/// while a rebuild catches up with it and readers move to the new bucket.
/// The pause ends by itself at [`PAUSE_LIMIT`] should the rebuild die.
struct Paused {
    stream: stream::Stream<()>,
    stream_name: String,
    consumer: String,
    /// When the server ends the pause by itself.
    until: Instant,
    /// The last stream sequence it delivered before the pause.
    delivered: u64,
}

impl Paused {
    /// Pauses `function`'s consumer; `None` when it does not exist (no live
    /// function is writing).
    async fn pause(
        js: &jetstream::Context,
        binding: &StreamBinding,
    ) -> anyhow::Result<Option<Paused>> {
        let (stream_name, consumer) = (&binding.stream, &binding.consumer);
        let what = || format!("consumer {consumer} on stream {stream_name}");
        let stream = js
            .get_stream_no_info(stream_name)
            .await
            .with_context(|| format!("cannot find stream {stream_name}"))?;
        match stream.consumer_info(consumer).await {
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                ) =>
            {
                return Ok(None)
            }
            Err(err) => bail!("cannot read {}: {err}", what()),
        }
        let until = Instant::now() + PAUSE_LIMIT;
        stream
            .pause_consumer(consumer, (SystemTime::now() + PAUSE_LIMIT).into())
            .await
            .map_err(|err| anyhow!("cannot pause {}: {err}", what()))?;
        let paused = Paused {
            stream,
            stream_name: stream_name.clone(),
            consumer: consumer.clone(),
            until,
            delivered: 0,
        };
        match paused.stream.consumer_info(consumer).await {
            Ok(info) => Ok(Some(Paused {
                delivered: info.delivered.stream_sequence,
                ..paused
            })),
            Err(err) => {
                paused.resume().await;
                bail!("cannot read {}: {err}", what())
            }
        }
    }

    /// Lets the consumer deliver again; a failure is reported, not returned
    /// (the pause ends by itself anyway).
    async fn resume(&self) {
        if let Err(err) = self.stream.resume_consumer(&self.consumer).await {
            eprintln!(
                "jetrun: cannot resume consumer {} (it resumes by itself within {PAUSE_LIMIT:?}; \
                 `nats consumer resume {} {}` does it now): {err}",
                self.consumer, self.stream_name, self.consumer
            );
        }
    }
}

/// The key of [`projection::POINTERS`] marking a rebuild of `logical` in
/// progress.
fn lock_key(logical: &str) -> String {
    format!("{logical}.rebuild")
}

/// `jetrun projection rebuild`: one at a time per bucket.
async fn rebuild(
    js: &jetstream::Context,
    target: &Target<'_>,
    handler: Arc<dyn Function>,
    keep_old: bool,
    say: Say,
) -> anyhow::Result<Rebuilt> {
    let pointers = projection::pointers(js).await?;
    let logical = &target.projection.bucket;
    let key = lock_key(logical);
    let mark = json!({
        "pid": std::process::id(),
        "started": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    });
    match pointers.create(&key, mark.to_string().into()).await {
        Ok(_) => {}
        Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {
            let holder = pointers.get(&key).await.ok().flatten().unwrap_or_default();
            bail!(
                "another rebuild of {logical} is running ({}); if none is (it died), \
                 `nats kv del {} {key}` and run this again",
                String::from_utf8_lossy(&holder),
                projection::POINTERS
            );
        }
        Err(err) => bail!(
            "cannot mark the rebuild of {logical} in {}: {err}",
            projection::POINTERS
        ),
    }
    let rebuilt = rebuild_alone(js, &pointers, target, handler, keep_old, say).await;
    if let Err(err) = pointers.delete(&key).await {
        eprintln!(
            "jetrun: cannot clear {}.{key}; `nats kv del {} {key}` before the next rebuild: {err}",
            projection::POINTERS,
            projection::POINTERS
        );
    }
    rebuilt
}

/// The rebuild itself, with the mark in place.
async fn rebuild_alone(
    js: &jetstream::Context,
    pointers: &kv::Store,
    target: &Target<'_>,
    handler: Arc<dyn Function>,
    keep_old: bool,
    say: Say,
) -> anyhow::Result<Rebuilt> {
    let Target {
        function,
        binding,
        projection,
    } = target;
    if binding.max_ack_pending > 1 {
        eprintln!(
            "jetrun: warning: function {} has max_ack_pending = {}: a projection needs its events \
             in stream order (max_ack_pending = 1), or an event retried after a newer one of the \
             same key is skipped",
            function.name, binding.max_ack_pending
        );
    }
    let logical = &projection.bucket;
    let (old, pointer_revision) = projection::pointer(js, logical).await?;
    let new = next_bucket(logical, &old);
    let old_config: Option<stream::Config> = match js.get_stream(format!("KV_{old}")).await {
        Ok(stream) => Some(stream.cached_info().config.clone()),
        Err(_) => None,
    };
    if js.get_key_value(&new).await.is_ok() {
        say!(
            say,
            "Deleting bucket {new}, left by a rebuild that did not finish."
        );
        js.delete_key_value(&new)
            .await
            .with_context(|| format!("cannot delete bucket {new}"))?;
    }
    projection::create_bucket(js, &new, old_config.as_ref()).await?;
    say!(
        say,
        "Rebuilding projection {logical} of function {} into bucket {new}; readers use {old} \
         until it has caught up.",
        function.name
    );
    let mut applier = Applier::new(js, target, &new, handler, say);
    let switched = async {
        let mut done = 0;
        for pass in 1..=MAX_PASSES {
            let (last, created) = last_sequence(js, &binding.stream).await?;
            applier.stream_created = created;
            if last <= done || (pass > 1 && last - done <= PAUSED_CATCH_UP) {
                break;
            }
            let before = applier.counts;
            applier.apply(done + 1, last).await?;
            say!(
                say,
                "Applied sequences {}..={last} of stream {}: {}.",
                done + 1,
                binding.stream,
                applier.counts.since(before)
            );
            done = last;
        }
        let Some(paused) = Paused::pause(js, binding).await? else {
            say!(
                say,
                "Function {} has no consumer: no live writer to wait for.",
                function.name
            );
            projection::switch(pointers, logical, pointer_revision, &new).await?;
            return anyhow::Ok(None);
        };
        say!(
            say,
            "Paused consumer {} (delivered up to sequence {}).",
            function.name,
            paused.delivered
        );
        let settle = projection::POINTER_TTL * 2;
        let caught_up = async {
            let before = applier.counts;
            applier.apply(done + 1, paused.delivered).await?;
            if paused.delivered > done {
                say!(
                    say,
                    "Applied sequences {}..={}, which the live function handled meanwhile: {}.",
                    done + 1,
                    paused.delivered,
                    applier.counts.since(before)
                );
            }
            if Instant::now() + settle + PAUSE_MARGIN > paused.until {
                bail!(
                    "catching up took so long that the pause of consumer {} would end before \
                     readers have switched; run the rebuild again",
                    function.name
                );
            }
            Ok(projection::switch(pointers, logical, pointer_revision, &new).await?)
        }
        .await;
        if caught_up.is_err() {
            paused.resume().await;
        }
        caught_up.map(|_| Some(paused))
    }
    .await;
    let paused = match switched {
        Ok(paused) => paused,
        Err(err) => {
            let _ = js.delete_key_value(&new).await;
            return Err(err.context(format!(
                "rebuild stopped; readers still use bucket {old}, and the unfinished {new} is \
                 deleted"
            )));
        }
    };
    say!(
        say,
        "Readers now use bucket {new} (pointer {}.{logical}).",
        projection::POINTERS
    );
    if let Some(paused) = paused {
        let settle = projection::POINTER_TTL * 2;
        say!(
            say,
            "Waiting {settle:?} for every reader to follow before resuming the consumer."
        );
        tokio::time::sleep(settle).await;
        paused.resume().await;
        say!(say, "Resumed consumer {}.", function.name);
    }
    if old_config.is_some() {
        if keep_old {
            say!(say, "Kept the old bucket {old} (--keep-old).");
        } else {
            js.delete_key_value(&old)
                .await
                .with_context(|| format!("cannot delete the old bucket {old}"))?;
            say!(say, "Deleted the old bucket {old}.");
        }
    }
    say!(
        say,
        "Rebuilt projection {logical} into bucket {new}: {}.",
        applier.counts
    );
    Ok(Rebuilt {
        bucket: new,
        old: old_config.is_some().then_some(old),
        kept_old: keep_old,
        counts: applier.counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_numbers_its_bucket_after_the_current_one() {
        assert_eq!(next_bucket("orders", "orders"), "orders_1");
        assert_eq!(next_bucket("orders", "orders_1"), "orders_2");
        assert_eq!(next_bucket("orders", "orders_41"), "orders_42");
        assert_eq!(next_bucket("orders", "elsewhere"), "orders_1");
        assert_eq!(next_bucket("orders_1", "orders_1"), "orders_1_1");
    }

    #[test]
    fn counts_follow_the_projector_results() {
        let mut counts = Counts::default();
        counts.count(Some(br#"{"outcome":"stored","key":"u7"}"#));
        counts.count(Some(br#"{"outcome":"deleted"}"#));
        counts.count(Some(br#"{"outcome":"skipped"}"#));
        counts.count(Some(br#"{"outcome":"skipped"}"#));
        counts.failed += 1;
        assert_eq!(
            counts.to_string(),
            "5 events: 1 stored, 1 deleted, 2 skipped (applied already), 1 failed permanently"
        );
        let before = counts;
        counts.count(Some(br#"{"outcome":"stored"}"#));
        assert_eq!(
            counts.since(before),
            Counts {
                stored: 1,
                ..Counts::default()
            }
        );
    }
}
