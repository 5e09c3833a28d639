"""Completion records against a real redis-server: lookups and group-committed writes."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from earnevents import keys
from earnevents.testing import free_port
from earnevents.worker.completions import Completions


class Counting:
    """Wraps a client, counting the round trips Completions makes."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.trips = 0

    async def set(self, *args, **kwargs):
        self.trips += 1
        return await self.client.set(*args, **kwargs)

    async def mget(self, *args, **kwargs):
        self.trips += 1
        return await self.client.mget(*args, **kwargs)

    def pipeline(self, **kwargs):
        pipe = self.client.pipeline(**kwargs)
        execute = pipe.execute

        async def counted():
            self.trips += 1
            return await execute()

        pipe.execute = counted
        return pipe


@pytest.fixture
async def client(redis_url):
    c = aioredis.Redis.from_url(redis_url)
    yield Counting(c)
    await c.aclose()


async def test_concurrent_marks_share_round_trips_and_all_are_stored(client):
    completions = Completions(lambda: client, window=60)
    events = [f"ev-{i}" for i in range(50)]
    await asyncio.gather(*(completions.mark(e, ["h"]) for e in events))
    assert client.trips <= 3  # the first write, then everyone who arrived meanwhile
    assert await client.client.exists(*(keys.completed(e, "h") for e in events)) == 50
    ttl = await client.client.pttl(keys.completed(events[0], "h"))
    assert 50_000 < ttl <= 60_000


async def test_done_many_answers_per_event_in_one_round_trip(client):
    completions = Completions(lambda: client, window=60)
    await completions.mark("e1", ["a"])
    await completions.mark("e2", ["a", "b"])
    client.trips = 0
    assert await completions.done_many([("e1", ["a", "b"]), ("e2", ["a", "b"]), ("e3", ["a"])]) == [
        {"a"},
        {"a", "b"},
        set(),
    ]
    assert client.trips == 1


async def test_a_failed_write_reaches_every_waiting_caller():
    dead = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    completions = Completions(lambda: dead, window=60)
    results = await asyncio.gather(*(completions.mark(f"e{i}", ["h"]) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    await dead.aclose()
