"""Celery task messages (protocol 2) for the one task workers run, built without Celery.

Publishers only need to put a message on a Redis list, so they build the same
envelope ``celery.app.amqp`` + ``kombu.transport.redis`` would, in microseconds and
without a synchronous broker connection. The worker side is plain Celery.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import socket
import uuid
from json.encoder import encode_basestring_ascii as _quote  # json.dumps' own (C) string writer
from typing import Any

from . import ids
from .keys import TASK_NAME

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_NAMESPACE = uuid.UUID("5d1c3c2e-7a52-4a38-9b1e-4b0f3c7e2a10")
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

SHADOW_MAX = 300
"""Characters at most of a message's ``shadow`` header (:func:`shadow_name`); workers cut
a longer one from elsewhere to this length (``worker.items``)."""

COPY_ID = "earnevents_copy_id"
"""Message property: unique to each message built (each copy), the same on every redelivery."""


def build(
    event_wire: dict[str, Any],
    *,
    queue: str,
    task_id: str,
    handler: str | None = None,
    attempt: int = 0,
    retry_policy: dict[str, Any] | None = None,
) -> str:
    """Return the JSON text of one ``earnevents.dispatch`` message for ``queue``.

    ``handler`` set: run only that handler (a retry); None: every handler of the event.
    ``attempt`` counts earlier tries of that handler (0 for a fresh event).
    """
    return _envelope([event_wire], queue, task_id, handler, attempt, retry_policy)


def build_packed(
    event_wires: list[dict[str, Any]], *, queue: str, task_id: str, retry_policy: dict[str, Any] | None = None
) -> str:
    """One message carrying several fresh events: a worker runs all their handlers.

    Each (event, handler) pair stays a job of its own (completion record, retries,
    failed-job record); only the trip through the queue is shared.
    """
    if not event_wires:
        raise ValueError("a packed message needs at least one event")
    return _envelope(event_wires, queue, task_id, None, 0, retry_policy)


def packed_id(event_ids: list[str]) -> str:
    """The id of the packed message for these events (the same for a re-send)."""
    return ids.uuid5_hex(_NAMESPACE, "packed/" + "/".join(event_ids))


def shadow_name(event_names: list[str], handler: str | None = None) -> str:
    """The name Celery's tools show for a message of these events, instead of ``earnevents.dispatch``.

    Celery's worker takes a message's ``shadow`` header as the task's name: ``celery
    inspect active`` / ``reserved``, the worker's log and task events (Flower) show it.
    A fresh event: its name (``user.created``); one handler's job (a retry, a replay,
    ``retry_job``): ``user.created -> app.handlers.welcome``; a packed message:
    ``3 events: user.created, user.deleted`` (each name once, in order). At most
    :data:`SHADOW_MAX` characters (a long list ends with ``...``).
    """
    if len(event_names) == 1:
        name = event_names[0] if handler is None else f"{event_names[0]} -> {handler}"
        return name if len(name) <= SHADOW_MAX else name[: SHADOW_MAX - 3] + "..."
    text = f"{len(event_names)} events: "
    for index, name in enumerate(dict.fromkeys(event_names)):
        part = name if index == 0 else ", " + name
        if len(text) + len(part) > SHADOW_MAX - 5:
            return text + (", ..." if index else "...")
        text += part
    return text


def _envelope(
    event_wires: list[dict[str, Any]],
    queue: str,
    task_id: str,
    handler: str | None,
    attempt: int,
    retry_policy: dict[str, Any] | None,
) -> str:
    # The text json.dumps(envelope, separators=(",", ":")) gives for the envelope that
    # _envelope_fields describes, written into the queue's template (built once per queue).
    body = _COMPACT.encode(
        [event_wires, {"handler": handler, "attempt": attempt, "retry_policy": retry_policy}, _EMBED]
    )
    first = event_wires[0]
    label = f"{first['name']} {first['id']}"
    if len(event_wires) > 1:
        label += f" and {len(event_wires) - 1} more"
    shadow = shadow_name([wire["name"] for wire in event_wires], handler)
    kwargsrepr = (
        _FRESH_KWARGSREPR if handler is None and attempt == 0 else repr({"handler": handler, "attempt": attempt})
    )
    quoted_id = _quote(task_id)
    parts = _template(queue)
    return "".join(
        (
            parts[0],
            base64.b64encode(body.encode("utf-8")).decode("ascii"),
            parts[1],
            quoted_id,
            parts[2],
            _quote(shadow),
            parts[3],
            str(attempt),
            parts[4],
            quoted_id,
            parts[5],
            _quote(f"[{label!r}]"),
            parts[6],
            _quote(kwargsrepr),
            parts[7],
            quoted_id,
            parts[8],
            ids.uuid4_str(),
            parts[9],
            ids.uuid4_hex(),
            parts[10],
        )
    )


def _envelope_fields(
    queue: str,
    body: str,
    task_id: str,
    shadow: str,
    retries: Any,
    argsrepr: str,
    kwargsrepr: str,
    delivery_tag: str,
    copy_id: str,
) -> dict[str, Any]:
    """The Celery protocol-2 envelope (as kombu's Redis transport stores it); ``body`` base64."""
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": TASK_NAME,
            "id": task_id,
            "shadow": shadow,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": retries,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": argsrepr,
            "kwargsrepr": kwargsrepr,
            "origin": _ORIGIN,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag,
            # Kept as is when the message is given back to the queue (its delivery tag is
            # then replaced): the worker's claims on the message's jobs are owned by it.
            COPY_ID: copy_id,
        },
    }


