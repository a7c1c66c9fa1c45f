#!/usr/bin/env python3
"""notify_server: the notification service of the order choreography
(config/examples/ecommerce.toml), as the HTTP endpoint of a jetrun `http`
function. Standard library only.

    python3 functions/examples/notify_server.py [PORT]

PORT comes from the first argument, else env NOTIFY_PORT, else 8099; the
server listens on 127.0.0.1 and prints `notify_server listening on
http://127.0.0.1:PORT/notify` once it does.

jetrun POSTs each `order.shipped` or `order.cancelled` event to /notify in
CloudEvents HTTP binary mode: the body is the event's data, the attributes
are `ce-*` headers (`ce-type`, `ce-id`, `ce-correlationid`, ...). The server
prints the notification it would send to the customer and answers 200 with
the event to emit:

    {"emit": [{"type": "notification.sent", "data": {"order_id": 7, "channel": "email", ...}}]}

A body that is not a JSON object with an order_id, or an event type it does
not know, gets 400: a permanent failure, so jetrun dead-letters it at once.
jetrun may call again for the same event (after a timeout, say); the
notification.sent it emits then has the same id, and the stream keeps one.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_PORT = 8099


def notification(event_type, data):
    """The message for one event, or None for a type this service ignores."""
    order_id = data["order_id"]
    if event_type == "order.shipped":
        tracking = data.get("tracking", "(no tracking number)")
        return "order-shipped", f"Your order {order_id} is on its way; tracking number {tracking}."
    if event_type == "order.cancelled":
        reason = data.get("reason", "no reason given")
        return "order-cancelled", f"Your order {order_id} was cancelled: {reason}."
    return None


class Notify(BaseHTTPRequestHandler):
    # Keep-alive, so jetrun can reuse its connection.
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path != "/notify":
            return self.answer(404, {"error": f"no endpoint {self.path}; POST to /notify"})
        event_type = self.headers.get("ce-type", "")
        try:
            data = json.loads(body)
        except ValueError as err:
            return self.answer(400, {"error": f"the body is not JSON: {err}"})
        if not isinstance(data, dict) or "order_id" not in data:
            return self.answer(400, {"error": "the body has no order_id"})
        found = notification(event_type, data)
        if found is None:
            return self.answer(400, {"error": f"no notification for {event_type!r} events"})
        template, message = found
        correlation = self.headers.get("ce-correlationid", "-")
        print(
            f"notify_server: to the customer of order {data['order_id']}: {message}"
            f" (event {self.headers.get('ce-id', '-')}, correlation {correlation})",
            flush=True,
        )
        sent = {
            "order_id": data["order_id"],
            "channel": "email",
            "template": template,
            "message": message,
        }
        self.answer(200, {"emit": [{"type": "notification.sent", "data": sent}]})

    def answer(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        print(f"notify_server: {format % args}", file=sys.stderr, flush=True)


def main():
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NOTIFY_PORT", DEFAULT_PORT))
    server = ThreadingHTTPServer(("127.0.0.1", port), Notify)
    print(f"notify_server listening on http://127.0.0.1:{port}/notify", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
