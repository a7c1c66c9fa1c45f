#!/usr/bin/env python3
"""The saga's participants for config/examples/ecommerce-saga.toml, one
jetrun exec worker (written with the jetrun Python SDK, sdk/python)
answering every step command and every undo. Each answer carries the order
id, which is how the saga matches it to its instance.

  inventory.reserve  -> inventory.reserved | inventory.insufficient (stock below)
  payment.charge     -> payment.completed  | payment.failed (total over 1000)
  shipping.ship      -> shipping.shipped   | shipping.failed (country "XX")
  inventory.release  -> inventory.released   (the undo of a reservation)
  payment.refund     -> payment.refunded     (the undo of a charge)
  shipping.cancel    -> nothing: the saga does not await it

A command whose data has "hang_at": "<step>" gets no answer at all, to see
the saga's timeout and compensation. Undos are idempotent: releasing twice
or refunding twice changes nothing the second time.
"""

import os
import sys

try:
    import jetrun
except ImportError:  # run from the repository, without `pip install ./sdk/python`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))
    import jetrun

STOCK = {"book": 10, "laptop": 1, "mug": 5, "pen": 100}
reserved = {}   # order_id -> items
charged = {}    # order_id -> amount


@jetrun.handler
def answer(event):
    kind, data = event["type"], jetrun.data(event) or {}
    order = data.get("order_id")
    reply = lambda t, **extra: [jetrun.emit(t, dict({"order_id": order}, **extra))]
    step = {"inventory.reserve": "reserve", "payment.charge": "payment", "shipping.ship": "ship"}
    if kind in step and data.get("hang_at") == step[kind]:
        return []
    if kind == "inventory.reserve":
        missing = [i for i in data.get("items", []) if STOCK.get(i["sku"], 0) < i["qty"]]
        if missing:
            return reply("inventory.insufficient", missing=missing)
        for i in data.get("items", []):
            STOCK[i["sku"]] -= i["qty"]
        reserved[order] = data.get("items", [])
        return reply("inventory.reserved")
    if kind == "inventory.release":
        for i in reserved.pop(order, []):
            STOCK[i["sku"]] += i["qty"]
        return reply("inventory.released")
    if kind == "payment.charge":
        total = data.get("total", 0)
        if total > 1000:
            return reply("payment.failed", reason="amount over limit")
        charged[order] = total
        return reply("payment.completed", payment_id=f"pay-{order}")
    if kind == "payment.refund":
        return reply("payment.refunded", amount=charged.pop(order, 0))
    if kind == "shipping.ship":
        if data.get("country") == "XX":
            return reply("shipping.failed", reason="no carrier for XX")
        return reply("shipping.shipped", tracking=f"trk-{order}")
    return []


if __name__ == "__main__":
    answer.run()
