"""The event log in Redis: one hash per event plus sorted-set indexes by publish time.

The record ``keys.eventlog_record(id)`` holds ``event`` (the event's JSON wire form),
``queue``, ``published_at`` / ``due_at`` / ``cancelled_at`` / ``dispatched_at`` (unix
seconds) and one ``h:<handler>`` field per handler (its entry as JSON). Every change
sets its own fields only (HSET, or HSETNX for the event's fields a worker fills in),
so changes commute. The key expires ``ttl`` seconds after it was published (a delayed
event: after it is due), renewed by each later change. The queue's indexes (all, by
name, by sender) are scored by publish time; entries older than ``ttl`` are trimmed
whenever events are added, and entries whose record expired are skipped.

:func:`commands` turns changes into pipeline calls that blocking and asyncio clients
run alike (the worker's writer thread uses the former).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from .. import keys, names
from ..event import Event
from .base import DEFAULT_TTL, check_query
from .record import Change, Completed, EventRecord, HandlerChange, Published

HANDLER_FIELD = "h:"
"""Prefix of the hash fields holding one handler's entry each."""

COMPLETED_FIELD = "c:"
"""Prefix of the hash fields marking a handler found completed by a later delivery."""

SCAN_BATCH = 200
"""Index entries read per round while a query filters by status (or by name and sender)."""

Command = tuple[str, tuple[Any, ...], dict[str, Any]]


def _wire(event: Event) -> str:
    return json.dumps(event.to_wire(), separators=(",", ":"))


def _indexes(queue: str, event: Event) -> list[str]:
    out = [keys.eventlog_index(queue), keys.eventlog_by_name(queue, event.name)]
    sender = event.sender
    if sender is not None:
        out.append(keys.eventlog_by_sender(queue, sender))
    return out


def commands(changes: Sequence[Change], ttl: float, now: float | None = None) -> list[Command]:
    """The Redis calls applying ``changes`` in order (``getattr(pipeline, name)(*args, **kwargs)``)."""
    seconds = max(1, math.ceil(ttl))
    now = time.time() if now is None else now
    out: list[Command] = []
    touched: dict[str, None] = {}  # index keys, in order: renewed and trimmed once per batch

    def fill(record: str, event: Event, queue: str, only_missing: bool) -> None:
        fields = {"event": _wire(event), "queue": queue}
        if only_missing:
            for name, value in fields.items():
                out.append(("hsetnx", (record, name, value), {}))
            out.append(("hsetnx", (record, "published_at", repr(event.timestamp.timestamp())), {}))
        for index in _indexes(queue, event):
            out.append(("zadd", (index, {event.id: event.timestamp.timestamp()}), {"nx": only_missing}))
            touched[index] = None

    for change in changes:
        if isinstance(change, Published):
            record = keys.eventlog_record(change.event.id)
            mapping: dict[str, str] = {
                "event": _wire(change.event),
                "queue": change.queue,
                "published_at": repr(change.published_at),
            }
            if change.due_at is not None:
                mapping["due_at"] = repr(change.due_at)
            out.append(("hset", (record,), {"mapping": mapping}))
            fill(record, change.event, change.queue, only_missing=False)
            out.append(("expireat", (record, math.ceil(max(now, change.due_at or 0.0) + ttl)), {}))
            continue
        elif isinstance(change, HandlerChange):
            record = keys.eventlog_record(change.event_id)
            entry = json.dumps(change.entry, separators=(",", ":"))
            out.append(("hset", (record, HANDLER_FIELD + change.handler, entry), {}))
            if change.event is not None:
                fill(record, change.event, change.queue, only_missing=True)
        elif isinstance(change, Completed):
            record = keys.eventlog_record(change.event_id)
            out.append(("hset", (record, COMPLETED_FIELD + change.handler, repr(change.at)), {}))
            if change.event is not None:
                fill(record, change.event, change.queue, only_missing=True)
        else:
            record = keys.eventlog_record(change.event_id)
            out.append(("hset", (record, change.field, repr(change.at)), {}))
            if change.event is not None:
                fill(record, change.event, change.queue, only_missing=True)
        out.append(("expire", (record, seconds), {}))
    for index in touched:
        out.append(("zremrangebyscore", (index, "-inf", f"({now - ttl!r}"), {}))
        out.append(("expire", (index, seconds), {}))
    return out


def parse(raw: dict[Any, Any]) -> EventRecord | None:
    """The record from an HGETALL reply; None when it holds no event (yet)."""
    fields = {_str(k): _str(v) for k, v in raw.items()}
    wire = fields.get("event")
    if wire is None:
        return None
    handlers = {
        name[len(HANDLER_FIELD) :]: json.loads(value)
        for name, value in fields.items()
        if name.startswith(HANDLER_FIELD)
    }
    return EventRecord.build(
        Event.from_wire(json.loads(wire)),
        fields.get("queue", ""),
        handlers,
        published_at=_float(fields.get("published_at")),
        due_at=_float(fields.get("due_at")),
        cancelled_at=_float(fields.get("cancelled_at")),
        dispatched_at=_float(fields.get("dispatched_at")),
        completed={
            name[len(COMPLETED_FIELD) :]: _float(value)
            for name, value in fields.items()
            if name.startswith(COMPLETED_FIELD)
        },
    )


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


class RedisEventLog:
    """Used when no MongoDB is configured. Lists show ``queue``'s events, newest first."""

    def __init__(self, client: Callable[[], aioredis.Redis], queue: str, *, ttl: float = DEFAULT_TTL) -> None:
        self._client = client
        self.queue = queue
        self.ttl = ttl

    async def write(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        pipe = self._client().pipeline(transaction=False)
        for name, args, kwargs in commands(changes, self.ttl):
            getattr(pipe, name)(*args, **kwargs)
        await pipe.execute()

    async def get(self, event_id: str) -> EventRecord | None:
        if not names.is_event_id(event_id, "event_id"):
            return None
        return parse(await self._client().hgetall(keys.eventlog_record(event_id)))

    async def find(
        self,
        name: str | None = None,
        status: str | None = None,
        sender: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[EventRecord]:
        check_query(name, status, sender, since, until, limit, offset)
        if limit == 0:
            return []
        if name is not None:
            index = keys.eventlog_by_name(self.queue, name)
        elif sender is not None:
            index = keys.eventlog_by_sender(self.queue, sender)
        else:
            index = keys.eventlog_index(self.queue)
        low = max(since.timestamp() if since is not None else -math.inf, time.time() - self.ttl)
        high = f"({until.timestamp()!r}" if until is not None else "+inf"
        client = self._client()
        found: list[EventRecord] = []
        skip = offset
        start = 0
        # Index entries are filtered here only for what the index does not say (status; the
        # sender when the name chose the index): then the records are read in rounds.
        exact = status is None and (name is None or sender is None)
        while True:
            want = SCAN_BATCH if not exact else skip + limit - len(found)
            ids = await client.zrevrangebyscore(index, high, repr(low), start=start, num=want)
            if not ids:
                return found
            start += len(ids)
            pipe = client.pipeline(transaction=False)
            for raw_id in ids:
                pipe.hgetall(keys.eventlog_record(_str(raw_id)))
            for raw in await pipe.execute():
                record = parse(raw)
                if record is None:  # expired since it was indexed
                    continue
                if status is not None and record.status != status:
                    continue
                if sender is not None and record.sender != sender:
                    continue
                if skip:
                    skip -= 1
                    continue
                found.append(record)
                if len(found) == limit:
                    return found
            if len(ids) < want:
                return found
