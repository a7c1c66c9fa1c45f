"""Write jetrun exec functions as plain Python functions.

jetrun runs an exec function in one of two ways (``mode`` in the config): a
process per event, which reads its input on stdin and exits 0, 65 or
anything else, or long-lived workers speaking one JSON line each way. This
module speaks both; a decorated function does not know which one runs it::

    import jetrun

    @jetrun.handler
    def ship(event):
        order = jetrun.data(event)
        if "order_id" not in order:
            raise jetrun.Permanent("the order has no order_id")
        print("shipping", order["order_id"])      # goes to jetrun's log
        return [jetrun.emit("order.shipped", {"order_id": order["order_id"]})]

    if __name__ == "__main__":
        ship.run()

The decorators say what the function is (its arguments and what it
returns); the environment jetrun gives the process says how it runs:

- ``@handler``: a stream function; gets the event (a CloudEvent as a dict),
  returns the events to emit (a list, or None for none).
- ``@request``: a plain request function; gets the request as a CloudEvent,
  returns the reply (any JSON value).
- ``@aggregate``: an aggregate's command handler; gets the command and the
  instance (an ``Aggregate``), returns a ``Decision``.
- ``@projection``: a projection; gets the event, its key and the stored
  state, returns the new state or ``DELETE``.
- ``@query``: a query on a projection; gets the request, its key and the
  stored state, returns the reply.

``Permanent`` fails the event for good (exit status 65, or ``"retryable":
false``): it is dead-lettered at once, or answered 400. Any other exception
is a retryable failure, retried by the function's retry policy. Stdout
belongs to the protocol: the SDK points ``print``, ``sys.stdout`` and file
descriptor 1 (what child processes inherit) at stderr, which jetrun logs,
and stdin at /dev/null, before calling the function.

A ``@handler`` of a function with ``batch`` in its config needs no change:
the SDK calls it once per event of the batch and answers per item
(``{"results": [...]}``), so one event that raises fails alone.

The mode: jetrun sets ``JETRUN_ATTEMPT`` for a process it starts for one
event, and only ``JETRUN_FUNCTION`` for a worker. So with
``JETRUN_FUNCTION`` set and ``JETRUN_ATTEMPT`` unset the process serves the
worker protocol; otherwise it handles the one input on its stdin, which is
also how to try a function by hand::

    echo '{"id": "1", "type": "order.placed", "data": {"order_id": 7}}' | python3 ship.py

docs/functions.md in the jetrun repository is the whole contract.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, Iterable, List, Optional, Union

__all__ = [
    "Aggregate",
    "DELETE",
    "Decision",
    "Event",
    "Permanent",
    "aggregate",
    "attempt",
    "data",
    "emit",
    "handler",
    "projection",
    "query",
    "request",
]

__version__ = "0.1.0"

#: A CloudEvent in structured JSON, as a dict: ``id``, ``source``, ``type``,
#: ``data`` (or ``data_base64``), ``correlationid``, ...
Event = Dict[str, Any]

#: The exit status of a per-event process whose input is bad (sysexits.h
#: ``EX_DATAERR``): jetrun dead-letters the event without retrying it.
EXIT_PERMANENT = 65

#: The exit status of a per-event process that failed otherwise: retried.
EXIT_RETRY = 1


class Permanent(Exception):
    """The input can never succeed as sent: do not retry it.

    A stream event is dead-lettered at once (``Jetrun-Reason: permanent``,
    the message in ``Jetrun-Error``); a request is answered with error 400
    and the message.
    """


class _Delete:
    def __repr__(self) -> str:
        return "jetrun.DELETE"


#: What a projection returns to delete its key.
DELETE: Any = _Delete()


def emit(
    event_type: str,
    data: Any = None,
    subject: Optional[str] = None,
    *,
    delay: Union[None, str, datetime.timedelta] = None,
    at: Union[None, str, datetime.datetime] = None,
) -> Dict[str, Any]:
    """An event to emit (or, without ``subject``, ``delay`` and ``at``, to
    append to an aggregate).

    It is published on ``subject``, else on the subject named like its type:
    at once, or, with ``delay`` (``"10m"`` or a ``timedelta``), that long
    after the call, or, with ``at`` (RFC 3339 or an aware ``datetime``), at
    that time: a delayed event (docs/schedules.md).
    """
    out: Dict[str, Any] = {"type": event_type, "data": data}
    if subject is not None:
        out["subject"] = subject
    if delay is not None and at is not None:
        raise TypeError("an emit has either delay or at, not both")
    if isinstance(delay, datetime.timedelta):
        delay = f"{max(0, round(delay.total_seconds() * 1000))}ms"
    if delay is not None:
        out["delay"] = delay
    if isinstance(at, datetime.datetime):
        if at.tzinfo is None:
            raise TypeError(f"an emit's at needs a time zone (an aware datetime), got {at!r}")
        at = at.isoformat()
    if at is not None:
        out["at"] = at
    return out


def data(event: Event) -> Any:
    """The event's data: its JSON value, or bytes when it was not JSON
    (``data_base64`` decoded), or None when it has none."""
    if "data" in event:
        return event["data"]
    if "data_base64" in event:
        return base64.b64decode(event["data_base64"])
    return None


_attempt = 1


def attempt() -> int:
    """The attempt being made at the current input: 1 first, 2 at the first
    retry, ... (a request is always attempt 1)."""
    return _attempt


@dataclass(frozen=True)
class Aggregate:
    """An aggregate instance as jetrun loaded it for a command."""

    #: The instance, as the command's data names it.
    id: str
    #: The number of events in the instance (0 for a new one).
    version: int
    #: The events after the snapshot (all of them without one), oldest
    #: first, as CloudEvent dicts.
    history: List[Event]
    #: The state a previous command returned as its ``snapshot``, or None.
    snapshot: Any = None

    def state(self, apply: Callable[[Any, Event], Any], initial: Any = None) -> Any:
        """The instance's state: ``apply(state, event)`` over each event of
        ``history``, starting from the snapshot (``initial`` when there is
        none)."""
        state = initial if self.snapshot is None else self.snapshot
        for event in self.history:
            state = apply(state, event)
        return state


@dataclass
class Decision:
    """What a command handler decides."""

    #: Events to append to the instance (``emit(type, data)``), all or none.
    append: List[Dict[str, Any]] = field(default_factory=list)
    #: The reply to the command; None: ``{"version": n, "appended": k}``.
    reply: Any = None
    #: The instance's state after the append, stored as its snapshot when
    #: the instance crosses a multiple of ``snapshot_every``.
    snapshot: Any = None

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"append": [_new_event(e) for e in self.append]}
        if self.reply is not None:
            out["reply"] = self.reply
        if self.snapshot is not None:
            out["snapshot"] = self.snapshot
        return out


def _new_event(event: Any) -> Dict[str, Any]:
    if not isinstance(event, dict) or set(event) - {"type", "data"}:
        raise TypeError(f"an appended event is jetrun.emit(type, data) without subject, got {event!r}")
    return _checked_emit(event)


def _checked_emit(event: Any) -> Dict[str, Any]:
    if not isinstance(event, dict):
        raise TypeError(f"an emit is jetrun.emit(type, data, subject=None), got {event!r}")
    unknown = set(event) - {"type", "data", "subject", "delay", "at"}
    if unknown:
        raise TypeError(f"an emit has only type, data, subject, delay and at; got {sorted(unknown)}")
    if not isinstance(event.get("type"), str) or not event["type"]:
        raise TypeError(f"an emit needs a non-empty type, got {event!r}")
    for key in ["subject", "delay", "at"]:
        if key in event and not isinstance(event[key], str):
            raise TypeError(f"an emit's {key} is a string, got {event[key]!r}")
    return event


class Function:
    """A decorated function: call it like the original (in tests), or
    ``run()`` it as jetrun's exec function."""

    def __init__(self, func: Callable[..., Any], kind: str, answers: bool):
        self.func = func
        self.kind = kind
        #: Whether jetrun treats it as a function that answers: its input is
        #: a document (``input`` in worker requests) and its output a result.
        self.answers = answers
        self.__name__ = getattr(func, "__name__", kind)
        self.__doc__ = getattr(func, "__doc__", None)
        self.__wrapped__ = func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<jetrun.{self.kind} {self.__name__}>"

    def answer(self, document: Any) -> Any:
        """The JSON value this function gives for one input: the emit list
        (``{"emit": [...]}``) of a handler, the result of the others."""
        raise NotImplementedError

    def run(self) -> None:
        """Serves jetrun: a worker when jetrun started this process as one
        (``JETRUN_FUNCTION`` set, ``JETRUN_ATTEMPT`` not), else the one
        input on stdin. Never returns: exits with the outcome's status."""
        out = _take_stdio()
        if _worker_mode(os.environ):
            sys.exit(_serve_worker(self, out))
        sys.exit(_serve_once(self, out))


