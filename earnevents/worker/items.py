"""Checking a queue item before kombu and Celery see it.

kombu and Celery trust what they take from the queue: an item that is not JSON, has
an unknown body encoding, lacks ``headers.id`` or ``delivery_info``, carries a
``timelimit`` that is not numbers, a compressed body (kombu decompresses it while
building the message: a 337-byte bzip2 bomb grew a worker by 400 MB), an ``eta``
(Celery would hold it in worker memory), and so on, either stops the worker,
loops it, or is taken as unacknowledged and never acknowledged (one prefetch slot
held for good). :func:`check` refuses every such item, with the reason, before
anything is parsed by kombu or recorded as unacknowledged, so the transport can
acknowledge it and file it as a dead letter. It is pure: no Redis, no Celery.

An accepted message's ``shadow`` header (the name Celery's tools show for the task)
is escaped and cut to length (:func:`shown_name`). The message is returned with its
``delivery_info`` naming the queue it was taken from (empty exchange, routing key =
that queue): kombu's restore pushes an
unacknowledged message back onto the routing key it recorded, and the dispatch
task files failures under the routing key, so an item naming another queue is
handled as the consuming queue's, never filed under the other.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kombu.utils.json import object_hook

from ..event import Event
from ..keys import TASK_NAME
from ..logtext import escape
from ..message import SHADOW_MAX
from ..names import is_event_id
from .jobs import Job

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
BODY_ENCODING = "base64"

_STR_HEADERS = ("shadow", "root_id", "parent_id", "group", "origin", "argsrepr", "kwargsrepr", "lang")
"""Headers Celery reads (names, ids, log text): absent, null or a string."""

_DELAY_HEADERS = ("eta", "countdown")
_EMBED_KEYS = ("callbacks", "errbacks", "chain", "chord")


_DECODER = json.JSONDecoder(object_hook=object_hook)
"""kombu's JSON decoding (its ``loads`` is ``json.loads`` with this object hook), built once:
``json.loads`` with an object hook builds a new decoder on every call."""


def loads(text: str) -> Any:
    """kombu's ``loads`` of a str: what kombu and Celery make of the same text."""
    return _DECODER.decode(text)


@dataclass(frozen=True)
class Checked:
    """A queue item :func:`check_decoded` accepted."""

    message: dict[str, Any]
    """The parsed kombu message (as :func:`check` returns it)."""
    body: bytes | None = None
    """Its body, base64-decoded (None: a remote-control reply, whose body is not looked into)."""
    decoded: Any = None
    """The body's JSON, Celery's ``[args, kwargs, embed]``."""
    events: tuple[Event, ...] | None = None
    """Its events (the task's ``args``) as the check decoded them: the loop hand-off builds its
    jobs from these instead of decoding each event again (``worker.app``)."""


@dataclass(frozen=True)
class Refused:
    """Why a queue item is not a message the worker runs."""

    reason: str
    task_id: str | None = None
    """The item's ``headers.id`` when it has a string one (for logs and the dead letter)."""


CONTROL_QUEUE_SUFFIX = ".pidbox"
"""kombu names the reply queues of Celery's remote control (``celery control ...``,
``inspect``) ``<id>.reply.<namespace>.pidbox``: they carry replies, not tasks."""


def is_control_queue(queue: str) -> bool:
    """Whether ``queue`` carries Celery's remote-control replies rather than task messages."""
    return queue.endswith(CONTROL_QUEUE_SUFFIX)


def check(item: bytes | str, queue: str, max_size: int) -> dict[str, Any] | Refused:
    """The parsed kombu message in ``item`` taken from ``queue``, or why it is refused.

    The size is checked first, on the raw bytes: an oversized item is never parsed.
    Items of a remote-control reply queue (:func:`is_control_queue`) get the envelope
    checks only: they are replies to ``celery control``, not earnevents tasks.
    """
    checked = check_decoded(item, queue, max_size)
    return checked if isinstance(checked, Refused) else checked.message


