//! `jetrun dev`: the config run against a nats-server jetrun starts itself
//! (JetStream on, data under `.jetrun/dev`, port 4222 when free), stopped
//! when jetrun stops. For a laptop with no NATS running.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
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
    eprintln!(
        "\n  nats-server: {url}\n  publish:     jetrun publish --server {url} order.placed '{{\"order_id\":1,\"total\":25,\"items\":[{{\"sku\":\"book\",\"qty\":1}}]}}'\n  or:          nats -s {url} pub user.registered '{{\"user_id\":1,\"email\":\"ada@example.com\"}}'\n  metrics:     http://{}/metrics\n",
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