class _Handler(Function):
    def answer(self, document: Any) -> Any:
        emits = self.func(document)
        if emits is None:
            return {"emit": []}
        if isinstance(emits, (dict, str, bytes)):
            raise TypeError(
                "a handler returns a list of jetrun.emit(...) (or None), "
                f"got {type(emits).__name__}"
            )
        return {"emit": [_checked_emit(e) for e in emits]}


class _Request(Function):
    def answer(self, document: Any) -> Any:
        return self.func(document)


class _Aggregate(Function):
    def answer(self, document: Any) -> Any:
        found = document["aggregate"]
        instance = Aggregate(
            id=found["id"],
            version=found["version"],
            history=found.get("history") or [],
            snapshot=found.get("snapshot"),
        )
        decision = self.func(document["command"], instance)
        if isinstance(decision, Decision):
            return decision.to_json()
        raise TypeError(
            f"a command handler returns a jetrun.Decision, got {type(decision).__name__}"
        )


class _Projection(Function):
    def answer(self, document: Any) -> Any:
        state = self.func(document["event"], document["key"], document["state"])
        if state is DELETE:
            return {"delete": True}
        if state is None:
            raise TypeError(
                "a projection returns the new state, or jetrun.DELETE to delete the key; "
                "got None (a missing return?)"
            )
        return {"state": state}


