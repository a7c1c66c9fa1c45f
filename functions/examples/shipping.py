#!/usr/bin/env python3
"""shipping: the shipping service of the order choreography
(config/examples/ecommerce.toml), as a jetrun exec function in worker mode,
written with the jetrun Python SDK (sdk/python). Standard library only.

It listens to the outcomes of payment and inventory, which arrive in any
order and independently of each other:

    payment.completed + inventory.reserved      -> order.shipped   {order_id, tracking}
    payment.failed or inventory.insufficient    -> order.cancelled {order_id, reason}

An order is decided once: the first failure cancels it; otherwise the second
success ships it. Later outcomes of a decided order emit nothing.

Worker mode: jetrun keeps this process running and sends it one event after
another; the SDK speaks the line protocol and calls `handle` for each. An
event that can never be handled (not a payment or inventory outcome, no
order_id) raises jetrun.Permanent and is dead-lettered at once; an error of
the state database is an ordinary exception, and the event is retried.

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

import hashlib
import json
import os
import sqlite3
import sys

try:
    import jetrun
except ImportError:  # run from the repository, without `pip install ./sdk/python`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))
    import jetrun

SUCCESSES = ("payment.completed", "inventory.reserved")
FAILURES = ("payment.failed", "inventory.insufficient")


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


def tracking_number(order_key):
    """Derived from the order, so a repeated decision gives the same one."""
    return "TRK" + hashlib.sha256(order_key.encode()).hexdigest()[:12].upper()


def cancel_reason(event_type, data):
    if event_type == "payment.failed":
        return f"payment failed: {data.get('reason', 'no reason given')}"
    missing = ", ".join(str(m.get("sku")) for m in data.get("missing", []) if isinstance(m, dict))
    return f"out of stock: {missing}" if missing else "out of stock"


_db = None


def db():
    """The state database, opened by the first event a worker handles."""
    global _db
    if _db is None:
        _db = open_db()
    return _db


@jetrun.handler
def handle(event):
    """The events to emit for one payment.* or inventory.* event."""
    event_type, event_id = event.get("type"), event.get("id")
    if event_type not in SUCCESSES + FAILURES:
        raise jetrun.Permanent(f"shipping does not handle {event_type!r} events")
    if not event_id:
        raise jetrun.Permanent("the event has no id")
    data = jetrun.data(event)
    if not isinstance(data, dict) or "order_id" not in data:
        raise jetrun.Permanent("event data has no order_id")
    order_id = data["order_id"]
    order_key = json.dumps(order_id)

    state = db()
    state.execute("BEGIN IMMEDIATE")
    try:
        emit = decide(state, event_type, event_id, order_id, order_key, data)
        state.execute("COMMIT")
    except BaseException:
        state.execute("ROLLBACK")
        raise
    return emit


def decide(state, event_type, event_id, order_id, order_key, data):
    """Within the transaction: record the event, and decide the order if it can be."""
    decided = state.execute(
        "SELECT decided_by, emit FROM decisions WHERE order_id = ?", (order_key,)
    ).fetchone()
    if decided is not None:
        decided_by, emit = decided
        if decided_by == event_id:
            print(f"order {order_id}: {event_type} {event_id} again; repeating its decision")
            return json.loads(emit)
        print(f"order {order_id}: {event_type} after the order was decided; nothing to do")
        return []
    state.execute(
        "INSERT OR IGNORE INTO arrivals (order_id, type, event_id) VALUES (?, ?, ?)",
        (order_key, event_type, event_id),
    )
    arrived = {
        row[0] for row in state.execute("SELECT type FROM arrivals WHERE order_id = ?", (order_key,))
    }
    if event_type in FAILURES:
        reason = cancel_reason(event_type, data)
        emit = [jetrun.emit("order.cancelled", {"order_id": order_id, "reason": reason})]
        print(f"order {order_id}: cancelled ({reason})")
    elif all(kind in arrived for kind in SUCCESSES):
        tracking = tracking_number(order_key)
        emit = [jetrun.emit("order.shipped", {"order_id": order_id, "tracking": tracking})]
        print(f"order {order_id}: paid and reserved; shipped as {tracking}")
    else:
        print(f"order {order_id}: {event_type}; waiting for the rest")
        return []
    state.execute(
        "INSERT INTO decisions (order_id, decided_by, emit) VALUES (?, ?, ?)",
        (order_key, event_id, json.dumps(emit)),
    )
    return emit


if __name__ == "__main__":
    handle.run()
