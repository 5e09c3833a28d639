"""Claims and completion records from a task thread (plain ``def`` handlers): the blocking
methods run the same scripts on the same keys as the loop's, against a real redis-server."""

from __future__ import annotations

import uuid

import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from earnevents import Event, keys
from earnevents.testing import free_port
from earnevents.worker.app import WorkerRuntime
from earnevents.worker.completions import COMPLETED, FRESH, HELD, Completions, digest
from earnevents.worker.jobs import Job


@pytest.fixture
async def completions(redis_url):
    loop_client = aioredis.Redis.from_url(redis_url)
    blocking = redis.Redis.from_url(redis_url)
    yield Completions(lambda: loop_client, window=60, blocking=blocking)
    blocking.close()
    await loop_client.aclose()


def event_id() -> str:
    return uuid.uuid4().hex


async def test_a_blocking_claim_is_the_loops_claim(completions, rclient):
    ev = event_id()
    # A fresh job is claimed for its first start; another copy finds it held
    assert completions.claim_blocking("tag-1", [(ev, ["a", "b"])]) == [{"a": FRESH, "b": FRESH}]
    assert rclient.hget(keys.job_claims(ev), digest("a")) == b"1:tag-1"
    assert await completions.claim("tag-2", [(ev, ["a"])]) == [{"a": HELD}]
    # The same copy back (its worker died) takes its claims over, on either side
    assert completions.claim_blocking("tag-1", [(ev, ["a", "b"])]) == [{"a": 2, "b": 2}]
    assert await completions.claim("tag-1", [(ev, ["a"])]) == [{"a": 2}]


async def test_a_blocking_mark_records_the_completion_and_ends_the_claim(completions, rclient):
    ev = event_id()
    completions.claim_blocking("tag-1", [(ev, ["a", "b"])])
    completions.mark_blocking(ev, ["a"], "tag-1")
    # Then every copy skips it, the loop's claim as the blocking one, and its claim is gone
    assert await completions.recorded(ev, "a") and not await completions.recorded(ev, "b")
    assert await completions.claim("tag-2", [(ev, ["a"])]) == [{"a": COMPLETED}]
    assert completions.claim_blocking("tag-1", [(ev, ["a", "b"])]) == [{"a": COMPLETED, "b": 2}]
    assert rclient.hget(keys.job_claims(ev), digest("a")) is None
    # And a completion the loop recorded is seen by a blocking claim too
    await completions.mark(ev, ["b"], "tag-1")
    assert completions.claim_blocking("tag-3", [(ev, ["b"])]) == [{"b": COMPLETED}]


async def test_without_a_window_a_blocking_mark_only_ends_the_claim(redis_url, rclient):
    loop_client = aioredis.Redis.from_url(redis_url)
    blocking = redis.Redis.from_url(redis_url)
    try:
        completions = Completions(lambda: loop_client, window=0, blocking=blocking)
        ev = event_id()
        completions.claim_blocking("tag-1", [(ev, ["a"])])
        completions.mark_blocking(ev, ["a"], "tag-1")
        assert rclient.exists(keys.job_claims(ev)) == 0
        assert completions.claim_blocking("tag-2", [(ev, ["a"])]) == [{"a": FRESH}]
    finally:
        blocking.close()
        await loop_client.aclose()


def test_the_workers_blocking_side_reports_redis_down_instead_of_raising():
    # Given a worker runtime whose Redis is unreachable (nothing listens on the port)
    url = f"redis://127.0.0.1:{free_port()}/0"
    down = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0))
    worker = WorkerRuntime.__new__(WorkerRuntime)  # only what the blocking side uses
    worker.completions = Completions(lambda: aioredis.Redis.from_url(url), window=60, blocking=down)
    job = Job(event=Event("e.x", {}), handler=None, attempt=0, retry_policy=None, queue="q", copy_id="tag-1")
    try:
        # Then the claim says so (the loop claims instead, with its retries) and so does the record
        # (settle remembers it)
        assert worker.claim_blocking([(job, ["a"])]) is None
        assert worker.completed_blocking(job, "a") is False
    finally:
        down.close()
