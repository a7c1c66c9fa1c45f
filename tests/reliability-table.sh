#!/usr/bin/env bash
# Prints the scenario table of RELIABILITY.md from the rows the fault tests
# wrote (target/reliability/*.md, or $CARGO_TARGET_DIR/reliability).
# Run the fault tests first:
#   tests/run.sh -p jetrun-e2e --test faults_replicas --test faults_nats --test faults_retry
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${CARGO_TARGET_DIR:-target}/reliability"
if ! ls "$dir"/*.md >/dev/null 2>&1; then
  echo "no results in $dir: run the fault tests first (see RELIABILITY.md)" >&2
  exit 1
fi
echo "| scenario | events acknowledged by JetStream | lost | handled more than once | dead-lettered | recovery | notes |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
cat "$dir"/*.md
