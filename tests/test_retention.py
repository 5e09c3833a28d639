"""Bounds on storage (issue 10): failed-job records are capped per queue and aged out on
both stores, purged in bulk; the MongoDB outbox refuses events beyond its cap."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

import earnevents
from earnevents import ConfigError, Event, FailedJob, OutboxFullError, PublishError, event_bus, keys, outbox
from earnevents.config import DEFAULTS, Settings
from earnevents.failures import MongoFailureStore, RedisFailureStore
from earnevents.testing import free_port

EXPIRE_AT = "expire_at"
"""The MongoDB store's TTL-indexed field."""

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def failed(queue: str, name: str, handler: str, ago: dt.timedelta) -> FailedJob:
    return FailedJob(Event(name, {"n": 1}), handler, "RuntimeError: boom", "tb", 4, queue, NOW - ago)


async def stored_ids(env, queue: str) -> set[str]:
    """The ids of ``queue``'s records as they sit in the store, whatever lists show."""
    if isinstance(env.failures, MongoFailureStore):
        return {d["_id"] async for d in env.db[keys.MONGO_FAILED_COLLECTION].find({"queue": queue}, {"_id": 1})}
    return {m.decode() for m in await env.redis.zrange(keys.failed_index(queue), 0, -1)}


async def assert_redis_indexes_consistent(env, queue: str, ids: set[str], gone: set[str] = frozenset()) -> None:
    """Every Redis key of ``queue``'s failed jobs (indexes, key list, error texts) names exactly
    the jobs in ``ids``; the records of ``ids`` exist and those of ``gone`` do not."""
    client = env.redis
    for job_id in ids | gone:
        assert await client.exists(keys.failed_job(job_id)) == (job_id in ids), job_id
    assert {k.decode() for k in await client.hkeys(keys.failed_keys(queue))} == ids
    assert {k.decode() for k in await client.hkeys(keys.failed_errors(queue))} == ids
    index_keys = {k async for k in client.scan_iter(match=f"{keys.failed_index(queue)}:*")}
    in_indexes: set[str] = set()
    for index in index_keys:
        if index.decode() in (keys.failed_keys(queue), keys.failed_errors(queue)):
            continue
        members = {m.decode() for m in await client.zrange(index, 0, -1)}
        assert members <= ids, index
        in_indexes |= members
    assert in_indexes == ids


async def test_adding_more_than_the_cap_keeps_the_newest_and_indexes_agree(env, queue):
    # Given a cap of 7 records (a stuck handler: many failures, two events, two handlers)
    env.failures.max_jobs = 7
    combos = itertools.cycle([("a.x", "h.one"), ("b.x", "h.one"), ("a.x", "h.two")])
    jobs = [failed(queue, *next(combos), dt.timedelta(seconds=100 - i)) for i in range(25)]
    # When 25 are added
    for job in jobs:
        await env.failures.add(job)
    # Then exactly the newest 7 remain, and every list, filter and count agrees
    newest = jobs[-7:]
    assert [j.id for j in await event_bus.get_failed_jobs()] == [j.id for j in reversed(newest)]
    assert await event_bus.count_failed_jobs() == 7
    assert await stored_ids(env, queue) == {j.id for j in newest}
    for event_name, handler in [("a.x", None), ("b.x", None), (None, "h.one"), (None, "h.two"), ("a.x", "h.two")]:
        expected = [
            j.id for j in reversed(newest) if event_name in (None, j.event.name) and handler in (None, j.handler)
        ]
        assert [j.id for j in await event_bus.get_failed_jobs(event_name=event_name, handler=handler)] == expected
        assert await event_bus.count_failed_jobs(event_name, handler) == len(expected)
    if isinstance(env.failures, RedisFailureStore):
        await assert_redis_indexes_consistent(env, queue, {j.id for j in newest}, {j.id for j in jobs[:-7]})


