"""The outbox: events published while Redis was unreachable, kept in MongoDB.

With a MongoDB configured (and ``event_config["outbox"]`` not False), publish
does not fail when Redis is down: after trying Redis for up to
:data:`REDIS_BUDGET` seconds it stores the built messages in the
``earnevents_outbox`` collection and returns. Workers relay them to Redis in
publish order once it is reachable (``earnevents.worker.relay``).

Bounded: a queue's outbox holds at most ``outbox_max`` documents
(EARNEVENTS_OUTBOX_MAX); a publish that would go beyond stores nothing and raises
OutboxFullError (a PublishError), so no event is dropped without its publisher
knowing.

The trade-off: a successful publish then means "durably stored", not "queued";
handlers start only after Redis is back and a worker (with the same MongoDB
configured) has relayed the event, and a relay interrupted between pushing and
deleting may deliver an event twice (workers skip handlers that already completed).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import OutboxFullError

if TYPE_CHECKING:  # pymongo is imported only where a MongoDB is used (a faster start without one)
    from pymongo.asynchronous.database import AsyncDatabase

COLLECTION = "earnevents_outbox"

ASCENDING = 1  # pymongo.ASCENDING

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
    db: AsyncDatabase[Any], messages: Sequence[tuple[str, str, str]], queue: str, due: float | None, cap: int
) -> None:
    """Insert the messages; one already stored (a retried publish) is kept once.

    OutboxFullError, and nothing stored, when the queue's outbox would then hold more than
    ``cap`` documents (checked before inserting: concurrent publishers may each pass the
    check, so it can overshoot by their batches).
    """
    col = db[COLLECTION]
    await col.create_index(ORDER_INDEX)
    docs = documents(messages, queue, due)
    existing = {d["_id"] async for d in col.find({"_id": {"$in": [d["_id"] for d in docs]}}, {"_id": 1})}
    fresh = [d for d in docs if d["_id"] not in existing]
    if not fresh:
        return
    held = await col.count_documents({"queue": queue})
    if held + len(fresh) > cap:
        raise OutboxFullError(
            f"Redis is unreachable and the MongoDB outbox of queue {queue!r} holds {held} event(s): "
            f"{len(fresh)} more would pass its maximum of {cap} (EARNEVENTS_OUTBOX_MAX); nothing was stored"
        )
    await col.insert_many(fresh, ordered=True)
