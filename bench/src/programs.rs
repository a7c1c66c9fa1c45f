//! Where the programs the bench drives are: the repository it was built
//! from (for the default `jetrun`, `nats-server` and venv paths), and
//! programs on `PATH`.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// The repository root: the bench crate's parent folder, fixed at build time,
/// so the defaults hold from any working directory.
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `name` on `PATH`, if it is there.
pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The nats-server binary: `--nats-server` (or env `NATS_SERVER_BIN`), else
/// the repo-local one `deploy/install-nats-server.sh` installs, else `PATH`.
pub(crate) fn nats_server(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(bin) = given {
        if !bin.is_file() {
            bail!(
                "nats-server {} is not a file: run deploy/install-nats-server.sh",
                bin.display()
            );
        }
        return Ok(bin.to_path_buf());
    }
    let local = repo_root().join(".jetrun/tools/bin/nats-server");
    if local.is_file() {
        return Ok(local);
    }
    match on_path("nats-server") {
        Some(bin) => Ok(bin),
        None => bail!(
            "nats-server not found: run deploy/install-nats-server.sh (it prints the path to \
             pass as --nats-server)"
        ),
    }
}

/// The jetrun binary to benchmark; it must exist, and should be a release build.
pub(crate) fn jetrun(given: &Path) -> anyhow::Result<PathBuf> {
    if !given.is_file() {
        bail!(
            "jetrun binary {} not found: build it with `cargo build --release -p jetrun` \
             (or pass --jetrun PATH)",
            given.display()
        );
    }
    Ok(given.to_path_buf())
}
