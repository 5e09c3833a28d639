"""Queue items that are not messages a worker may run, as a hostile or broken publisher
would push them, next to good messages built as the bus builds them."""

from __future__ import annotations

import base64
import bz2
import copy
import json
from collections.abc import Callable
from typing import Any

from earnevents import Event, message

DEEP = 50_000


def good(queue: str, data: dict[str, Any] | None = None, name: str = "t.record", task_id: str | None = None) -> dict:
    """A valid message (parsed) for one event, as ``publish`` builds it."""
    event = Event(name, data or {})
    return json.loads(message.build(event.to_wire(), queue=queue, task_id=task_id or event.id))


def body(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def _with(queue: str, change: Callable[[dict], None]) -> bytes:
    m = copy.deepcopy(good(queue))
    change(m)
    return json.dumps(m).encode()


def _deep_body_item(queue: str) -> bytes:
    # The whole item nests 50,000 deep: json.loads raises RecursionError.
    m = good(queue)
    text = json.dumps({**m, "body": "BODY"})
    return text.replace('"BODY"', "[" * DEEP + "]" * DEEP).encode()


def _embedding(m: dict) -> str:
    args, kwargs, _ = json.loads(base64.b64decode(m["body"]))
    return body([args, kwargs, {"callbacks": [{"task": "celery.ping", "args": [], "kwargs": {}}]}])


def _bomb(queue: str) -> bytes:
    def change(m: dict) -> None:
        m["headers"]["compression"] = "application/x-bz2"
        m["body"] = base64.b64encode(bz2.compress(b"[" * 5_000_000)).decode()

    return _with(queue, change)


def decoy_tag(queue: str) -> bytes:
    """A valid message with one unescaped "delivery_tag" key, a decoy in its headers, and its
    real one spelled with an escape (a JSON decoder reads it as the same key): what the fetch
    script reads without decoding is not its tag."""
    m = good(queue)
    m["headers"]["delivery_tag"] = "decoy-" + m["properties"]["delivery_tag"]
    text = json.dumps(m)
    at = text.rindex('"delivery_tag"')
    return (text[:at] + '"delivery\\u005ftag"' + text[at + len('"delivery_tag"') :]).encode()


POISONS: dict[str, Callable[[str], bytes]] = {
    "not JSON": lambda q: b"\x00not json at all",
    "not UTF-8": lambda q: b'{"body": "\xff\xfe"}',
    "JSON array": lambda q: b"[1, 2, 3]",
    "item nested 50,000 deep": _deep_body_item,
    "body nested 50,000 deep": lambda q: _with(q, lambda m: m.update(body=body_text("[" * DEEP + "]" * DEEP))),
    "unknown body_encoding": lambda q: _with(q, lambda m: m["properties"].update(body_encoding="rot13")),
    "no headers.id": lambda q: _with(q, lambda m: m["headers"].pop("id")),
    "headers.id not a string": lambda q: _with(q, lambda m: m["headers"].update(id=5)),
    "headers.id forging a log line": lambda q: _with(
        q, lambda m: m["headers"].update(id="x]\n[2026-11-27 12:00:00,000: ERROR/MainProcess] forged")
    ),
    "headers.task not a string": lambda q: _with(q, lambda m: m["headers"].update(task=["earnevents.dispatch"])),
    "another task": lambda q: _with(q, lambda m: m["headers"].update(task="no.such.task")),
    "empty delivery_info": lambda q: _with(q, lambda m: m["properties"].update(delivery_info={})),
    "delivery_info without routing_key": lambda q: _with(
        q, lambda m: m["properties"]["delivery_info"].pop("routing_key")
    ),
    "delivery_info without exchange": lambda q: _with(q, lambda m: m["properties"]["delivery_info"].pop("exchange")),
    "timelimit not numbers": lambda q: _with(q, lambda m: m["headers"].update(timelimit=["a", "b"])),
    "content type pickle": lambda q: _with(q, lambda m: m.update({"content-type": "application/x-python-serialize"})),
    "unknown content type": lambda q: _with(q, lambda m: m.update({"content-type": "text/x-nonsense"})),
    "compressed (a bzip2 bomb)": _bomb,
    "eta": lambda q: _with(q, lambda m: m["headers"].update(eta="2030-01-01T00:00:00+00:00")),
    "countdown": lambda q: _with(q, lambda m: m["headers"].update(countdown=30)),
    "expires": lambda q: _with(q, lambda m: m["headers"].update(expires="2000-01-01T00:00:00+00:00")),
    "body not [args, kwargs, embed]": lambda q: _with(q, lambda m: m.update(body=body([1, 2]))),
    "body not base64": lambda q: _with(q, lambda m: m.update(body="%%% not base64")),
    "malformed event": lambda q: _with(q, lambda m: m.update(body=body([["not an event"], {}, {}]))),
    "malformed kwargs": lambda q: _with(
        q, lambda m: m.update(body=body([[{"name": "t.record"}], {"attempt": -3}, {}]))
    ),
    "embedded callback": lambda q: _with(q, lambda m: m.update(body=_embedding(m))),
    "oversized": lambda q: _with(q, lambda m: m["headers"].update(pad="x" * 300_000)),
}
"""Every shape a worker must refuse, by name (the oversized one needs a limit under 300,000 bytes)."""

MAX_SIZE = 200_000
"""The ``max_message_size`` tests use, so that "oversized" is over it and the rest under."""


def body_text(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def foreign(queue: str, other: str, data: dict[str, Any], name: str = "t.record") -> bytes:
    """A valid message taken from ``queue`` whose routing key names ``other``."""
    m = good(queue, data, name)
    m["properties"]["delivery_info"]["routing_key"] = other
    return json.dumps(m).encode()
