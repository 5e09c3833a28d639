"""Both failure stores keep, list, filter, take and remove failed jobs the same way."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

import pytest
from bson import ObjectId

from earnevents import Event, FailedJob, JobNotFoundError, event_bus
from earnevents.failures import MongoFailureStore, RedisFailureStore


@pytest.fixture
def job(queue):
    def make(name: str = "user.created", handler: str = "app.h", seconds: int = 0, **data) -> FailedJob:
        try:
            raise RuntimeError("boom")
        except RuntimeError as exc:
            record = FailedJob.from_exception(Event(name, data or {"k": 1}), handler, exc, attempts=4, queue=queue)
        # Recent (records older than EARNEVENTS_FAILED_MAX_AGE are not kept), whole seconds (BSON keeps ms).
        base = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=1)
        when = base + dt.timedelta(seconds=seconds)
        return FailedJob(**{**record.__dict__, "failed_at": when})

    return make


async def test_store_is_mongo_when_configured_else_redis(env, job):
    expected = MongoFailureStore if env.settings.mongo_uri else RedisFailureStore
    assert isinstance(env.failures, expected)


async def test_record_round_trips_with_typed_event_data(env, job):
    original = job(when=dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc), oid=ObjectId(), price=Decimal("1.5"))
    await env.failures.add(original)
    [got] = await event_bus.get_failed_jobs()
    assert got == original
    assert got.error == "RuntimeError: boom" and "Traceback" in got.traceback
    assert got.failed_at.tzinfo is not None


async def test_list_is_newest_first_with_limit_and_offset(env, job):
    jobs = [job(seconds=i) for i in range(5)]
    for j in jobs:
        await env.failures.add(j)
    newest_first = [j.id for j in reversed(jobs)]
    assert [j.id for j in await event_bus.get_failed_jobs()] == newest_first
    assert [j.id for j in await event_bus.get_failed_jobs(limit=2, offset=1)] == newest_first[1:3]
    assert await event_bus.get_failed_jobs(limit=0) == []
    assert await event_bus.count_failed_jobs() == 5


async def test_filters_by_event_name_and_handler(env, job):
    a, b, c = job("a.x", "h.one", 1), job("b.x", "h.one", 2), job("a.x", "h.two", 3)
    for j in (a, b, c):
        await env.failures.add(j)
    assert [j.id for j in await event_bus.get_failed_jobs(event_name="a.x")] == [c.id, a.id]
    assert [j.id for j in await event_bus.get_failed_jobs(handler="h.one")] == [b.id, a.id]
    assert [j.id for j in await event_bus.get_failed_jobs(event_name="a.x", handler="h.one")] == [a.id]
    assert await event_bus.count_failed_jobs(event_name="a.x", handler="h.two") == 1


async def test_filters_by_error_text_and_failure_time_page_and_count_alike(env, job):
    # Given jobs failing with different errors at different times (oldest first)
    jobs = [job("a.x", "h.one", i) for i in range(6)]
    jobs = [
        FailedJob(**{**j.__dict__, "error": f"{'ConnectionError' if i % 2 else 'ValueError'}: n{i}"})
        for i, j in enumerate(jobs)
    ]
    for j in jobs:
        await env.failures.add(j)
    connection = [j.id for j in reversed(jobs) if j.error.startswith("ConnectionError")]  # newest first
    # Then the error filter is a substring match, paged after filtering, and counted alike
    assert [j.id for j in await event_bus.get_failed_jobs(error="ConnectionError")] == connection
    assert [j.id for j in await event_bus.get_failed_jobs(limit=1, offset=1, error="Connection")] == connection[1:2]
    assert await event_bus.count_failed_jobs(error="ConnectionError") == 3
    assert await event_bus.count_failed_jobs(error=".*") == 0  # never a pattern
    # And the time window is inclusive at both ends
    since, until = jobs[1].failed_at, jobs[3].failed_at
    window = [j.id for j in await event_bus.get_failed_jobs(since=since, until=until)]
    assert window == [jobs[3].id, jobs[2].id, jobs[1].id]
    assert await event_bus.count_failed_jobs(event_name="a.x", error="Value", since=since) == 2
    assert await event_bus.count_failed_jobs(handler="h.two", error="Value") == 0
    with pytest.raises(TypeError, match="error must be a str"):
        await event_bus.get_failed_jobs(error={"$ne": ""})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        await event_bus.count_failed_jobs(since=dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="after until"):
        await event_bus.get_failed_jobs(since=until, until=since)


async def test_remove_job_deletes_it_and_unknown_ids_raise(env, job):
    j = job()
    await env.failures.add(j)
    await event_bus.remove_job(j.id)
    assert await event_bus.get_failed_jobs() == []
    assert await event_bus.get_failed_jobs(event_name=j.event.name) == []
    with pytest.raises(JobNotFoundError):
        await event_bus.remove_job(j.id)
    with pytest.raises(LookupError):
        await event_bus.retry_job("no-such-job")


async def test_only_one_of_two_concurrent_takers_gets_the_job(env, job):
    j = job()
    await env.failures.add(j)
    results = await asyncio.gather(*(env.failures.take(j.id) for _ in range(5)))
    assert [r for r in results if r is not None] == [j]


async def test_adding_the_same_record_twice_keeps_one(env, job):
    j = job()
    await env.failures.add(j)
    await env.failures.add(j)
    assert await event_bus.count_failed_jobs() == 1


async def test_other_queues_jobs_are_not_listed(env, job):
    other = FailedJob(**{**job().__dict__, "queue": "some-other-app"})
    await env.failures.add(other)
    assert await event_bus.get_failed_jobs() == []
    assert await event_bus.get_failed_job(other.id) == other


async def test_retry_job_enqueues_that_handler_and_takes_the_record_off(env, job, rclient, queue):
    j = job()
    await env.failures.add(j)
    await event_bus.retry_job(j.id)
    assert await event_bus.get_failed_jobs() == []
    import base64
    import json

    envelope = json.loads(rclient.rpop(queue))
    args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
    assert args[0]["id"] == j.event.id and kwargs["handler"] == j.handler and kwargs["attempt"] == 0
