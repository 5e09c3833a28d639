"""earnevents handlers for the benchmarks: the same work as bench/plain_celery.py."""

from __future__ import annotations

import asyncio
import os
import time

import redis

from earnevents import Event, event_handler, runtime

sync_redis = redis.Redis.from_url(os.environ.get("EARNEVENTS_REDIS_URI", "redis://localhost:6379/0"))
"""The plain ``def`` handlers' client, as a user's module would hold one: made at import, it
connects on first use (in each pool process after fork: redis-py's pool notices the new pid)."""


@event_handler("bench.noop")
async def noop(event: Event) -> None:
    await runtime.current().redis.incr(event.data["key"])


@event_handler("bench.noop_sync")
def noop_sync(event: Event) -> None:
    """:func:`noop` as a plain ``def`` handler (figure 4s): the same INCR, on a blocking client."""
    sync_redis.incr(event.data["key"])


@event_handler("bench.io")
async def io(event: Event) -> None:
    await asyncio.sleep(0.01)
    await runtime.current().redis.incr(event.data["key"])


@event_handler("bench.latency")
async def latency(event: Event) -> None:
    await runtime.current().redis.rpush(event.data["key"], time.time() - event.data["published_at"])
