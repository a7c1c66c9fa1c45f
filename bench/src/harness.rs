//! What every part of one bench run shares: the options, the work folder,
//! the one nats-server, a publishing connection and the jetrun binary.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use async_nats::jetstream;

use crate::measure::{ConsumerCpu, CpuProbe};
use crate::nats_server::NatsServer;
use crate::options::Options;
use crate::programs;

pub(crate) struct Harness {
    pub(crate) options: Options,
    pub(crate) server: NatsServer,
    /// The publisher's connection; consumers get their own.
    pub(crate) js: jetstream::Context,
    pub(crate) jetrun: PathBuf,
    dir: PathBuf,
}

impl Harness {
    /// Starts the nats-server (its store under `dir`) and connects to it.
    pub(crate) async fn start(options: Options, dir: &Path) -> anyhow::Result<Self> {
        let jetrun = programs::jetrun(&options.jetrun)?;
        let bin = programs::nats_server(options.nats_server.as_deref())?;
        let server = NatsServer::start(&bin, dir)?;
        let client = async_nats::connect(server.url())
            .await
            .with_context(|| format!("connect to {}", server.url()))?;
        Ok(Harness {
            options,
            js: jetstream::new(client),
            server,
            jetrun,
            dir: dir.to_path_buf(),
        })
    }

    /// A new connection, for a consumer or an observer.
    pub(crate) async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        async_nats::connect(self.server.url())
            .await
            .with_context(|| format!("connect to {}", self.server.url()))
    }

    /// A file in the work folder.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Counts the server's CPU and `consumer`'s.
    pub(crate) fn cpu_probe(&self, consumer: ConsumerCpu) -> CpuProbe {
        CpuProbe {
            server: self.server.pid(),
            consumer,
        }
    }
}
