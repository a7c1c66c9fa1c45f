#!/usr/bin/env python3
"""reserve_inventory: the inventory service of the order choreography
(config/examples/ecommerce.toml), as a jetrun exec function. Standard library
only.

On `order.placed` (`{"order_id", "items": [{"sku", "qty"}], ...}`) it checks
every item against the stock table below and emits `inventory.reserved`
(`{order_id, items}`) or `inventory.insufficient` (`{order_id, missing}`).
jetrun runs it once per event: the event arrives on stdin as CloudEvents
structured JSON, the reply goes to stdout:

    {"emit": [{"type": "inventory.reserved", "data": {"order_id": 7, "items": [...]}}]}

Exit 0 is success, 65 (EX_DATAERR) a permanent failure: an order with no
order_id or no items goes to the dead letters, since retrying it helps no
one. Anything else is retried.

The stock table is fixed and nothing is written anywhere, so the same order
gets the same answer on every attempt: a retry cannot reserve twice. A real
inventory service would decrement its stock in a database, keyed by order id.
Logs go to stderr, which jetrun forwards to its own log.
"""

import base64
import json
import os
import sys

EX_DATAERR = 65

# What each SKU has on hand. An order asking for more gets inventory.insufficient.
STOCK = {"book": 100, "laptop": 3, "mug": 50, "pen": 500}


class BadOrder(Exception):
    """The order can never be reserved as sent: retrying would not help."""


def log(message):
    function = os.environ.get("JETRUN_FUNCTION", "reserve_inventory")
    print(f"{function}: {message}", file=sys.stderr, flush=True)


def event_data(event):
    """The event's data as a JSON value: `data`, or `data_base64` decoded."""
    if "data" in event:
        return event["data"]
    if "data_base64" in event:
        try:
            return json.loads(base64.b64decode(event["data_base64"]))
        except ValueError as err:
            raise BadOrder(f"data is not JSON: {err}") from None
    raise BadOrder("the event has no data")


def wanted_items(order):
    """The order's items as {sku: total qty}, checked."""
    items = order.get("items")
    if not isinstance(items, list) or not items:
        raise BadOrder(f"order {order['order_id']} has no items")
    wanted = {}
    for item in items:
        if not isinstance(item, dict):
            raise BadOrder(f"order {order['order_id']}: an item is not an object: {item!r}")
        sku, qty = item.get("sku"), item.get("qty")
        if not isinstance(sku, str) or not sku:
            raise BadOrder(f"order {order['order_id']}: an item has no sku: {item!r}")
        if isinstance(qty, bool) or not isinstance(qty, int) or qty < 1:
            raise BadOrder(f"order {order['order_id']}: qty of {sku} must be a whole number above 0")
        wanted[sku] = wanted.get(sku, 0) + qty
    return wanted


def reserve(event):
    """The events to emit for one order.placed event."""
    order = event_data(event)
    if not isinstance(order, dict) or "order_id" not in order:
        raise BadOrder("event data has no order_id")
    order_id = order["order_id"]
    wanted = wanted_items(order)
    missing = [
        {"sku": sku, "wanted": qty, "available": STOCK.get(sku, 0)}
        for sku, qty in sorted(wanted.items())
        if STOCK.get(sku, 0) < qty
    ]
    if missing:
        log(f"order {order_id}: short of {', '.join(m['sku'] for m in missing)}")
        return [{"type": "inventory.insufficient", "data": {"order_id": order_id, "missing": missing}}]
    log(f"order {order_id}: reserved {sum(wanted.values())} item(s)")
    items = [{"sku": sku, "qty": qty} for sku, qty in sorted(wanted.items())]
    return [{"type": "inventory.reserved", "data": {"order_id": order_id, "items": items}}]


def main():
    try:
        emit = reserve(json.load(sys.stdin))
    except (BadOrder, ValueError) as err:
        log(f"permanent failure: {err}")
        return EX_DATAERR
    json.dump({"emit": emit}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
