"""Handlers the end-to-end tests' workers import (EARNEVENTS_HANDLER_MODULES=e2e_handlers).

Each handler records what it saw to the Redis list ``results:<event.data["token"]>``,
so a test observes the worker through Redis only.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from typing import Any

from earnevents import Event, current_job, event_bus, event_handler, model_event_handler, redisurl, runtime

_sync = redisurl.sync_client(os.environ["EARNEVENTS_REDIS_URI"])  # any URL form the worker takes


def _record(event: Event, handler: str, **extra: Any) -> dict[str, Any]:
    return {
        "handler": handler,
        "id": event.id,
        "name": event.name,
        "pid": os.getpid(),
        "at": time.time(),
        "types": {k: type(v).__name__ for k, v in event.data.items()},
        "repr": {k: repr(v) for k, v in event.data.items()},
        "metadata": repr(event.metadata),
        "timestamp": event.timestamp.isoformat(),
        "thread": threading.current_thread().name,
        **extra,
    }


async def arecord(event: Event, handler: str, **extra: Any) -> None:
    # Through the worker's own earnevents connection, on the worker's loop.
    client = runtime.current().redis
    await client.rpush(f"results:{event.data['token']}", json.dumps(_record(event, handler, **extra)))


def srecord(event: Event, handler: str, **extra: Any) -> None:
    _sync.rpush(f"results:{event.data['token']}", json.dumps(_record(event, handler, **extra)))


def tries(event: Event, handler: str) -> int:
    """How many times ``handler`` has started for this event (1 on the first try)."""
    return int(_sync.incr(f"tries:{event.id}:{handler}"))


@event_handler("t.record")
async def record_async(event: Event) -> None:
    await arecord(event, "record_async", loop=id(asyncio.get_running_loop()))


@event_handler("t.record")
def record_sync(event: Event) -> None:
    srecord(event, "record_sync")


@event_handler("t.flaky")
async def flaky(event: Event) -> None:
    n = tries(event, "flaky")
    await arecord(event, "flaky", attempt=n)
    if n <= event.data.get("fail_times", 0):
        raise RuntimeError(f"flaky failure {n}")


@event_handler("t.always_fails")
def always_fails(event: Event) -> None:
    n = tries(event, "always_fails")
    srecord(event, "always_fails", attempt=n)
    raise ValueError(f"always fails ({n})")


@event_handler("t.always_fails")
async def steady_sibling(event: Event) -> None:
    await arecord(event, "steady_sibling")


@event_handler("t.own_policy", retry_policy={"max_retries": 1, "interval_start": 0.3})
async def own_policy(event: Event) -> None:
    await arecord(event, "own_policy", attempt=tries(event, "own_policy"))
    raise RuntimeError("own policy failure")


@event_handler("t.slow")
async def slow(event: Event) -> None:
    """Records its start, then waits until the test sets ``release:<token>``."""
    await arecord(event, "slow_started")
    client = runtime.current().redis
    while not await client.exists(f"release:{event.data['token']}"):
        await asyncio.sleep(0.05)
    await arecord(event, "slow_done")


@event_handler("t.sleepy")
async def sleepy(event: Event) -> None:
    await asyncio.sleep(event.data.get("seconds", 0.2))
    await arecord(event, "sleepy")


@model_event_handler("Thing", "made")
async def thing_made(event: Event) -> None:
    await arecord(event, "thing_made")


@event_handler("t.fixable")
async def fixable(event: Event) -> None:
    """Fails until the test sets ``fixed:<token>``."""
    n = tries(event, "fixable")
    if not await runtime.current().redis.exists(f"fixed:{event.data['token']}"):
        raise ConnectionError(f"downstream unavailable ({n})")
    await arecord(event, "fixable", attempt=n)


@event_handler("t.fixable")
async def fixable_sibling(event: Event) -> None:
    await arecord(event, "fixable_sibling")


@event_handler("t.count")
async def count(event: Event) -> None:
    await runtime.current().redis.incr(f"count:{event.data['token']}")


@event_handler("t.where")
async def where(event: Event) -> None:
    """Records the queue the worker files this job under."""
    await arecord(event, "where", queue=current_job().queue)


@event_handler("t.exits")
def exits_sibling(event: Event) -> None:
    """Runs (and completes) before ``exits``, its sibling that kills the process."""
    srecord(event, "exits_sibling")


@event_handler("t.exits")
def exits(event: Event) -> None:
    """Kills its worker process on every run, as a segfault or the OOM killer would."""
    srecord(event, "exits", deliveries=current_job().deliveries)
    os._exit(1)


@event_handler("t.once")
async def once(event: Event) -> None:
    """Records its start, then takes a while: long enough for a copy to arrive meanwhile."""
    await arecord(event, "once")
    await asyncio.sleep(event.data.get("seconds", 1))


@event_handler("t.exits_beside_slow")
async def slow_beside_exits(event: Event) -> None:
    """Still running when its sibling kills the process on the first delivery."""
    await asyncio.sleep(0.5)
    await arecord(event, "slow_beside_exits", deliveries=current_job().deliveries)


@event_handler("t.exits_beside_slow")
def exits_beside_slow(event: Event) -> None:
    srecord(event, "exits_beside_slow", deliveries=current_job().deliveries)
    os._exit(1)


@event_handler("t.chain")
async def chain(event: Event) -> None:
    """Publishes ``t.chained`` (no handler) from the worker: the worker's published-events count."""
    await event_bus.publish(Event(name="t.chained", data={"token": event.data["token"]}))
