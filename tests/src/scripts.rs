//! The programs test functions run: small `sh` scripts built on one ledger
//! line, and a Python worker for exec worker mode. They read `LEDGER` (the
//! ledger's absolute path) from the exec `env` table, since a child sees
//! nothing else of the runner's environment.

/// Appends `<sequence> <attempt> <unix time>` to `$LEDGER`: one short
/// `O_APPEND` write, so concurrent calls never interleave within a line.
pub const LEDGER_LINE: &str =
    r#"printf '%s %s %s\n' "$JETRUN_SEQUENCE" "$JETRUN_ATTEMPT" "$(date +%s.%N)" >> "$LEDGER""#;

/// A script that writes its ledger line, then runs `rest` (its exit status is
/// the call's outcome: 0 success, 65 permanent failure, other retryable).
pub fn record_then(rest: &str) -> String {
    format!("{LEDGER_LINE}\n{rest}\n")
}

/// An exec worker-mode function: one JSON request per line in, one reply per
/// line out, echoing the request's `id`. For each request it appends `<event id> <attempt> <unix time>
/// <pid>` to `$LEDGER`, sleeps `$PACE_MS` milliseconds when that is set, then
/// answers `{"ok": true}`; when the event's data has `"die_on_attempt": n`
/// and this is attempt n, it dies mid-event instead (exit 3, no reply). It
/// answers a retryable failure for an event whose data has `"poison": true`,
/// and for every event while the file `$DOWN` exists (a downstream outage).
/// An event whose data has `"block": true` waits while the file `$BLOCK`
/// exists.
pub const WORKER_PY: &str = r#"import json
import os
import sys
import time

ledger = os.environ["LEDGER"]
pace = float(os.environ.get("PACE_MS", "0")) / 1000
down = os.environ.get("DOWN")
block = os.environ.get("BLOCK")
for line in sys.stdin:
    request = json.loads(line)
    event = request["event"]
    attempt = request["attempt"]
    with open(ledger, "a") as f:
        f.write(f"{event['id']} {attempt} {time.time():.6f} {os.getpid()}\n")
    data = event.get("data")
    if isinstance(data, dict) and data.get("die_on_attempt") == attempt:
        os._exit(3)
    if pace:
        time.sleep(pace)
    if block and isinstance(data, dict) and data.get("block"):
        while os.path.exists(block):
            time.sleep(0.05)
    if isinstance(data, dict) and data.get("poison"):
        reply = {"ok": False, "error": "poison event"}
    elif down and os.path.exists(down):
        reply = {"ok": False, "error": "downstream is down"}
    else:
        reply = {"ok": True, "emit": []}
    reply["id"] = request["id"]
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"#;
