"""What a queue holds right now, read from Redis: waiting, in flight, live workers.

Read-only and cheap: a few commands per queue, the in-flight count bounded by what the
workers hold (their prefetch). Counts of the schedule, failed jobs and dead letters
come from their own stores (``event_bus.count_*``); :func:`transport_counts` covers what
lives in the transport's keys, and :func:`queue_status` puts both together: the one reading
``earnevents status`` prints and the dashboard's overview shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import keys, runtime
from .bus import event_bus

SCAN_COUNT = 500
"""Entries asked per HSCAN of kombu's unacked hash."""


@dataclass(frozen=True)
class QueueStatus:
    """One reading of a queue: ``waiting``, ``in_flight`` and ``workers`` as in
    :class:`TransportCounts`; ``scheduled``: messages in the delay schedule (delayed events,
    retry waits, models' occurrences); ``failed``: failed-job records; ``dead``: dead-lettered
    queue items."""

    queue: str
    waiting: int
    in_flight: int
    scheduled: int
    failed: int
    dead: int
    workers: int


@dataclass(frozen=True)
class TransportCounts:
    """``waiting``: messages in the queue's list; ``in_flight``: messages workers took and
    have not acknowledged (kombu's unacked hash plus reliable fetch's in-flight lists);
    ``workers``: consumers registered for the queue whose alive key is still fresh."""

    waiting: int
    in_flight: int
    workers: int


def unacked_queue(raw: Any) -> str | None:
    """The queue an entry of kombu's unacked hash came from (``[message, exchange, routing_key]``)."""
    try:
        entry = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], str):
        return entry[2]
    return None


@dataclass(frozen=True)
class Consumer:
    """A worker's consumer of the queue: ``id`` is ``host:pid:nonce``; ``alive``: its
    keep-alive key is fresh; ``fetched``: messages in its reliable-fetch in-flight list."""

    id: str
    alive: bool
    fetched: int

    @property
    def host(self) -> str:
        return self.id.rsplit(":", 2)[0] if self.id.count(":") >= 2 else self.id

    @property
    def pid(self) -> str:
        return self.id.rsplit(":", 2)[1] if self.id.count(":") >= 2 else ""


async def consumers(client: Any, queue: str) -> list[Consumer]:
    """The consumers registered for ``queue``, by id, from the asyncio Redis ``client``."""
    ids = sorted(
        m.decode() if isinstance(m, bytes) else str(m) for m in await client.smembers(keys.inflight_consumers(queue))
    )
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for consumer in ids:
        pipe.exists(keys.consumer_alive(consumer))
        pipe.llen(keys.inflight_list(queue, consumer))
    replies = await pipe.execute()
    return [
        Consumer(consumer, bool(alive), int(fetched))
        for consumer, alive, fetched in zip(ids, replies[0::2], replies[1::2], strict=True)
    ]


async def transport_counts(client: Any, queue: str, registered: list[Consumer] | None = None) -> TransportCounts:
    """The counts of ``queue`` from the asyncio Redis ``client`` (``registered``: its
    :func:`consumers` when the caller has read them, so a page shows one reading)."""
    waiting = int(await client.llen(queue))
    unacked = 0
    async for _, raw in client.hscan_iter(keys.UNACKED, count=SCAN_COUNT):
        if unacked_queue(raw) == queue:
            unacked += 1
    if registered is None:
        registered = await consumers(client, queue)
    return TransportCounts(
        waiting=waiting,
        in_flight=unacked + sum(c.fetched for c in registered),
        workers=sum(1 for c in registered if c.alive),
    )


async def queue_status(registered: list[Consumer] | None = None) -> QueueStatus:
    """The configured queue's :class:`QueueStatus` (after ``init()``; NotInitializedError
    before); ``registered`` as for :func:`transport_counts`."""
    env = runtime.current()
    queue = env.settings.queue_name
    transport = await transport_counts(env.redis, queue, registered)
    return QueueStatus(
        queue=queue,
        waiting=transport.waiting,
        in_flight=transport.in_flight,
        scheduled=await event_bus.count_scheduled(),
        failed=await event_bus.count_failed_jobs(),
        dead=await event_bus.count_dead_items(),
        workers=transport.workers,
    )


async def _index_ids(client: Any, index: str) -> list[str]:
    """The members of the sorted set ``index``, each once (ZSCAN: every member there from
    start to end of the scan is seen; ones added or removed meanwhile may or may not be)."""
    seen: dict[str, None] = {}
    async for member, _ in client.zscan_iter(index, count=SCAN_COUNT):
        seen[member.decode() if isinstance(member, bytes) else str(member)] = None
    return list(seen)


async def dead_ids(client: Any, queue: str) -> list[str]:
    """The ids of ``queue``'s dead items (what ``event_bus.remove_dead_item`` takes), in no order."""
    return await _index_ids(client, keys.dead_index(queue))


async def scheduled_ids(client: Any, queue: str, event_name: str | None = None) -> list[str]:
    """The ids of what waits in ``queue``'s delay schedule (what ``event_bus.cancel`` takes),
    only ``event_name``'s if given, in no order."""
    index = keys.scheduled_zset(queue) if event_name is None else keys.scheduled_by_event(queue, event_name)
    return await _index_ids(client, index)
