#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and the end-to-end tests that run
# the real jetrun binary against a real nats-server (installed into
# .jetrun/tools when none is found). Extra arguments go to `cargo test`:
#   ./tests/run.sh -p jetrun-e2e --test retry
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

NATS_SERVER_BIN="$(deploy/install-nats-server.sh)"
export NATS_SERVER_BIN
# nats-server 2.11, for the tests of the version check (skipped, saying so,
# when it cannot be installed).
NATS_SERVER_OLD_BIN="$(deploy/install-nats-server.sh --old)" || NATS_SERVER_OLD_BIN=""
export NATS_SERVER_OLD_BIN

cargo build --workspace
# The end-to-end tests run this binary instead of building it again.
JETRUN_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/jetrun"
export JETRUN_BIN

cargo test --workspace "$@"