class _Query(Function):
    def answer(self, document: Any) -> Any:
        return self.func(document["request"], document["key"], document["state"])


def handler(func: Callable[[Event], Optional[Iterable[Dict[str, Any]]]]) -> Function:
    """A stream function: ``func(event)`` returns the events to emit."""
    return _Handler(func, "handler", answers=False)


def request(func: Callable[[Event], Any]) -> Function:
    """A plain request function: ``func(request)`` returns the reply."""
    return _Request(func, "request", answers=True)


def aggregate(func: Callable[[Event, Aggregate], Decision]) -> Function:
    """An aggregate's command handler: ``func(command, aggregate)`` returns
    a ``Decision``."""
    return _Aggregate(func, "aggregate", answers=True)


def projection(func: Callable[[Event, str, Any], Any]) -> Function:
    """A projection: ``func(event, key, state)`` returns the new state of
    the key, or ``DELETE``."""
    return _Projection(func, "projection", answers=True)


def query(func: Callable[[Event, str, Any], Any]) -> Function:
    """A query on a projection: ``func(request, key, state)`` returns the
    reply."""
    return _Query(func, "query", answers=True)


def _worker_mode(env: Dict[str, str]) -> bool:
    return "JETRUN_FUNCTION" in env and "JETRUN_ATTEMPT" not in env