_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""What ``json.dumps(..., separators=(",", ":"))`` uses, made once (json.dumps makes one per call)."""

_FRESH_KWARGSREPR = repr({"handler": None, "attempt": 0})

_HOLE = "\x00earnevents-hole-{}\x00"
"""A placeholder value in :func:`_template`; JSON writes its NUL characters as ``\\u0000``."""

_RAW_HOLES = frozenset({"body", "delivery_tag", "copy_id"})
"""Holes whose values :func:`_envelope` writes without quoting (base64, hex, dashes): the
template keeps their quotes."""

_JOIN_ORDER: tuple[str, ...] = (
    "body",
    "task_id",
    "shadow",
    "retries",
    "task_id",
    "argsrepr",
    "kwargsrepr",
    "task_id",
    "delivery_tag",
    "copy_id",
)


@functools.lru_cache(maxsize=256)
def _template(queue: str) -> tuple[str, ...]:
    """The envelope text of ``queue`` cut where the per-message values go, in the order
    :func:`_envelope` writes them (``_JOIN_ORDER``): one piece more than values."""
    names = ("body", "task_id", "shadow", "retries", "argsrepr", "kwargsrepr", "delivery_tag", "copy_id")
    text = json.dumps(_envelope_fields(queue, **{name: _HOLE.format(name) for name in names}), separators=(",", ":"))
    for name in names:  # a control character marks each cut: JSON text has none of its own
        hole = json.dumps(_HOLE.format(name))
        text = text.replace(hole, f'"\x01{name}\x01"' if name in _RAW_HOLES else f"\x01{name}\x01")
    pieces = text.split("\x01")
    if tuple(pieces[1::2]) != _JOIN_ORDER:  # pragma: no cover - the envelope's fields changed
        raise AssertionError(f"envelope template out of step: {pieces[1::2]}")
    return tuple(pieces[0::2])


_COPY_FIELD = f'"{COPY_ID}":"'
"""``"earnevents_copy_id":"`` as :func:`_envelope` writes it (unique in the text: the
envelope is JSON, so that sequence cannot stand inside one of its string values)."""


_TAG_FIELD = '"delivery_tag":"'
"""``"delivery_tag":"`` as :func:`_envelope` writes it (unique in the text, as :data:`_COPY_FIELD`)."""


def new_copy(payload: str) -> str:
    """``payload`` (from :func:`build`) as another copy: a new copy id and a new delivery tag,
    all else the same.

    Pushing a message again after an attempt whose outcome is unknown (its reply was
    lost), or relaying it again, makes a second copy: with a copy id of its own the
    worker's job claims run each handler once even when both copies run at once. The
    delivery tag names a message's unacknowledged record: two copies sharing one would
    share that record, so acknowledging the copy skipped as held would erase the record
    of the copy running its jobs, and a worker dying with that one would lose it.
    """
    return _with_value(_with_value(payload, _COPY_FIELD, ids.uuid4_hex()), _TAG_FIELD, ids.uuid4_str())


def _with_value(payload: str, field: str, value: str) -> str:
    """``payload`` with the string value after ``field`` replaced (as it is if ``field`` is absent)."""
    start = payload.find(field)
    if start < 0:
        return payload
    start += len(field)
    end = payload.index('"', start)
    return payload[:start] + value + payload[end:]


def parse(payload: str | bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The event (wire form) and keyword arguments of a message :func:`build` made."""
    events, kwargs = parse_packed(payload)
    return events[0], kwargs


def parse_packed(payload: str | bytes) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The events (wire form) and keyword arguments of any message this module built."""
    envelope = json.loads(payload)
    args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    return args, kwargs


def new_task_id() -> str:
    return ids.uuid4_hex()


def derived_id(kind: str, event_id: str, handler: str, attempt: int) -> str:
    """The same id for the same (kind, event, handler, attempt).

    Workers use it for retry messages and failed-job records, so settling one
    failure twice (after a Redis hiccup) schedules one retry and keeps one record.
    """
    return ids.uuid5_hex(_NAMESPACE, f"{kind}/{event_id}/{handler}/{attempt}")