async def test_records_older_than_the_maximum_age_are_not_kept(env, queue):
    # Given a maximum age of one day
    env.failures.max_age = 86400
    old = failed(queue, "a.x", "h.one", dt.timedelta(days=2))
    fresh = failed(queue, "a.x", "h.one", dt.timedelta(hours=1))
    # When a record two days old and one an hour old are added
    await env.failures.add(old)
    await env.failures.add(fresh)
    # Then only the fresh one is listed and counted, in every filter
    assert [j.id for j in await event_bus.get_failed_jobs()] == [fresh.id]
    assert [j.id for j in await event_bus.get_failed_jobs(event_name="a.x", handler="h.one")] == [fresh.id]
    assert await event_bus.count_failed_jobs() == 1 and await event_bus.count_failed_jobs("a.x") == 1
    if isinstance(env.failures, RedisFailureStore):
        # and the old one's record and index entries are gone from Redis
        await assert_redis_indexes_consistent(env, queue, {fresh.id}, {old.id})
        assert 0 < await env.redis.ttl(keys.failed_job(fresh.id)) <= 86400
    else:
        # and MongoDB deletes it by a TTL index on a real datetime: failed_at + max age
        col = env.db[keys.MONGO_FAILED_COLLECTION]
        ttl = [i for i in (await col.index_information()).values() if "expireAfterSeconds" in i]
        assert [(i["key"], i["expireAfterSeconds"]) for i in ttl] == [([(EXPIRE_AT, 1)], 0)]
        doc = await col.find_one({"_id": fresh.id})
        assert doc[EXPIRE_AT] == fresh.failed_at + dt.timedelta(days=1)


async def test_purge_deletes_by_age_event_and_handler(env, queue):
    # Given records 3 days, 2 hours and 1 hour old, of two events and two handlers
    old = failed(queue, "a.x", "h.one", dt.timedelta(days=3))
    mid = failed(queue, "b.x", "h.one", dt.timedelta(hours=2))
    new = failed(queue, "a.x", "h.two", dt.timedelta(hours=1))
    other_queue = failed(queue + "-other", "a.x", "h.one", dt.timedelta(days=3))
    for job in (old, mid, new, other_queue):
        await env.failures.add(job)
    # When purging by age, then by handler, then everything
    assert await event_bus.purge_failed_jobs(older_than=dt.timedelta(days=1)) == 1
    assert [j.id for j in await event_bus.get_failed_jobs()] == [new.id, mid.id]
    assert await event_bus.purge_failed_jobs(older_than=3 * 3600) == 0
    assert await event_bus.purge_failed_jobs(handler="h.two") == 1
    assert await event_bus.purge_failed_jobs(event_name="a.x") == 0
    assert [j.id for j in await event_bus.get_failed_jobs(event_name="b.x")] == [mid.id]
    assert await event_bus.purge_failed_jobs() == 1
    # Then nothing of the queue is left, in lists or in the store, and other queues are untouched
    assert await event_bus.count_failed_jobs() == 0 and await stored_ids(env, queue) == set()
    assert await event_bus.get_failed_job(other_queue.id) == other_queue
    if isinstance(env.failures, RedisFailureStore):
        await assert_redis_indexes_consistent(env, queue, set(), {old.id, mid.id, new.id})


async def test_purge_checks_its_arguments(bus):
    with pytest.raises(TypeError, match="older_than must be seconds or a timedelta"):
        await bus.purge_failed_jobs(older_than="7d")
    with pytest.raises(ValueError, match="finite duration >= 0"):
        await bus.purge_failed_jobs(older_than=-1)
    assert await bus.purge_failed_jobs(older_than=1e300) == 0


