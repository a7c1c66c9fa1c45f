//! The runner's memory: resident set with 10 and with 100 idle `noop`
//! functions bound, and with a backlog waiting behind a function that never
//! finishes (a worker that sleeps), small and large, to show it does not
//! grow with the backlog.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::backlog::Target;
use crate::contenders::jetrun::toml_string;
use crate::harness::Harness;
use crate::runner::Runner;

/// Idle functions bound for the idle readings.
const IDLE_FUNCTIONS: [usize; 2] = [10, 100];
/// How long the idle runner sits before the reading.
const IDLE_WAIT: Duration = Duration::from_secs(2);
/// How long the blocked runner sits on its backlog before the reading.
const BACKLOG_WAIT: Duration = Duration::from_secs(10);
/// The same with `--smoke`, which checks that it works, not what it costs.
const SMOKE_BACKLOG_WAIT: Duration = Duration::from_secs(2);
/// The small backlog the large one is compared with.
const SMALL_BACKLOG: u64 = 1_000;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct RssReport {
    /// VmRSS with 10 noop functions bound, idle.
    pub(crate) idle_kib: Option<u64>,
    /// VmRSS with 100 noop functions bound, idle.
    pub(crate) idle_100_kib: Option<u64>,
    pub(crate) backlogs: Vec<BacklogRss>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct BacklogRss {
    /// Events waiting in the stream.
    pub(crate) events: u64,
    /// VmRSS after [`BACKLOG_WAIT`] with the function blocked.
    pub(crate) rss_kib: Option<u64>,
    /// VmHWM at the same moment.
    pub(crate) peak_kib: Option<u64>,
    /// Events the runner had pulled and not acked (its consumer's ack pending).
    pub(crate) held: usize,
}

pub(crate) async fn run(harness: &Harness) -> anyhow::Result<RssReport> {
    let idle_kib = idle(harness, IDLE_FUNCTIONS[0]).await?;
    let idle_100_kib = idle(harness, IDLE_FUNCTIONS[1]).await?;
    let mut backlogs = Vec::new();
    let mut sizes = vec![
        SMALL_BACKLOG.min(harness.options.backlog),
        harness.options.backlog,
    ];
    sizes.dedup();
    for events in sizes {
        backlogs.push(blocked(harness, events).await?);
    }
    Ok(RssReport {
        idle_kib,
        idle_100_kib,
        backlogs,
    })
}

async fn idle(harness: &Harness, functions: usize) -> anyhow::Result<Option<u64>> {
    let name = format!("rss-idle-{functions}");
    let base = Target::new(&name, 1);
    let stream = Target {
        stream: base.stream.clone(),
        subject: format!("{}.*", base.subject),
    };
    stream.create(&harness.js).await?;
    let mut config = String::new();
    for n in 0..functions {
        let _ = writeln!(
            config,
            "[functions.idle-{n}]\nstream = {}\nsubjects = [{}]\nbuiltin = \"noop\"\n",
            toml_string(&stream.stream),
            toml_string(&format!("{}.{n}", base.subject)),
        );
    }
    let mut runner = Runner::start(harness, &name, &config)?;
    runner.wait_ready().await?;
    tokio::time::sleep(IDLE_WAIT).await;
    runner.check_alive()?;
    let rss = runner.memory_kib("VmRSS");
    runner.stop().await?;
    Ok(rss)
}

async fn blocked(harness: &Harness, events: u64) -> anyhow::Result<BacklogRss> {
    let name = format!("rss-backlog-{events}");
    let target = Target::new(&name, 1);
    let stream = target.fill(&harness.js, events).await?;
    let config = format!(
        "[functions.blocked]\nstream = {}\nsubjects = [{}]\n\
         exec = {{ command = [\"/bin/sh\", \"-c\", \"exec sleep 3600\"], mode = \"worker\" }}\n\
         concurrency = {}\ntimeout = \"10m\"\n",
        toml_string(&target.stream),
        toml_string(&target.subject),
        harness.options.concurrency,
    );
    let mut runner = Runner::start(harness, &name, &config)?;
    runner.wait_ready().await?;
    tokio::time::sleep(match harness.options.smoke {
        true => SMOKE_BACKLOG_WAIT,
        false => BACKLOG_WAIT,
    })
    .await;
    runner.check_alive()?;
    let reading = BacklogRss {
        events,
        rss_kib: runner.memory_kib("VmRSS"),
        peak_kib: runner.memory_kib("VmHWM"),
        held: stream
            .consumer_info("blocked")
            .await
            .map(|info| info.num_ack_pending)
            .unwrap_or_default(),
    };
    runner.stop().await?;
    Ok(reading)
}
