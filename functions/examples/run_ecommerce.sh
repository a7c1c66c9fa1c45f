#!/usr/bin/env bash
# The order choreography of config/examples/ecommerce.toml: starts the
# notification endpoint (functions/examples/notify_server.py on port 8099, the
# one the config calls), then `jetrun dev`, which starts its own nats-server.
# Ctrl-C stops jetrun (it drains first), then the notification server.
#
# Its NATS data and the shipping function's state live under
# .jetrun/ecommerce/, apart from the quick start's; delete that folder to
# start over with no orders. Extra arguments go to jetrun (--log-format json).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

# jetrun dev looks for NATS_SERVER_BIN first.
NATS_SERVER_BIN="$(deploy/install-nats-server.sh)"
export NATS_SERVER_BIN
cargo build -p jetrun
jetrun="$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)/jetrun"

# In a script, a background job ignores Ctrl-C: the server outlives jetrun's
# drain and is stopped when the script exits.
python3 functions/examples/notify_server.py 8099 &
notify=$!
trap 'kill "$notify" 2>/dev/null || true' EXIT

# jetrun dev keeps its nats-server's data under ./.jetrun/dev: run it from a
# folder of this example's own.
mkdir -p .jetrun/ecommerce
cd .jetrun/ecommerce
# A line for every handled event (at debug), so one order can be followed
# through the log by its correlation id.
export JETRUN_LOG="${JETRUN_LOG:-info,async_nats=warn,jetrun::delivery=debug}"
"$jetrun" dev -c "$repo/config/examples/ecommerce.toml" "$@"
