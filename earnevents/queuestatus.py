"""What a queue holds right now, read from Redis: waiting, in flight, live workers.

Read-only and cheap: a few commands per queue, the in-flight count bounded by what the
workers hold (their prefetch). Counts of the schedule, failed jobs and dead letters
come from their own stores (``event_bus.count_*``); this module covers what lives in
the transport's keys, and the ids of the dead items and of what is scheduled, which
``earnevents dead remove --all`` and ``scheduled cancel --all`` read first (one scan,
not pages that shift as items come and go).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import keys

SCAN_COUNT = 500
"""Entries asked per HSCAN of kombu's unacked hash."""


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


async def transport_counts(client: Any, queue: str) -> TransportCounts:
    """The counts of ``queue`` from the asyncio Redis ``client``."""
    waiting = int(await client.llen(queue))
    unacked = 0
    async for _, raw in client.hscan_iter(keys.UNACKED, count=SCAN_COUNT):
        if unacked_queue(raw) == queue:
            unacked += 1
    consumers = sorted(
        m.decode() if isinstance(m, bytes) else str(m) for m in await client.smembers(keys.inflight_consumers(queue))
    )
    pipe = client.pipeline(transaction=False)
    for consumer in consumers:
        pipe.exists(keys.consumer_alive(consumer))
        pipe.llen(keys.inflight_list(queue, consumer))
    replies = await pipe.execute() if consumers else []
    alive = sum(1 for flag in replies[0::2] if flag)
    fetched = sum(int(n) for n in replies[1::2])
    return TransportCounts(waiting=waiting, in_flight=unacked + fetched, workers=alive)


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