def _take_stdio() -> IO[str]:
    """Keeps stdout for the protocol alone: returns it as a private file and
    points fd 1, ``sys.stdout`` and ``print`` at stderr. Stdin is read by
    the SDK only: fd 0 moves aside (``sys.stdin`` reads it) and /dev/null
    takes its place for anything the function starts."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    protocol_in = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = os.fdopen(protocol_in, "r", encoding="utf-8", newline="\n")
    return out


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(message: str) -> str:
    return " ".join(message.split()) or "failed"


def _batch_result(function: Function, event: Event, item_id: Any) -> Dict[str, Any]:
    """One item of a batch through the function: its entry in ``results``."""
    try:
        answer = function.answer(event)
        # Checked here: NaN and Infinity fail this item, not the batch.
        json.dumps(answer, allow_nan=False)
        return {"id": item_id, "ok": True, "emit": answer["emit"]}
    except Permanent as failure:
        message = _one_line(str(failure))
        _log(message)
        return {"id": item_id, "error": message, "permanent": True}
    except Exception as err:
        traceback.print_exc()
        return {"id": item_id, "error": _one_line(f"{type(err).__name__}: {err}")}


def _serve_batch(
    function: Function, events: List[Any], ids: List[Any], attempts: Optional[List[int]] = None
) -> str:
    """A batch (``batch`` in the config): each event through the function in
    turn (``attempt()`` is its own in a worker), answered per item as
    ``{"results": [...]}``."""
    global _attempt
    results = []
    for n, (event, item_id) in enumerate(zip(events, ids)):
        if attempts is not None:
            _attempt = attempts[n]
        results.append(_batch_result(function, event, item_id))
    sys.stderr.flush()
    return json.dumps({"results": results}, allow_nan=False)


def _serve_once(function: Function, out: IO[str]) -> int:
    """One input on stdin, the outcome as the exit status and stdout."""
    global _attempt
    try:
        _attempt = int(os.environ.get("JETRUN_ATTEMPT", "1"))
    except ValueError:
        _attempt = 1
    text = sys.stdin.read()
    try:
        document = json.loads(text)
    except ValueError as err:
        _log(f"the input on stdin is not JSON: {err}")
        return EXIT_PERMANENT
    if isinstance(document, list) and not function.answers:
        # A batch: the events as a JSON array; results per item on stdout.
        ids = [e.get("id") if isinstance(e, dict) else None for e in document]
        out.write(_serve_batch(function, document, ids) + "\n")
        out.flush()
        return 0
    try:
        # NaN and Infinity are not JSON: a ValueError here, retried.
        answer = json.dumps(function.answer(document), allow_nan=False)
    except Permanent as failure:
        _log(_one_line(str(failure)))
        return EXIT_PERMANENT
    except Exception:
        # The traceback's last line, "ValueError: ...", is what jetrun
        # puts in the failure.
        traceback.print_exc()
        sys.stderr.flush()
        return EXIT_RETRY
    out.write(answer + "\n")
    out.flush()
    return 0


def _serve_worker(function: Function, out: IO[str]) -> int:
    """Requests on stdin, one JSON line each, until stdin closes."""
    global _attempt
    key = "input" if function.answers else "event"
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if isinstance(req, list) and not function.answers:
                # A batch: one line of requests, one line of results.
                events = [r["event"] for r in req]
                ids = [r["id"] for r in req]
                attempts = [r.get("attempt", 1) for r in req]
                out.write(_serve_batch(function, events, ids, attempts) + "\n")
                out.flush()
                continue
            request_id = req["id"]
        except (ValueError, KeyError, TypeError) as err:
            # No id to answer: jetrun replaces a worker that does not reply.
            _log(f"not a jetrun worker request ({err}): {line[:200]!r}")
            return EXIT_RETRY
        _attempt = req.get("attempt", 1)
        try:
            answer = function.answer(req[key])
            if function.answers:
                reply = {"id": request_id, "ok": True, "result": answer}
            else:
                reply = {"id": request_id, "ok": True, "emit": answer["emit"]}
            text = json.dumps(reply, allow_nan=False)
        except Permanent as failure:
            message = _one_line(str(failure))
            _log(message)
            text = json.dumps({"id": request_id, "ok": False, "error": message, "retryable": False})
        except Exception as err:
            traceback.print_exc()
            message = _one_line(f"{type(err).__name__}: {err}")
            text = json.dumps({"id": request_id, "ok": False, "error": message, "retryable": True})
        sys.stderr.flush()
        out.write(text + "\n")
        out.flush()
    return 0
