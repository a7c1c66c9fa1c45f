#!/usr/bin/env python3
"""shipping: the shipping service of the order choreography
(config/examples/ecommerce.toml), as a jetrun exec function in worker mode.
Standard library only.

It listens to the outcomes of payment and inventory, which arrive in any
order and independently of each other:

    payment.completed + inventory.reserved      -> order.shipped   {order_id, tracking}
    payment.failed or inventory.insufficient    -> order.cancelled {order_id, reason}

An order is decided once: the first failure cancels it; otherwise the second
success ships it. Later outcomes of a decided order emit nothing.

Worker mode: jetrun keeps this process running and writes one request per
line on stdin, `{"event": {...}, "attempt": n}` (the event in CloudEvents
structured JSON), reading one reply per line on stdout:
`{"ok": true, "emit": [...]}` or `{"ok": false, "error": "...", "retryable": bool}`.

State: what arrived for each order, and the decision, live in a SQLite file
(env SHIPPING_DB, default shipping.db in the working directory, which jetrun
sets to the config file's folder). Each event is handled in one IMMEDIATE
transaction, so several workers sharing the file decide each order once.
With several jetrun replicas (on several machines) this state belongs in a
JetStream KV bucket instead, updated with compare-and-set on its revision,
so that every replica sees the same orders.

Redeliveries: jetrun gives every emitted event an id derived from the input
event, and the stream drops a repeat of that id. So the decision is
remembered with the id of the event that made it, and a redelivery of *that*
event (the runner crashed before its ack, say) emits the same events again,
which the stream drops if they were stored already; any other event of a
decided order emits nothing. An order is never shipped or cancelled twice.

A cancellation after a successful payment would, in a real shop, also refund
it (a payment function listening to order.cancelled); this example stops at
the notification.
"""

import base64
import hashlib
import json
import os
import sqlite3
import sys

SUCCESSES = ("payment.completed", "inventory.reserved")
FAILURES = ("payment.failed", "inventory.insufficient")


class BadEvent(Exception):
    """The event can never be handled as sent: retrying would not help."""


def log(message):
    function = os.environ.get("JETRUN_FUNCTION", "shipping")
    print(f"{function}: {message}", file=sys.stderr, flush=True)


def open_db():
    path = os.environ.get("SHIPPING_DB") or "shipping.db"
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    # isolation_level=None: transactions are begun and ended here, explicitly.
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute(
        "CREATE TABLE IF NOT EXISTS arrivals ("
        " order_id TEXT NOT NULL, type TEXT NOT NULL, event_id TEXT NOT NULL,"
        " PRIMARY KEY (order_id, type))"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS decisions ("
        " order_id TEXT PRIMARY KEY, decided_by TEXT NOT NULL, emit TEXT NOT NULL)"
    )
    return db


def event_data(event):
    """The event's data as a JSON value: `data`, or `data_base64` decoded."""
    if "data" in event:
        return event["data"]
    if "data_base64" in event:
        try:
            return json.loads(base64.b64decode(event["data_base64"]))
        except ValueError as err:
            raise BadEvent(f"data is not JSON: {err}") from None
    raise BadEvent("the event has no data")


def tracking_number(order_key):
    """Derived from the order, so a repeated decision gives the same one."""
    return "TRK" + hashlib.sha256(order_key.encode()).hexdigest()[:12].upper()


def cancel_reason(event_type, data):
    if event_type == "payment.failed":
        return f"payment failed: {data.get('reason', 'no reason given')}"
    missing = ", ".join(str(m.get("sku")) for m in data.get("missing", []) if isinstance(m, dict))
    return f"out of stock: {missing}" if missing else "out of stock"


def handle(db, event):
    """The events to emit for one payment.* or inventory.* event."""
    event_type, event_id = event.get("type"), event.get("id")
    if event_type not in SUCCESSES + FAILURES:
        raise BadEvent(f"shipping does not handle {event_type!r} events")
    if not event_id:
        raise BadEvent("the event has no id")
    data = event_data(event)
    if not isinstance(data, dict) or "order_id" not in data:
        raise BadEvent("event data has no order_id")
    order_id = data["order_id"]
    order_key = json.dumps(order_id)

    db.execute("BEGIN IMMEDIATE")
    try:
        emit = decide(db, event_type, event_id, order_id, order_key, data)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return emit


def decide(db, event_type, event_id, order_id, order_key, data):
    """Within the transaction: record the event, and decide the order if it can be."""
    decided = db.execute(
        "SELECT decided_by, emit FROM decisions WHERE order_id = ?", (order_key,)
    ).fetchone()
    if decided is not None:
        decided_by, emit = decided
        if decided_by == event_id:
            log(f"order {order_id}: {event_type} {event_id} again; repeating its decision")
            return json.loads(emit)
        log(f"order {order_id}: {event_type} after the order was decided; nothing to do")
        return []
    db.execute(
        "INSERT OR IGNORE INTO arrivals (order_id, type, event_id) VALUES (?, ?, ?)",
        (order_key, event_type, event_id),
    )
    arrived = {
        row[0] for row in db.execute("SELECT type FROM arrivals WHERE order_id = ?", (order_key,))
    }
    if event_type in FAILURES:
        reason = cancel_reason(event_type, data)
        emit = [{"type": "order.cancelled", "data": {"order_id": order_id, "reason": reason}}]
        log(f"order {order_id}: cancelled ({reason})")
    elif all(kind in arrived for kind in SUCCESSES):
        tracking = tracking_number(order_key)
        emit = [{"type": "order.shipped", "data": {"order_id": order_id, "tracking": tracking}}]
        log(f"order {order_id}: paid and reserved; shipped as {tracking}")
    else:
        log(f"order {order_id}: {event_type}; waiting for the rest")
        return []
    db.execute(
        "INSERT INTO decisions (order_id, decided_by, emit) VALUES (?, ?, ?)",
        (order_key, event_id, json.dumps(emit)),
    )
    return emit


def reply_to(db, request):
    try:
        return {"ok": True, "emit": handle(db, request["event"])}
    except (BadEvent, ValueError, KeyError, TypeError, AttributeError) as err:
        log(f"permanent failure: {err}")
        return {"ok": False, "error": str(err), "retryable": False}
    except sqlite3.Error as err:
        log(f"cannot use the state database: {err}")
        return {"ok": False, "error": f"state database: {err}", "retryable": True}


def main():
    db = open_db()
    log(f"worker {os.getpid()} ready")
    for line in sys.stdin:
        if line.strip():
            request = json.loads(line)
            reply = reply_to(db, request)
            reply["id"] = request["id"]  # each reply answers its request by id
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
