"""earnevents handlers for the benchmarks: the same work as bench/plain_celery.py."""

from __future__ import annotations

import asyncio
import time

from earnevents import Event, event_handler, runtime


@event_handler("bench.noop")
async def noop(event: Event) -> None:
    await runtime.current().redis.incr(event.data["key"])


@event_handler("bench.io")
async def io(event: Event) -> None:
    await asyncio.sleep(0.01)
    await runtime.current().redis.incr(event.data["key"])


@event_handler("bench.latency")
async def latency(event: Event) -> None:
    await runtime.current().redis.rpush(event.data["key"], time.time() - event.data["published_at"])
