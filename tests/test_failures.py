"""Both failure stores keep, list, filter, take and remove failed jobs the same way."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

import pytest
from bson import ObjectId

import earnevents
from earnevents import Event, FailedJob, JobNotFoundError, event_bus, keys
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


def failing(job, text: str, *args, **data) -> FailedJob:
    """``job(*args, **data)`` failed with the error ``text``."""
    return FailedJob(**{**job(*args, **data).__dict__, "error": text})


async def test_error_text_is_matched_as_it_is_even_with_pattern_characters_and_unicode(env, job):
    # Given errors full of what means something to a pattern, an operator, JSON or UTF-8
    texts = [
        "ValueError: got (.*) here",
        "KeyError: '$where'",
        "RuntimeError: café ☕ 😀",
        'ParseError: a\\b"c {"error":"x"}',
        "OSError: line one\nline two",
        "OSError: caf\udce9",  # a lone surrogate (an undecodable file name)
    ]
    jobs = [failing(job, text, "a.x", "h.one", i) for i, text in enumerate(texts)]
    # And a job whose event data and traceback hold the same texts, but not its error
    decoy = FailedJob(
        **{
            **failing(job, "RuntimeError: plain", "a.x", "h.one", 9, error="(.*) $where").__dict__,
            "traceback": "(.*) $where café",
        }
    )
    for j in [*jobs, decoy]:
        await env.failures.add(j)
    # Then each is found by a piece of itself, compared as it is, in list and count alike
    for text, needle in [
        (texts[0], "(.*)"),
        (texts[1], "'$where'"),
        (texts[1], "$where"),
        (texts[2], "é ☕ 😀"),
        (texts[3], 'a\\b"c {"error":'),
        (texts[4], "one\nline"),
        (texts[5], "caf\udce9"),
    ]:
        found = [j.id for j in await event_bus.get_failed_jobs(error=needle)]
        assert found == [jobs[texts.index(text)].id], needle
        assert await event_bus.count_failed_jobs(error=needle) == 1, needle
    assert await event_bus.count_failed_jobs(error=".+") == 0
    assert await event_bus.count_failed_jobs(error="^ValueError") == 0
    assert await event_bus.count_failed_jobs(error="café") == 1  # é and e differ
    assert await event_bus.count_failed_jobs(error="cafe") == 0
    assert await event_bus.count_failed_jobs(error="valueerror") == 0  # case counts
    assert await event_bus.count_failed_jobs(error="") == len(jobs) + 1


async def test_redis_jobs_filed_before_the_error_text_hash_are_matched_by_their_records_error(
    redis_url, queue, job, rclient
):
    # Given Redis jobs without an entry in the error text hash (filed before it existed), one
    # with the searched text as an "error" key in its event data and in its traceback
    env = await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue})
    try:
        hit = failing(job, 'KeyError: "é" (.*)', "a.x", "h.one", 1, error='"é" (.*)')
        decoy = failing(job, "RuntimeError: plain", "a.x", "h.one", 2, error='"é" (.*)')
        decoy = FailedJob(**{**decoy.__dict__, "traceback": 'x "error":"é (.*)"'})
        for j in (hit, decoy):
            await env.failures.add(j)
        assert rclient.hdel(keys.failed_errors(queue), hit.id, decoy.id) == 2
        # Then the filter reads each record's own error text
        assert [j.id for j in await event_bus.get_failed_jobs(error='"é" (.*)')] == [hit.id]
        assert await event_bus.count_failed_jobs(error="RuntimeError") == 1
        assert await event_bus.count_failed_jobs(error="é (.*)") == 0
    finally:
        await earnevents.close()


async def test_time_window_and_offset_edges(env, job):
    jobs = [failing(job, f"E: n{i}", "a.x", "h.one", i) for i in range(4)]
    for j in jobs:
        await env.failures.add(j)
    moment = jobs[2].failed_at
    # since == until: the jobs that failed at that very moment
    assert [j.id for j in await event_bus.get_failed_jobs(since=moment, until=moment)] == [jobs[2].id]
    assert await event_bus.count_failed_jobs(since=moment, until=moment, error="n2") == 1
    assert await event_bus.count_failed_jobs(since=moment, until=moment, error="n1") == 0
    # A window before every job or after it holds none
    assert await event_bus.count_failed_jobs(until=jobs[0].failed_at - dt.timedelta(seconds=1)) == 0
    assert await event_bus.get_failed_jobs(since=jobs[3].failed_at + dt.timedelta(seconds=1), error="E") == []
    # Offsets at and past the end give nothing, with or without the error filter
    for filters in ({}, {"error": "E:"}, {"since": jobs[1].failed_at}, {"error": "n", "until": moment}):
        total = await event_bus.count_failed_jobs(**filters)
        assert await event_bus.get_failed_jobs(limit=5, offset=total, **filters) == [], filters
        assert await event_bus.get_failed_jobs(limit=5, offset=10_000, **filters) == [], filters
        assert len(await event_bus.get_failed_jobs(limit=5, offset=total - 1, **filters)) == 1, filters
        assert await event_bus.get_failed_jobs(limit=0, **filters) == [], filters


async def test_all_five_filters_together_page_and_count_alike(env, job):
    # Given jobs that each miss one of the five filters, and three that match them all
    jobs = [
        failing(job, "ConnectionError: reset", "a.x", "h.one", 10),  # match
        failing(job, "ConnectionError: refused", "a.x", "h.one", 20),  # match
        failing(job, "ConnectionError: reset", "a.x", "h.one", 30),  # match
        failing(job, "ConnectionError: reset", "b.x", "h.one", 15),  # other event
        failing(job, "ConnectionError: reset", "a.x", "h.two", 16),  # other handler
        failing(job, "ValueError: reset", "a.x", "h.one", 17),  # other error
        failing(job, "ConnectionError: reset", "a.x", "h.one", 5),  # before since
        failing(job, "ConnectionError: reset", "a.x", "h.one", 40),  # after until
    ]
    for j in jobs:
        await env.failures.add(j)
    filters = {
        "event_name": "a.x",
        "handler": "h.one",
        "error": "ConnectionError",
        "since": jobs[0].failed_at,
        "until": jobs[2].failed_at,
    }
    expected = [jobs[2].id, jobs[1].id, jobs[0].id]
    assert [j.id for j in await event_bus.get_failed_jobs(**filters)] == expected
    assert await event_bus.count_failed_jobs(**filters) == 3
    pages = [await event_bus.get_failed_jobs(limit=1, offset=i, **filters) for i in range(4)]
    assert [[j.id for j in page] for page in pages] == [[i] for i in expected] + [[]]


async def test_error_filter_pages_across_the_stores_scan_batches(env, job, monkeypatch):
    # Given more jobs than one scan of the Redis store reads (made small)
    from earnevents.failures import redis_store

    monkeypatch.setattr(redis_store, "SCAN_BATCH", 3)
    jobs = [failing(job, f"{'Timeout' if i % 3 else 'Other'}Error: n{i}", "a.x", "h.one", i) for i in range(14)]
    for j in jobs:
        await env.failures.add(j)
    timeouts = [j.id for j in reversed(jobs) if j.error.startswith("Timeout")]
    # Then every page and the count agree with the jobs filtered one by one
    assert await event_bus.count_failed_jobs(error="Timeout") == len(timeouts)
    for offset in range(len(timeouts) + 1):
        page = await event_bus.get_failed_jobs(limit=4, offset=offset, error="Timeout")
        assert [j.id for j in page] == timeouts[offset : offset + 4], offset


async def test_walk_goes_through_jobs_that_failed_at_the_same_moment(env, job):
    # Given jobs failing at the same moment (more of them than a page), some matching
    from earnevents.failures.selection import JobSelection, walk

    jobs = [failing(job, f"E: {'keep' if i % 4 else 'skip'}", "a.x", "h.one", i // 7) for i in range(21)]
    for j in jobs:
        await env.failures.add(j)
    # Then a walk page by page yields each matching job once, newest first, ties by id descending
    expected = sorted((j for j in jobs if "keep" in j.error), key=lambda j: (j.failed_at, j.id), reverse=True)
    walked = [j.id async for j in walk(event_bus.get_failed_jobs, JobSelection(error="keep"), page=2)]
    assert walked == [j.id for j in expected]
    everything = [j.id async for j in walk(event_bus.get_failed_jobs, JobSelection(until=jobs[8].failed_at), page=3)]
    assert everything == [j.id for j in sorted(jobs[:14], key=lambda j: (j.failed_at, j.id), reverse=True)]


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
