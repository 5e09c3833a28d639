"""The event log in a MongoDB collection (``earnevents_events``), one document per event.

A document: ``_id`` (the event id), ``queue``, ``name``, ``sender``, ``event_json`` (the
event's JSON wire form: storable whatever its data holds), ``published_at`` / ``due_at``
/ ``cancelled_at`` / ``dispatched_at`` (unix seconds), ``handlers`` (one entry per handler,
keyed by its dotted name with ``:`` for ``.``) and ``expire_at``. Every change is an
upsert of its own fields, so changes commute. ``expire_at`` is set when the document is
created (``$setOnInsert``: ``ttl`` seconds after that, or after a delayed event is due)
and is always a real datetime under a TTL index, so MongoDB deletes the record then (its
TTL monitor runs every 60 s). It is never ``$set`` on an existing document: a MongoDB
stand-in such as nx-27017 stores a datetime ``$set`` on an update as a string, which its
TTL monitor deletes at once.

:func:`requests` turns changes into ``bulk_write`` requests that blocking and asyncio
collections run alike (the worker's writer thread uses the former).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from .. import keys, names
from ..event import Event
from .base import DEFAULT_TTL, check_query
from .record import Change, Completed, EventRecord, HandlerChange, Published, utc

EXPIRE_AT = "expire_at"
"""Field (always a datetime) under the TTL index: when MongoDB deletes the record."""

INDEXES: list[tuple[list[tuple[str, int]], dict[str, Any]]] = [
    ([("queue", ASCENDING), ("published_at", DESCENDING)], {}),
    ([("queue", ASCENDING), ("name", ASCENDING), ("published_at", DESCENDING)], {}),
    ([("queue", ASCENDING), ("sender", ASCENDING), ("published_at", DESCENDING)], {}),
    # Per-document expiry (0 s after its own datetime), so a changed TTL never conflicts
    # with an existing index's options. Only datetimes are ever stored in this field.
    ([(EXPIRE_AT, ASCENDING)], {"expireAfterSeconds": 0}),
]
"""The collection's indexes, created by whichever side writes first (publisher or worker)."""


def handler_key(handler: str) -> str:
    """A handler's key in ``handlers``: its dotted name with ``:`` for ``.`` (a dot would nest)."""
    return handler.replace(".", ":")


def _event_fields(event: Event, queue: str) -> dict[str, Any]:
    return {
        "queue": queue,
        "name": event.name,
        "sender": event.sender,
        "event_json": json.dumps(event.to_wire(), separators=(",", ":")),
        "published_at": event.timestamp.timestamp(),
    }


def requests(changes: Sequence[Change], ttl: float, now: float | None = None) -> list[UpdateOne]:
    """The upserts applying ``changes`` in order (for ``bulk_write(..., ordered=True)``)."""
    now = time.time() if now is None else now
    out: list[UpdateOne] = []
    for change in changes:
        if isinstance(change, Published):
            fields = _event_fields(change.event, change.queue)
            fields["published_at"] = change.published_at
            if change.due_at is not None:
                fields["due_at"] = change.due_at
            expire = utc(max(now, change.due_at or 0.0) + ttl)
            update = {"$set": fields, "$setOnInsert": {EXPIRE_AT: expire}}
            out.append(UpdateOne({"_id": change.event.id}, update, upsert=True))
            continue
        if isinstance(change, HandlerChange):
            update = {"$set": {f"handlers.{handler_key(change.handler)}": change.entry}}
        elif isinstance(change, Completed):
            update = {"$set": {f"completed.{handler_key(change.handler)}": change.at}}
        else:
            update = {"$set": {change.field: change.at}}
        inserted: dict[str, Any] = {EXPIRE_AT: utc(now + ttl)}
        if change.event is not None:
            inserted.update(_event_fields(change.event, change.queue))
        update["$setOnInsert"] = inserted
        out.append(UpdateOne({"_id": change.event_id}, update, upsert=True))
    return out


def parse(doc: dict[str, Any]) -> EventRecord | None:
    """The record from a document; None when it holds no event (yet)."""
    wire = doc.get("event_json")
    if not isinstance(wire, str):
        return None
    handlers = {key.replace(":", "."): entry for key, entry in (doc.get("handlers") or {}).items()}
    return EventRecord.build(
        Event.from_wire(json.loads(wire)),
        doc.get("queue") or "",
        handlers,
        published_at=doc.get("published_at"),
        due_at=doc.get("due_at"),
        cancelled_at=doc.get("cancelled_at"),
        dispatched_at=doc.get("dispatched_at"),
        completed={key.replace(":", "."): at for key, at in (doc.get("completed") or {}).items()},
    )


class MongoEventLog:
    """Used when a mongo_uri is configured; lists show ``queue``'s events, newest first."""

    def __init__(
        self,
        db: Callable[[], AsyncDatabase[Any]],
        queue: str,
        collection: str = keys.MONGO_EVENTLOG_COLLECTION,
        *,
        ttl: float = DEFAULT_TTL,
    ) -> None:
        self._db = db
        self.queue = queue
        self._name = collection
        self.ttl = ttl
        self._indexed: set[int] = set()

    async def _col(self) -> AsyncCollection[Any]:
        col = self._db()[self._name]
        if id(col.database.client) not in self._indexed:
            for spec, options in INDEXES:
                await col.create_index(spec, **options)
            self._indexed.add(id(col.database.client))
        return col

    async def write(self, changes: Sequence[Change]) -> None:
        if changes:
            await (await self._col()).bulk_write(requests(changes, self.ttl), ordered=True)

    async def get(self, event_id: str) -> EventRecord | None:
        if not names.is_event_id(event_id, "event_id"):
            return None
        doc = await (await self._col()).find_one({"_id": event_id})
        return None if doc is None else parse(doc)

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
        query: dict[str, Any] = {"queue": self.queue, "event_json": {"$exists": True}}
        if name is not None:
            query["name"] = name
        if sender is not None:
            query["sender"] = sender
        published: dict[str, Any] = {}
        if since is not None:
            published["$gte"] = since.timestamp()
        if until is not None:
            published["$lt"] = until.timestamp()
        if published:
            query["published_at"] = published
        col = await self._col()
        sort = [("published_at", DESCENDING), ("_id", DESCENDING)]
        if status is None:
            cursor = col.find(query, sort=sort, skip=offset, limit=limit)
            return [r async for doc in cursor if (r := parse(doc)) is not None]
        # The status is derived from the handlers: filtered here, reading the rest in order.
        found: list[EventRecord] = []
        skip = offset
        async for doc in col.find(query, sort=sort, batch_size=200):
            record = parse(doc)
            if record is None or record.status != status:
                continue
            if skip:
                skip -= 1
                continue
            found.append(record)
            if len(found) == limit:
                break
        return found
