"""Handlers for bench/chaos.py: count every start and every completion per (event, handler)."""

from __future__ import annotations

import asyncio
import os
import time
from functools import cache

import redis

from earnevents import Event, event_handler, runtime

STARTS = "chaos:starts"
DONE = "chaos:done"


async def record(event: Event, handler: str) -> None:
    """Count a start and, after a short window for a SIGKILL to land in, a completion."""
    client = runtime.current().redis
    field = f"{event.id}:{handler}"
    await client.hincrby(STARTS, field, 1)
    await asyncio.sleep(0.002)  # a window in which a SIGKILL can land mid-handler
    await client.hincrby(DONE, field, 1)


@cache
def _blocking() -> redis.Redis:
    return redis.Redis.from_url(os.environ["EARNEVENTS_REDIS_URI"])


def record_here(event: Event, handler: str) -> None:
    """:func:`record` for plain ``def`` handlers (a blocking client, made once per process)."""
    field = f"{event.id}:{handler}"
    _blocking().hincrby(STARTS, field, 1)
    time.sleep(0.002)
    _blocking().hincrby(DONE, field, 1)


@event_handler("chaos.tick")
async def first(event: Event) -> None:
    await record(event, "first")


@event_handler("chaos.tick")
async def second(event: Event) -> None:
    await record(event, "second")
