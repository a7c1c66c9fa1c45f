//! `jetrun dev`: the config run against a nats-server jetrun starts itself
//! (JetStream on, data under `.jetrun/dev`, port 4222 when free), stopped
//! when jetrun stops. For a laptop with no NATS running.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

use super::config_file::Loaded;

const PREFERRED_PORT: u16 = 4222;
const DATA_DIR: &str = ".jetrun/dev";

pub(crate) async fn dev(mut loaded: Loaded, source: super::Source) -> anyhow::Result<()> {
    let config = &mut loaded.config;
    let binary = nats_server_binary()?;
    let port = free_port()?;
    std::fs::create_dir_all(DATA_DIR).with_context(|| format!("cannot create {DATA_DIR}"))?;
    let mut server = Command::new(&binary)
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--store_dir",
            DATA_DIR,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        // Its own process group: Ctrl-C reaches jetrun alone, which drains
        // before it stops the server.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    wait_for_port(port, &mut server).await?;
    let url = format!("nats://127.0.0.1:{port}");
    tracing::info!(%url, data = DATA_DIR, "Started nats-server for development.");
    let wanted = config.metrics.listen;
    config.metrics.listen = free_metrics_address(wanted)?;
    if config.metrics.listen != wanted {
        tracing::warn!(
            %wanted,
            listen = %config.metrics.listen,
            "The metrics address is taken (another jetrun?); serving metrics on a free port."
        );
    }
    let (subject, data) = example_event(config);
    eprintln!(
        "\n  nats-server: {url}\n  publish:     jetrun publish --server {url} {subject} '{data}'\n  \
         or:          nats -s {url} pub {subject} '{data}'\n  metrics:     http://{}/metrics\n",
        config.metrics.listen
    );
    config.nats.urls = vec![url];
    // dev's own nats-server, whatever the command line or a context says.
    let source = super::Source {
        connection: Default::default(),
        ..source
    };
    let result = super::run(loaded, source).await;
    stop(&mut server).await;
    result
}

/// NATS_SERVER_BIN, else the project-local install, else PATH.
fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let local = PathBuf::from(".jetrun/tools/bin/nats-server");
    if local.is_file() {
        return Ok(local);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!("nats-server not found: run deploy/install-nats-server.sh (or set NATS_SERVER_BIN)")
}

fn free_port() -> anyhow::Result<u16> {
    let preferred = SocketAddrV4::new(Ipv4Addr::LOCALHOST, PREFERRED_PORT);
    if TcpListener::bind(preferred).is_ok() {
        return Ok(PREFERRED_PORT);
    }
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .context("cannot find a free port for nats-server")?;
    Ok(listener.local_addr()?.port())
}

async fn wait_for_port(port: u16, server: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    while Instant::now() < deadline {
        if let Some(status) = server.try_wait()? {
            bail!("nats-server exited at start ({status}); see its output above");
        }
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nats-server did not listen on port {port} within 10s")
}

/// `wanted` when it is free, else a free port on the same address: a
/// second `jetrun dev` (or anything on 9600) must not stop the first.
fn free_metrics_address(wanted: SocketAddr) -> anyhow::Result<SocketAddr> {
    match TcpListener::bind(wanted) {
        Ok(_) => Ok(wanted),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            let listener =
                TcpListener::bind(SocketAddr::new(wanted.ip(), 0)).with_context(|| {
                    format!("cannot find a free port for metrics on {}", wanted.ip())
                })?;
            Ok(listener.local_addr()?)
        }
        Err(err) => Err(err).with_context(|| format!("cannot serve metrics on {wanted}")),
    }
}

/// An event the banner suggests publishing: to the first subject a function
/// of this config listens on (a wildcard filled in), with data for the
/// quick start's subjects and `{}` for any other.
fn example_event(config: &jetrun_config::Config) -> (String, String) {
    let subject = config
        .functions
        .values()
        .filter_map(|f| f.binding())
        .flat_map(|b| b.subjects.iter())
        .next()
        .map_or_else(
            || "example.event".into(),
            |pattern| jetrun_config::subject_example(pattern),
        );
    let data = match subject.as_str() {
        "order.placed" => r#"{"order_id":1,"total":25,"items":[{"sku":"book","qty":1}]}"#,
        "user.registered" => r#"{"user_id":1,"email":"ada@example.com"}"#,
        _ => "{}",
    };
    (subject, data.to_string())
}

/// SIGTERM, so the server flushes its store, then SIGKILL if it lingers.
async fn stop(server: &mut Child) {
    if let Some(pid) = server.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), server.wait())
        .await
        .is_err()
    {
        let _ = server.kill().await;
    }
}