async def test_a_redis_record_from_before_the_key_list_is_still_trimmed_whole(bus, rclient, queue):
    # Given a record written the old way (record and indexes, no entry in the key list)
    store = earnevents.runtime.current().failures
    legacy = failed(queue, "a.x", "h.one", dt.timedelta(hours=3))
    await store.add(legacy)
    rclient.hdel(keys.failed_keys(queue), legacy.id)
    # When a cap of 1 trims it as a new record comes in
    store.max_jobs = 1
    await store.add(failed(queue, "a.x", "h.one", dt.timedelta(hours=1)))
    # Then it is gone from its record, the queue's index and its event/handler indexes
    assert rclient.exists(keys.failed_job(legacy.id)) == 0
    for index in (
        keys.failed_index(queue),
        keys.failed_by_event(queue, "a.x"),
        keys.failed_by_handler(queue, "h.one"),
        keys.failed_by_event_handler(queue, "a.x", "h.one"),
    ):
        assert rclient.zscore(index, legacy.id) is None
    assert await bus.count_failed_jobs("a.x", "h.one") == 1


def test_retention_settings_defaults_environment_and_errors():
    s = Settings.resolve(environ={})
    assert (s.failed_max, s.failed_max_age, s.outbox_max) == (100_000, 30 * 86400, 1_000_000)
    assert s.failed_max == int(DEFAULTS["EARNEVENTS_FAILED_MAX"])
    s = Settings.resolve(
        environ={"EARNEVENTS_FAILED_MAX": "5", "EARNEVENTS_FAILED_MAX_AGE": "60", "EARNEVENTS_OUTBOX_MAX": "9"}
    )
    assert (s.failed_max, s.failed_max_age, s.outbox_max) == (5, 60, 9)
    for env, match in [
        ({"EARNEVENTS_FAILED_MAX": "0"}, "EARNEVENTS_FAILED_MAX must be >= 1"),
        ({"EARNEVENTS_FAILED_MAX_AGE": "0"}, "EARNEVENTS_FAILED_MAX_AGE must be positive"),
        ({"EARNEVENTS_FAILED_MAX_AGE": "1e12"}, "at most"),
        ({"EARNEVENTS_FAILED_MAX_AGE": "inf"}, "EARNEVENTS_FAILED_MAX_AGE must be a finite number"),
        ({"EARNEVENTS_OUTBOX_MAX": "none"}, "EARNEVENTS_OUTBOX_MAX must be a whole number"),
    ]:
        with pytest.raises(ConfigError, match=match):
            Settings.resolve(environ=env)


async def test_init_hands_the_retention_settings_to_the_failure_store(redis_url, queue, monkeypatch):
    monkeypatch.setenv("EARNEVENTS_FAILED_MAX", "12")
    monkeypatch.setenv("EARNEVENTS_FAILED_MAX_AGE", "3600")
    env = await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue})
    try:
        assert (env.failures.max_jobs, env.failures.max_age) == (12, 3600)
    finally:
        await earnevents.close()


@pytest.mark.mongo
async def test_a_full_outbox_refuses_the_publish_and_stores_nothing(mongo_url, mongo_db, queue, monkeypatch):
    # Given Redis unreachable (publish_timeout 2: 1 s for Redis, 1 s left for the outbox even on a loaded
    # machine) and an outbox of at most 3 events per queue
    monkeypatch.setenv("EARNEVENTS_OUTBOX_MAX", "3")
    env = await earnevents.init(
        redis_uri=f"redis://127.0.0.1:{free_port()}/0",
        mongo_uri=mongo_url,
        database=mongo_db,
        event_config={"queue_name": queue, "publish_timeout": 2},
    )
    col = env.db[outbox.COLLECTION]
    try:
        await event_bus.publish_batch([Event("t.out", {"i": i}) for i in range(2)])
        assert await col.count_documents({"queue": queue}) == 2
        # When a batch of two more is published
        with pytest.raises(OutboxFullError) as info:
            await event_bus.publish_batch([Event("t.out", {"i": i}) for i in range(2, 4)])
        # Then it is refused whole with a typed error naming the cap, and nothing is stored
        assert isinstance(info.value, PublishError)
        assert "maximum of 3 (EARNEVENTS_OUTBOX_MAX)" in str(info.value) and "nothing was stored" in str(info.value)
        assert await col.count_documents({"queue": queue}) == 2
        # and one that fits still goes in
        await event_bus.publish(Event("t.out", {"i": 4}))
        assert await col.count_documents({"queue": queue}) == 3
    finally:
        await earnevents.close()
