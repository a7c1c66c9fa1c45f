#!/usr/bin/env bash
# The quick start: installs nats-server if none is found, builds jetrun and
# runs config/jetrun.toml with `jetrun dev`, which starts (and stops) its own
# nats-server with data under .jetrun/. Metrics: http://127.0.0.1:9600/metrics.
# Ctrl-C stops it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# jetrun dev looks for NATS_SERVER_BIN, then .jetrun/tools/bin/nats-server,
# then nats-server on PATH.
NATS_SERVER_BIN="$(deploy/install-nats-server.sh)"
export NATS_SERVER_BIN

cargo build -p jetrun
exec "${CARGO_TARGET_DIR:-target}/debug/jetrun" dev -c config/jetrun.toml "$@"
