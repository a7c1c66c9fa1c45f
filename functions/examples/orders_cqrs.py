#!/usr/bin/env python3
"""The order aggregate, its read models and their queries, for
config/examples/orders-cqrs.toml: one jetrun exec worker per role, chosen by
the first argument.

Command handlers (request functions with aggregate = "order") get
{"command": <CloudEvent>, "aggregate": {"id", "version", "history", "snapshot"}}
and answer {"append": [{"type", "data"}], "reply": ...}:

  place     {"order_id", "user_id", "items": [{"sku", "qty"}]}  -> order_placed
  add_item  {"order_id", "sku", "qty"}                         -> item_added
  confirm   {"order_id"}                                       -> order_confirmed

A bad command is a permanent failure: the requester gets error 400.

Projections (stream functions with projection = {...}) get
{"event": <CloudEvent>, "key", "state"} and answer {"state": ...}:

  summary   order_summaries[order_id] = {"order_id", "user_id", "status", "items", "quantity"}
  by_user   orders_by_user[user_id]   = {"user_id", "orders": {order_id: status}}

Queries (request functions with projection = {...}) get
{"request": <CloudEvent>, "key", "state"} and answer with the reply itself:

  get_order     the order's summary, or 404-like {"found": false}
  user_orders   the user's orders
"""

import json
import sys


class Rejected(Exception):
    """A command that breaks a rule: never retried."""


def state_of(aggregate):
    """The order as its events made it (a snapshot, then the events after it)."""
    order = aggregate["snapshot"]
    for event in aggregate["history"]:
        order = apply(order, event["type"], event["data"])
    return order


def apply(order, event_type, data):
    if event_type == "order_placed":
        return {"user_id": data["user_id"], "status": "placed", "items": data["items"]}
    if event_type == "item_added":
        return dict(order, items=order["items"] + [{"sku": data["sku"], "qty": data["qty"]}])
    if event_type == "order_confirmed":
        return dict(order, status="confirmed")
    return order


def item(data):
    sku, qty = data.get("sku"), data.get("qty")
    if not isinstance(sku, str) or not sku:
        raise Rejected("sku must be a non-empty string")
    if not isinstance(qty, int) or qty < 1:
        raise Rejected("qty must be a positive integer")
    return {"sku": sku, "qty": qty}


def handle_command(kind, document):
    data = document["command"]["data"]
    aggregate = document["aggregate"]
    order_id = aggregate["id"]
    order = state_of(aggregate)
    if kind == "place":
        if order is not None:
            raise Rejected(f"order {order_id} already exists")
        if not isinstance(data.get("user_id"), (str, int)):
            raise Rejected("user_id is required")
        items = [item(i) for i in data.get("items", [])]
        new = [{"type": "order_placed",
                "data": {"order_id": order_id, "user_id": data["user_id"], "items": items}}]
    else:
        if order is None:
            raise Rejected(f"order {order_id} does not exist")
        if order["status"] != "placed":
            raise Rejected(f"order {order_id} is {order['status']}")
        if kind == "add_item":
            added = item(data)
            new = [{"type": "item_added",
                    "data": dict(added, order_id=order_id, user_id=order["user_id"])}]
        elif kind == "confirm":
            if not order["items"]:
                raise Rejected(f"order {order_id} has no items")
            new = [{"type": "order_confirmed",
                    "data": {"order_id": order_id, "user_id": order["user_id"]}}]
        else:
            raise Rejected(f"unknown command {kind}")
    after = order
    for event in new:
        after = apply(after, event["type"], event["data"])
    return {"append": new,
            "reply": {"order_id": order_id, "version": aggregate["version"] + len(new),
                      "status": after["status"]},
            "snapshot": after}


def handle_projection(kind, document):
    event, state = document["event"], document["state"]
    data = event["data"]
    if kind == "summary":
        summary = state or {"order_id": data["order_id"], "user_id": data["user_id"],
                            "status": "placed", "items": []}
        if event["type"] == "order_placed":
            summary["items"] = data["items"]
        elif event["type"] == "item_added":
            summary["items"] = summary["items"] + [{"sku": data["sku"], "qty": data["qty"]}]
        elif event["type"] == "order_confirmed":
            summary["status"] = "confirmed"
        summary["quantity"] = sum(i["qty"] for i in summary["items"])
        return {"state": summary}
    if kind == "by_user":
        mine = state or {"user_id": data["user_id"], "orders": {}}
        status = "confirmed" if event["type"] == "order_confirmed" else "placed"
        if event["type"] != "item_added":
            mine["orders"][str(data["order_id"])] = status
        return {"state": mine}
    raise Rejected(f"unknown projection {kind}")


def handle_query(kind, document):
    state = document["state"]
    if state is None:
        return {"found": False, "key": document["key"]}
    return dict(state, found=True)


def main():
    kind = sys.argv[1]
    for line in sys.stdin:
        request = json.loads(line)
        document = request["input"]
        try:
            if "command" in document:
                result = handle_command(kind, document)
            elif "event" in document:
                result = handle_projection(kind, document)
            else:
                result = handle_query(kind, document)
            reply = {"ok": True, "result": result}
        except Rejected as rejected:
            reply = {"ok": False, "error": str(rejected), "retryable": False}
        except (KeyError, TypeError, ValueError) as bad:
            reply = {"ok": False, "error": f"malformed input: {bad!r}", "retryable": False}
        reply["id"] = request["id"]  # each reply answers its request by id
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
