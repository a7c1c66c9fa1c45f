#!/usr/bin/env python3
"""reserve_inventory: the inventory service of the order choreography
(config/examples/ecommerce.toml), as a jetrun exec function written with the
jetrun Python SDK (sdk/python). Standard library only.

On `order.placed` (`{"order_id", "items": [{"sku", "qty"}], ...}`) it checks
every item against the stock table below and emits `inventory.reserved`
(`{order_id, items}`) or `inventory.insufficient` (`{order_id, missing}`).
jetrun runs it once per event (the config's default mode); the SDK reads the
event from stdin and writes the events to emit to stdout.

An order with no order_id or no items raises jetrun.Permanent: it goes to
the dead letters at once (exit status 65), since retrying it helps no one.
Anything else that goes wrong is retried.

The stock table is fixed and nothing is written anywhere, so the same order
gets the same answer on every attempt: a retry cannot reserve twice. A real
inventory service would decrement its stock in a database, keyed by order id.
print() goes to stderr, which jetrun forwards to its own log.
"""

import os
import sys

try:
    import jetrun
except ImportError:  # run from the repository, without `pip install ./sdk/python`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))
    import jetrun

# What each SKU has on hand. An order asking for more gets inventory.insufficient.
STOCK = {"book": 100, "laptop": 3, "mug": 50, "pen": 500}


def wanted_items(order):
    """The order's items as {sku: total qty}, checked."""
    items = order.get("items")
    if not isinstance(items, list) or not items:
        raise jetrun.Permanent(f"order {order['order_id']} has no items")
    wanted = {}
    for item in items:
        if not isinstance(item, dict):
            raise jetrun.Permanent(f"order {order['order_id']}: an item is not an object: {item!r}")
        sku, qty = item.get("sku"), item.get("qty")
        if not isinstance(sku, str) or not sku:
            raise jetrun.Permanent(f"order {order['order_id']}: an item has no sku: {item!r}")
        if isinstance(qty, bool) or not isinstance(qty, int) or qty < 1:
            raise jetrun.Permanent(f"order {order['order_id']}: qty of {sku} must be a whole number above 0")
        wanted[sku] = wanted.get(sku, 0) + qty
    return wanted


@jetrun.handler
def reserve(event):
    """The events to emit for one order.placed event."""
    order = jetrun.data(event)
    if not isinstance(order, dict) or "order_id" not in order:
        raise jetrun.Permanent("event data has no order_id")
    order_id = order["order_id"]
    wanted = wanted_items(order)
    missing = [
        {"sku": sku, "wanted": qty, "available": STOCK.get(sku, 0)}
        for sku, qty in sorted(wanted.items())
        if STOCK.get(sku, 0) < qty
    ]
    if missing:
        print(f"order {order_id}: short of {', '.join(m['sku'] for m in missing)}")
        return [jetrun.emit("inventory.insufficient", {"order_id": order_id, "missing": missing})]
    print(f"order {order_id}: reserved {sum(wanted.values())} item(s)")
    items = [{"sku": sku, "qty": qty} for sku, qty in sorted(wanted.items())]
    return [jetrun.emit("inventory.reserved", {"order_id": order_id, "items": items})]


if __name__ == "__main__":
    reserve.run()
