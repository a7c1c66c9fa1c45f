#!/usr/bin/env python3
"""ship_order: a jetrun exec function for the e-commerce flow.

On `inventory.reserved` it "ships" the order and emits `order.shipped` with a
tracking number. Standard library only.

Per-event mode (the default): jetrun starts this script once per event, writes
the event to stdin as CloudEvents structured JSON and reads the reply from
stdout:

    {"emit": [{"type": "order.shipped", "data": {"order_id": 7, "tracking": "..."}}]}

Exit 0 is success, 65 (EX_DATAERR) a permanent failure (the event goes to the
dead letters: retrying an order with no order_id helps no one), anything else
a retryable failure.

Worker mode (`--worker`, with `exec = { command = [...], mode = "worker" }`):
the process stays up and reads one request per line on stdin,
`{"event": {...}, "attempt": n}`, answering each with one line on stdout:
`{"ok": true, "emit": [...]}` or `{"ok": false, "error": "...", "retryable": false}`.

Logs go to stderr, which jetrun forwards to its own log.
"""

import base64
import hashlib
import json
import os
import sys

EX_DATAERR = 65


class PermanentError(Exception):
    """The event can never succeed: retrying would not help."""


def log(message):
    function = os.environ.get("JETRUN_FUNCTION", "ship_order")
    print(f"{function}: {message}", file=sys.stderr, flush=True)


def event_data(event):
    """The event's data as a JSON value: `data`, or `data_base64` decoded."""
    if "data" in event:
        return event["data"]
    if "data_base64" in event:
        raw = base64.b64decode(event["data_base64"])
        try:
            return json.loads(raw)
        except ValueError as err:
            raise PermanentError(f"data is not JSON: {err}") from None
    return None


def ship(event, attempt):
    """Ships the order in `event`; returns the events to emit."""
    data = event_data(event)
    if not isinstance(data, dict) or "order_id" not in data:
        raise PermanentError("event data has no order_id")
    order_id = data["order_id"]
    # Derived from the event id, so a retried event gets the same tracking
    # number: shipping is idempotent per event.
    digest = hashlib.sha256(str(event.get("id", order_id)).encode()).hexdigest()
    tracking = "TRK" + digest[:12].upper()
    log(f"shipping order {order_id} (event {event.get('id')}, attempt {attempt}): {tracking}")
    return [{"type": "order.shipped", "data": {"order_id": order_id, "tracking": tracking}}]


def run_once():
    attempt = os.environ.get("JETRUN_ATTEMPT", "1")
    try:
        event = json.load(sys.stdin)
        emit = ship(event, attempt)
    except (PermanentError, ValueError) as err:
        log(f"permanent failure: {err}")
        return EX_DATAERR
    json.dump({"emit": emit}, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


def run_worker():
    log(f"worker {os.getpid()} ready")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            reply = {"ok": True, "emit": ship(request["event"], request.get("attempt", 1))}
        except (PermanentError, ValueError, KeyError, TypeError) as err:
            log(f"permanent failure: {err}")
            reply = {"ok": False, "error": str(err), "retryable": False}
        reply["id"] = request["id"]  # each reply answers its request by id
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(run_worker() if "--worker" in sys.argv[1:] else run_once())