def check_decoded(item: bytes | str, queue: str, max_size: int) -> Checked | Refused:
    """:func:`check`, keeping the body it decoded (the transport hands it to kombu's message,
    which then does not decode it again)."""
    data = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
    if len(data) > max_size:
        return Refused(f"{len(data)} bytes, over the maximum message size of {max_size} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Refused(f"not UTF-8 text: {exc}")
    try:
        message = loads(text)
    except RecursionError:
        return Refused("not a message: JSON nested too deeply")
    except Exception as exc:  # json's and kombu's object hook's errors alike
        return Refused(f"not JSON: {exc}")
    if not isinstance(message, dict):
        return Refused(f"not a message: a JSON {type(message).__name__}, not an object")
    headers = message.get("headers")
    task_id = headers.get("id") if isinstance(headers, dict) else None
    task_id = task_id if isinstance(task_id, str) and task_id else None
    if is_control_queue(queue):
        problem = envelope_problem(message)
        return Checked(message) if problem is None else Refused(problem, task_id)
    problem = _envelope_problem(message)
    if problem is not None:
        return Refused(problem, task_id)
    body = _body(message, queue)
    if isinstance(body, str):
        return Refused(body, task_id)
    properties = message["properties"]
    properties["delivery_info"] = {**properties["delivery_info"], "exchange": "", "routing_key": queue}
    headers = message["headers"]
    if isinstance(headers.get("shadow"), str):
        headers["shadow"] = shown_name(headers["shadow"])
    return Checked(message, *body)


def shown_name(shadow: str) -> str:
    """A message's ``shadow`` header as the worker lets Celery show it (the task's name).

    Celery writes the name into its log lines (``Task <name>[<id>] received``) and its
    task events unfiltered: control characters and line breaks are escaped (a message
    from elsewhere cannot forge a log line) and the name is cut to
    :data:`~earnevents.message.SHADOW_MAX` characters.
    """
    shown = escape(shadow)
    return shown if len(shown) <= SHADOW_MAX else shown[: SHADOW_MAX - 3] + "..."


def envelope_problem(message: Any) -> str | None:
    """Why ``message`` (a parsed item) cannot be given to kombu, or None.

    The envelope checks only, for messages that did not come through :func:`check`
    (broadcast messages on kombu's fanout channels).
    """
    if not isinstance(message, dict):
        return f"a JSON {type(message).__name__}, not an object"
    properties = message.get("properties")
    if not isinstance(properties, dict) or not isinstance(properties.get("delivery_tag"), str):
        return "no properties.delivery_tag"
    if not isinstance(message.get("headers", {}), dict):
        return "headers is not an object"
    body = message.get("body")
    if not isinstance(body, str):
        return "no string body"
    encoding = properties.get("body_encoding")
    if encoding is not None and encoding != BODY_ENCODING:
        return f"unknown body encoding {encoding!r}"
    if encoding == BODY_ENCODING:
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "body is not valid base64"
    return None


def _envelope_problem(message: dict[str, Any]) -> str | None:
    headers = message.get("headers")
    if not isinstance(headers, dict):
        return "no headers object"
    properties = message.get("properties")
    if not isinstance(properties, dict):
        return "no properties object"
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return "properties.delivery_tag missing or not a string"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not isinstance(info.get("exchange"), str):
        return "properties.delivery_info missing or without an exchange"
    if not isinstance(info.get("routing_key"), str):
        return "properties.delivery_info without a routing_key"
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id:
        return "headers.id missing or not a string"
    if not is_event_id(task_id):  # Celery writes it unescaped in its log lines ("Task ...[<id>] received")
        return "headers.id is not 1-200 printable ASCII characters (no spaces): earnevents makes no other"
    task = headers.get("task")
    if not isinstance(task, str):
        return "headers.task missing or not a string"
    if task != TASK_NAME:
        return f"headers.task is {task[:200]!r}, not {TASK_NAME!r}"
    if headers.get("compression") is not None:
        return f"compressed ({str(headers['compression'])[:50]!r}): refused without decompressing"
    for name in _DELAY_HEADERS:
        if headers.get(name) is not None:
            return (
                f"has headers.{name}: earnevents delays events in its Redis schedule "
                "(publish(delay=...)), a worker never holds one in memory"
            )
    if headers.get("expires") is not None:
        return "has headers.expires: earnevents messages never expire"
    problem = _timelimit_problem(headers.get("timelimit"))
    if problem is not None:
        return problem
    for name in _STR_HEADERS:
        if not isinstance(headers.get(name), (str, type(None))):
            return f"headers.{name} is not a string"
    retries = headers.get("retries")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)):
        return "headers.retries is not a whole number"
    content_type = message.get("content-type")
    if content_type != CONTENT_TYPE:
        return f"content type {str(content_type)[:100]!r} is not {CONTENT_TYPE!r}"
    content_encoding = message.get("content-encoding")
    if not isinstance(content_encoding, str) or content_encoding.lower() != CONTENT_ENCODING:
        return f"content encoding {str(content_encoding)[:100]!r} is not {CONTENT_ENCODING!r}"
    encoding = properties.get("body_encoding")
    if encoding != BODY_ENCODING:
        return f"unknown body encoding {str(encoding)[:100]!r} (expected {BODY_ENCODING!r})"
    if not isinstance(message.get("body"), str):
        return "no string body"
    return None


def _timelimit_problem(timelimit: Any) -> str | None:
    if timelimit is None:
        return None
    if not isinstance(timelimit, list) or len(timelimit) != 2:
        return "headers.timelimit is not [soft, hard]"
    for limit in timelimit:
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit < 0:
            return "headers.timelimit is not [soft, hard] numbers of seconds"
    return None


def _body(message: dict[str, Any], queue: str) -> tuple[bytes, list[Any], tuple[Event, ...]] | str:
    """The body (raw, decoded, its events) if it is the ``[args, kwargs, embed]`` of an
    earnevents dispatch; else why not."""
    try:
        raw = base64.b64decode(message["body"], validate=True)
    except (binascii.Error, ValueError):
        return "body is not valid base64"
    try:
        body = loads(raw.decode("utf-8"))
    except RecursionError:
        return "body is JSON nested too deeply"
    except Exception as exc:
        return f"body is not JSON: {exc}"
    if not isinstance(body, list) or len(body) != 3:
        return "body is not Celery's [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(embed, (dict, type(None))):
        return "body is not Celery's [args, kwargs, embed]"
    if embed and any(embed.get(key) is not None for key in _EMBED_KEYS):
        return "body embeds callbacks, errbacks, a chain or a chord (earnevents messages carry none)"
    events = _arguments_events(args, kwargs, queue)
    return (raw, body, events) if isinstance(events, tuple) else events


def _arguments_events(args: list[Any], kwargs: Mapping[str, Any], queue: str) -> tuple[Event, ...] | str:
    """The dispatch task's own checks of its arguments (see ``worker.app``), ahead of time:
    the events they carry, or why they are malformed."""
    if not args:
        return "malformed task arguments: no event"
    if len(args) > 1 and kwargs.get("handler") is not None:
        return "malformed task arguments: a retry message carries one event"
    try:
        return tuple(Job.from_message(event, kwargs, queue).event for event in args)
    except RecursionError:
        return "malformed task arguments: event data nested too deeply"
    except Exception as exc:  # anything the event codec or the retry policy refuses
        return f"malformed task arguments: {exc}"
