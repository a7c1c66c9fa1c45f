//! Where the repository is, found from this crate's own path, so tests work
//! from any working directory.

use std::path::PathBuf;

/// The repository root (the workspace folder holding `tests/`).
pub fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("tests/ has a parent folder")
        .to_path_buf()
}
