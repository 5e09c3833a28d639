"""Fixtures and helpers for the model tests, and the model the worker tests share with
their worker (``model_handlers`` imports it, so keep this module free of conftest).

Test modules load the fixtures with ``pytest_plugins = ["model_fixtures"]`` after
importing helpers from here; it has no asserts to rewrite: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
from bson import ObjectId

import earnevents
from earnevents import BaseModel, Event, message

T = TypeVar("T")

FAST_RETRIES = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.1, "interval_max": 0.2}


class Parcel(BaseModel):
    """The worker tests' model; its handlers record under ``results:<token>``."""

    _events = ("created", "updated", "deleted")

    token: str
    status: str = "packed"
    owner: ObjectId | None = None
    shipped_at: dt.datetime | None = None


@pytest.fixture
async def models_env(
    redis_url: str, mongo_url: str, mongo_db: str, queue: str
) -> AsyncIterator[earnevents.runtime.Environment]:
    """earnevents initialized with this test's MongoDB database and Redis queue."""
    env = await earnevents.init(
        mongo_uri=mongo_url,
        database=mongo_db,
        redis_uri=redis_url,
        event_config={"queue_name": queue, "retry_policy": FAST_RETRIES},
    )
    yield env
    await earnevents.close()


def queued(rclient: redis.Redis, queue: str) -> list[Event]:
    """The events waiting in ``queue`` (published and not yet taken by a worker), oldest first."""
    raws: list[bytes] = rclient.lrange(queue, 0, -1)  # type: ignore[assignment]
    return [Event.from_wire(message.parse(raw)[0]) for raw in reversed(raws)]


def worker_env(mongo_url: str, mongo_db: str) -> dict[str, str]:
    """What a worker needs to use models (and the same failed-job store as the test)."""
    return {"EARNEVENTS_MONGO_URI": mongo_url, "EARNEVENTS_DATABASE": mongo_db}


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 20, what: str = "a condition") -> T:
    """Await ``check()`` until it returns something truthy; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


async def status_is(run_id: str, *statuses: str, step: str | None = None, timeout: float = 20) -> Any:
    """The workflow run once it is in one of ``statuses`` (and at ``step``, if given)."""
    from earnevents.workflows import engine

    last: list[Any] = [None]

    async def check() -> Any:
        run = last[0] = await engine.get_run(run_id)
        return run if run.status in statuses and step in (None, run.step) else None

    try:
        return await eventually(check, timeout, f"run {run_id} to be {'/'.join(statuses)} {step or ''}")
    except TimeoutError as exc:  # say where the run stopped: its state and history
        run = last[0]
        if run is None:
            raise
        seen = f"status={run.status} step={run.step} version={run.version} wake_at={run.wake_at}"
        raise TimeoutError(f"{exc}; it is {seen}; history: {run.history}") from None


async def ended(run_id: str, timeout: float = 20) -> Any:
    """The workflow run once it completed, failed or was cancelled."""
    return await status_is(run_id, "completed", "failed", "cancelled", timeout=timeout)


def stored(env: Any, collection: str) -> Any:
    """The raw PyMongo collection, to look at documents without going through the model."""
    return env.db[collection]
