"""The outbox: events published while Redis was unreachable, kept in MongoDB.

With a MongoDB configured (and ``event_config["outbox"]`` not False), publish
does not fail when Redis is down: after trying Redis for up to
:data:`REDIS_BUDGET` seconds it stores the built messages in the
``earnevents_outbox`` collection and returns. Workers relay them to Redis in
publish order once it is reachable (``earnevents.worker.relay``).

The trade-off: a successful publish then means "durably stored", not "queued";
handlers start only after Redis is back and a worker (with the same MongoDB
configured) has relayed the event, and a relay interrupted between pushing and
deleting may deliver an event twice (workers skip handlers that already completed).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

COLLECTION = "earnevents_outbox"

ORDER_INDEX = [("queue", ASCENDING), ("ts", ASCENDING), ("i", ASCENDING)]
ORDER = [("ts", ASCENDING), ("i", ASCENDING)]

REDIS_BUDGET = 2.0
"""Seconds publish tries Redis before falling back to the outbox (within publish_timeout)."""


def documents(messages: Sequence[tuple[str, str, str]], queue: str, due: float | None) -> list[dict[str, Any]]:
    """Outbox documents for ``(id, event name, message)`` triples; ``due``: unix time or None (now)."""
    base = time.time_ns()
    now = dt.datetime.now(dt.timezone.utc)
    return [
        {
            "_id": message_id,
            "queue": queue,
            "name": name,
            "message": payload,
            "due": due,
            # Relay order: publish time, then position in the batch.
            "ts": base,
            "i": i,
            "created_at": now,
        }
        for i, (message_id, name, payload) in enumerate(messages)
    ]


async def store(
    db: AsyncDatabase[Any], messages: Sequence[tuple[str, str, str]], queue: str, due: float | None
) -> None:
    """Insert the messages; one already stored (a retried publish) is kept once."""
    col = db[COLLECTION]
    await col.create_index(ORDER_INDEX)
    docs = documents(messages, queue, due)
    existing = {d["_id"] async for d in col.find({"_id": {"$in": [d["_id"] for d in docs]}}, {"_id": 1})}
    fresh = [d for d in docs if d["_id"] not in existing]
    if fresh:
        await col.insert_many(fresh, ordered=True)
