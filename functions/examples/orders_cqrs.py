#!/usr/bin/env python3
"""The order aggregate, its read models and their queries, for
config/examples/orders-cqrs.toml, written with the jetrun Python SDK
(sdk/python): one jetrun exec worker per role, chosen by the first argument.

Command handlers (request functions with aggregate = "order") get the
command and the order as jetrun loaded it (jetrun.Aggregate: id, version,
history, snapshot) and return a jetrun.Decision: the events to append, the
reply, the snapshot.

  place     {"order_id", "user_id", "items": [{"sku", "qty"}]}  -> order_placed
  add_item  {"order_id", "sku", "qty"}                         -> item_added
  confirm   {"order_id"}                                       -> order_confirmed

A command that breaks a rule raises jetrun.Permanent: the requester gets
error 400 and the message.

Projections (stream functions with projection = {...}) get the event, its
key and the stored state, and return the new state:

  summary   order_summaries[order_id] = {"order_id", "user_id", "status", "items", "quantity"}
  by_user   orders_by_user[user_id]   = {"user_id", "orders": {order_id: status}}

Queries (request functions with projection = {...}) get the request, its key
and the stored state, and return the reply:

  get_order     the order's summary, or {"found": false, "key": ...}
  user_orders   the user's orders, or {"found": false, "key": ...}
"""

import os
import sys

try:
    import jetrun
except ImportError:  # run from the repository, without `pip install ./sdk/python`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))
    import jetrun


def apply(order, event):
    """The order after one of its events (None before the first)."""
    data = event["data"]
    if event["type"] == "order_placed":
        return {"user_id": data["user_id"], "status": "placed", "items": data["items"]}
    if event["type"] == "item_added":
        return dict(order, items=order["items"] + [{"sku": data["sku"], "qty": data["qty"]}])
    if event["type"] == "order_confirmed":
        return dict(order, status="confirmed")
    return order


def item(data):
    sku, qty = data.get("sku"), data.get("qty")
    if not isinstance(sku, str) or not sku:
        raise jetrun.Permanent("sku must be a non-empty string")
    if isinstance(qty, bool) or not isinstance(qty, int) or qty < 1:
        raise jetrun.Permanent("qty must be a positive integer")
    return {"sku": sku, "qty": qty}


def decided(instance, order, new):
    """The decision to append `new` to the order: the reply says the
    order's version and status after it, and the snapshot is that state."""
    for event in new:
        order = apply(order, event)
    reply = {"order_id": instance.id, "version": instance.version + len(new), "status": order["status"]}
    return jetrun.Decision(append=new, reply=reply, snapshot=order)


def placed_order(instance):
    """The order as its events made it; it must exist and not be confirmed."""
    order = instance.state(apply)
    if order is None:
        raise jetrun.Permanent(f"order {instance.id} does not exist")
    if order["status"] != "placed":
        raise jetrun.Permanent(f"order {instance.id} is {order['status']}")
    return order


@jetrun.aggregate
def place(command, instance):
    data = jetrun.data(command) or {}
    if instance.state(apply) is not None:
        raise jetrun.Permanent(f"order {instance.id} already exists")
    if not isinstance(data.get("user_id"), (str, int)):
        raise jetrun.Permanent("user_id is required")
    items = [item(i) for i in data.get("items", [])]
    new = jetrun.emit("order_placed", {"order_id": instance.id, "user_id": data["user_id"], "items": items})
    return decided(instance, None, [new])


@jetrun.aggregate
def add_item(command, instance):
    order = placed_order(instance)
    added = item(jetrun.data(command) or {})
    new = jetrun.emit("item_added", dict(added, order_id=instance.id, user_id=order["user_id"]))
    return decided(instance, order, [new])


@jetrun.aggregate
def confirm(command, instance):
    order = placed_order(instance)
    if not order["items"]:
        raise jetrun.Permanent(f"order {instance.id} has no items")
    new = jetrun.emit("order_confirmed", {"order_id": instance.id, "user_id": order["user_id"]})
    return decided(instance, order, [new])


@jetrun.projection
def summary(event, key, state):
    data = event["data"]
    summary = state or {"order_id": data["order_id"], "user_id": data["user_id"], "status": "placed", "items": []}
    if event["type"] == "order_placed":
        summary["items"] = data["items"]
    elif event["type"] == "item_added":
        summary["items"] = summary["items"] + [{"sku": data["sku"], "qty": data["qty"]}]
    elif event["type"] == "order_confirmed":
        summary["status"] = "confirmed"
    summary["quantity"] = sum(i["qty"] for i in summary["items"])
    return summary


@jetrun.projection
def by_user(event, key, state):
    data = event["data"]
    mine = state or {"user_id": data["user_id"], "orders": {}}
    if event["type"] != "item_added":
        status = "confirmed" if event["type"] == "order_confirmed" else "placed"
        mine["orders"][str(data["order_id"])] = status
    return mine


def found(request, key, state):
    if state is None:
        return {"found": False, "key": key}
    return dict(state, found=True)


get_order = jetrun.query(found)
user_orders = jetrun.query(found)

ROLES = {
    "place": place,
    "add_item": add_item,
    "confirm": confirm,
    "summary": summary,
    "by_user": by_user,
    "get_order": get_order,
    "user_orders": user_orders,
}

if __name__ == "__main__":
    ROLES[sys.argv[1]].run()
