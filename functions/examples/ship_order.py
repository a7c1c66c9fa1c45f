#!/usr/bin/env python3
"""ship_order: a jetrun exec function for the e-commerce flow, written with
the jetrun Python SDK (sdk/python).

On `inventory.reserved` it "ships" the order and emits `order.shipped` with a
tracking number:

    {"type": "order.shipped", "data": {"order_id": 7, "tracking": "TRK..."}}

An event without an order_id raises jetrun.Permanent: it goes to the dead
letters at once, since retrying it helps no one. Any other exception is
retried.

The same file runs in both exec modes, as the config says: one process per
event (config/jetrun.toml) or long-lived workers (config/examples/worker.toml,
`mode = "worker"`); the SDK tells them apart by the environment jetrun
gives it. print() goes to stderr, which jetrun logs, in both.

Try it by hand:

    echo '{"id": "e-1", "type": "inventory.reserved", "data": {"order_id": 7}}' \
        | python3 functions/examples/ship_order.py
"""

import hashlib
import os
import sys

try:
    import jetrun
except ImportError:  # run from the repository, without `pip install ./sdk/python`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))
    import jetrun


@jetrun.handler
def ship(event):
    """Ships the order in `event`; returns the events to emit."""
    data = jetrun.data(event)
    if not isinstance(data, dict) or "order_id" not in data:
        raise jetrun.Permanent("event data has no order_id")
    order_id = data["order_id"]
    # Derived from the event id, so a retried event gets the same tracking
    # number: shipping is idempotent per event.
    digest = hashlib.sha256(str(event.get("id", order_id)).encode()).hexdigest()
    tracking = "TRK" + digest[:12].upper()
    print(f"shipping order {order_id} (event {event.get('id')}, attempt {jetrun.attempt()}): {tracking}")
    return [jetrun.emit("order.shipped", {"order_id": order_id, "tracking": tracking})]


if __name__ == "__main__":
    ship.run()
