"""Job claims and completion records against a real redis-server."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from earnevents import keys
from earnevents.testing import RedisServer, free_port, wait_for
from earnevents.worker.completions import (
    CLAIM_TTL,
    COMPLETED,
    FRESH,
    HELD,
    SETTLED,
    Completions,
    bucket_ms,
    digest,
    job_record,
)


class Counting:
    """Wraps a client, counting the round trips Completions makes."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.trips = 0

    async def set(self, *args, **kwargs):
        self.trips += 1
        return await self.client.set(*args, **kwargs)

    async def evalsha(self, *args, **kwargs):
        self.trips += 1
        return await self.client.evalsha(*args, **kwargs)

    async def script_load(self, *args, **kwargs):
        self.trips += 1
        return await self.client.script_load(*args, **kwargs)

    def __getattr__(self, name):  # what redis-py's Script asks of its client
        return getattr(self.client, name)

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


def event_id() -> str:
    return uuid.uuid4().hex


async def record_keys(client: aioredis.Redis, window: float) -> list[bytes]:
    """The completion record keys (bucket hashes and sets) for this window."""
    return [k async for k in client.scan_iter(f"{keys.dedup_buckets(bucket_ms(window))}*")]


async def record_ttls(client: aioredis.Redis, window: float) -> list[int]:
    return [await client.pttl(k) for k in await record_keys(client, window)]


def redis_ms(client: redis.Redis) -> int:
    """Redis' clock, which buckets the records, in ms."""
    sec, usec = client.time()
    return sec * 1000 + usec // 1000


async def test_concurrent_marks_share_round_trips_and_all_are_stored(client):
    completions = Completions(lambda: client, window=60)
    events = [event_id() for _ in range(50)]
    await completions.mark(events[0], ["warm"], "t")  # loads the script once
    client.trips = 0
    await asyncio.gather(*(completions.mark(e, ["h"], "t") for e in events))
    assert client.trips <= 3  # the first write, then everyone who arrived meanwhile
    assert all([await completions.recorded(e, "h") for e in events])
    assert all(50_000 < ttl <= 60_000 + bucket_ms(60) for ttl in await record_ttls(client.client, 60))


async def test_a_fresh_job_is_claimed_for_its_first_delivery(client):
    completions = Completions(lambda: client, window=60)
    ev = event_id()
    assert await completions.claim("tag-1", [(ev, ["a", "b"])]) == [{"a": 1, "b": 1}]
    assert await client.client.hget(keys.job_claims(ev), digest("a")) == b"1:tag-1"


async def test_a_job_claimed_by_another_message_is_held(client):
    completions = Completions(lambda: client, window=60)
    ev = event_id()
    await completions.claim("tag-1", [(ev, ["a"])])
    assert await completions.claim("tag-2", [(ev, ["a", "b"])]) == [{"a": HELD, "b": 1}]
    assert await client.client.hget(keys.job_claims(ev), digest("a")) == b"1:tag-1"  # untouched


async def test_the_same_message_redelivered_takes_over_its_claim_and_counts_only_starts(client):
    completions = Completions(lambda: client, window=60)
    ev = event_id()
    assert await completions.claim("tag-1", [(ev, ["a", "b"])]) == [{"a": 1, "b": 1}]  # both start
    # The worker died; the message is back: both claims are its own, each had 1 start
    assert await completions.claim("tag-1", [(ev, ["a", "b"])]) == [{"a": 2, "b": 2}]
    await completions.started(ev, "a", "tag-1", 2)  # a starts and the worker dies again
    assert await completions.claim("tag-1", [(ev, ["a", "b"])]) == [{"a": 3, "b": 2}]


async def test_a_take_over_alone_counts_nothing(client):
    # A claim retried after its reply was lost, or a delivery that died before a job started.
    completions = Completions(lambda: client, window=60)
    ev = event_id()
    await completions.claim("tag-1", [(ev, ["a"])])
    assert [await completions.claim("tag-1", [(ev, ["a"])]) for _ in range(3)] == [[{"a": 2}]] * 3


async def test_another_message_cannot_record_a_start_on_a_claim_it_does_not_hold(client):
    completions = Completions(lambda: client, window=60)
    ev = event_id()
    await completions.claim("tag-1", [(ev, ["a"])])
    await completions.started(ev, "a", "tag-2", 7)
    assert await completions.claim("tag-1", [(ev, ["a"])]) == [{"a": 2}]


async def test_of_many_copies_claiming_at_once_exactly_one_gets_each_job(redis_url):
    # Given 20 copies of one message, each on its own connection, claiming together
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(20)]
    ev = event_id()
    try:
        results = await asyncio.gather(
            *(
                Completions(lambda c=c: c, window=60).claim(f"copy-{i}", [(ev, ["a", "b"])])
                for i, c in enumerate(clients)
            )
        )
    finally:
        for c in clients:
            await c.aclose()
    # Then each job has exactly one owner; everyone else sees it held
    for handler in ("a", "b"):
        assert sorted(r[0][handler] for r in results) == [HELD] * 19 + [1]


async def test_a_completed_job_is_skipped_by_every_message(client):
    completions = Completions(lambda: client, window=60)
    ev = event_id()
    await completions.claim("tag-1", [(ev, ["a", "b"])])
    await completions.mark(ev, ["a"], "tag-1")
    assert await completions.claim("tag-1", [(ev, ["a", "b"])]) == [{"a": COMPLETED, "b": 2}]
    assert await completions.claim("tag-2", [(ev, ["a"])]) == [{"a": COMPLETED}]


async def test_a_released_job_is_free_for_the_next_message_and_counts_from_one(client):
    # A failure settled (retry scheduled): the retry is a new message with a new tag.
    completions = Completions(lambda: client, window=60)
    ev = event_id()
    await completions.claim("tag-1", [(ev, ["a"])])
    await completions.started(ev, "a", "tag-1", 2)
    await completions.release(ev, ["a"], "tag-1")
    assert await completions.claim("retry-tag", [(ev, ["a"])]) == [{"a": 1}]


async def test_releasing_leaves_another_messages_claim_alone(client):
    completions = Completions(lambda: client, window=60)
    ev = event_id()
    await completions.claim("tag-1", [(ev, ["a"])])
    await completions.release(ev, ["a"], "tag-2")
    assert await completions.claim("tag-3", [(ev, ["a"])]) == [{"a": HELD}]


async def test_a_job_settled_as_failed_is_skipped_by_its_own_message_only(client):
    # A failure recorded (or its retry scheduled) and the message's acknowledgement lost: the
    # same message back must not run the job again; a retry or `retry_job` (another copy) does.
    completions = Completions(lambda: client, window=60)
    ev = event_id()
    await completions.claim("tag-1", [(ev, ["a", "b"])])
    await completions.started(ev, "a", "tag-1", 3)
    await completions.settled(ev, ["a"], "tag-1")  # a died too often: recorded as failed
    assert await completions.claim("tag-1", [(ev, ["a", "b"])]) == [{"a": SETTLED, "b": 2}]
    assert await completions.claim("retry-tag", [(ev, ["a"])]) == [{"a": FRESH}]
    assert await completions.claim("tag-1", [(ev, ["a"])]) == [{"a": SETTLED}]  # still, beside the retry's claim
    await completions.settled(ev, ["a"], "retry-tag")  # the retry failed too
    assert await completions.claim("tag-1", [(ev, ["a"])]) == [{"a": SETTLED}]
    assert await completions.claim("retry-tag", [(ev, ["a"])]) == [{"a": SETTLED}]
    assert await completions.claim("retry-2", [(ev, ["a"])]) == [{"a": FRESH}]


async def test_a_released_job_settled_afterwards_is_skipped_by_its_message_and_its_claims_expire(client):
    # A retry is scheduled between the release and the settled mark: it may claim the job at once.
    completions = Completions(lambda: client, window=60)
    ev, other = event_id(), event_id()
    await completions.claim("tag-1", [(ev, ["a", "b"]), (other, ["a"])])
    await completions.release(ev, ["a", "b"], "tag-1")
    await completions.release(other, ["a"], "tag-1")
    await completions.claim("retry-tag", [(ev, ["b"])])
    await completions.settled(ev, ["a", "b"], "tag-1")
    await completions.settled(other, ["a"], "tag-1")  # its claims hash was gone: made anew
    assert await completions.claim("tag-1", [(ev, ["a", "b"]), (other, ["a"])]) == [
        {"a": SETTLED, "b": SETTLED},
        {"a": SETTLED},
    ]
    assert await client.client.hget(keys.job_claims(ev), digest("b")) == b"1:retry-tag"  # untouched
    assert await completions.claim("retry-tag", [(ev, ["b"])]) == [{"b": 2}]
    assert 0 < await client.client.pttl(keys.job_claims(other)) <= CLAIM_TTL * 1000


async def test_settling_leaves_another_messages_claim_alone(client):
    completions = Completions(lambda: client, window=60)
    ev = event_id()
    await completions.claim("tag-1", [(ev, ["a"])])
    await completions.settled(ev, ["a"], "tag-2")
    assert await completions.claim("tag-1", [(ev, ["a"])]) == [{"a": 2}]


async def test_one_claim_covers_every_event_of_a_packed_message_in_one_round_trip(client):
    completions = Completions(lambda: client, window=60)
    e1, e2, e3 = event_id(), event_id(), event_id()
    await completions.claim("other", [(e2, ["b"])])
    await completions.claim("tag-0", [(e1, ["a"])])
    await completions.mark(e1, ["a"], "tag-0")
    client.trips = 0
    result = await completions.claim("tag-1", [(e1, ["a", "b"]), (e2, ["a", "b"]), (e3, ["a"])])
    assert result == [{"a": COMPLETED, "b": 1}, {"a": 1, "b": HELD}, {"a": 1}]
    assert client.trips == 1


async def test_claims_made_at_once_on_one_loop_share_a_script_and_each_gets_its_own_results(client):
    # Given (as under -P threads) many messages claiming at once on one loop: fresh events,
    # two copies of one event, and a redelivered message taking over its own claim
    completions = Completions(lambda: client, window=60)
    fresh = [event_id() for _ in range(8)]
    twice, back = event_id(), event_id()
    await completions.claim("died", [(back, ["a", "b"])])
    client.trips = 0
    calls = [completions.claim(f"tag-{i}", [(ev, ["a"])]) for i, ev in enumerate(fresh)]
    calls += [completions.claim("copy-1", [(twice, ["a"])]), completions.claim("copy-2", [(twice, ["a"])])]
    calls.append(completions.claim("died", [(back, ["a", "b"])]))
    results = await asyncio.gather(*calls)
    # Then the first is sent at once and the ten that came meanwhile in one more script
    assert client.trips == 2
    # And each message gets its own jobs' states
    assert results[:8] == [[{"a": FRESH}]] * 8
    assert sorted(r[0]["a"] for r in results[8:10]) == [HELD, FRESH]  # exactly one copy runs it
    assert results[10] == [{"a": 2, "b": 2}]
    for i, ev in enumerate(fresh):
        assert await client.client.hget(keys.job_claims(ev), digest("a")) == f"1:tag-{i}".encode()


async def test_a_failed_shared_claim_reaches_every_message_it_carried_and_a_retry_claims(redis_url):
    # Given a client whose connection is cut while claims wait to share a script
    real = aioredis.Redis.from_url(redis_url)
    cut = {"on": False}

    class Flaky(Counting):
        async def evalsha(self, *args, **kwargs):
            if cut["on"]:
                raise redis.ConnectionError("cut")
            return await super().evalsha(*args, **kwargs)

    client = Flaky(real)
    completions = Completions(lambda: client, window=60)
    ev1, ev2 = event_id(), event_id()
    try:
        await completions.claim("warm", [(event_id(), ["a"])])  # scripts loaded
        cut["on"] = True
        results = await asyncio.gather(
            completions.claim("tag-1", [(ev1, ["a"])]),
            completions.claim("tag-2", [(ev2, ["a"])]),
            return_exceptions=True,
        )
        assert [type(r) for r in results] == [redis.ConnectionError, redis.ConnectionError]
        # When Redis is back, each message claims its jobs as fresh
        cut["on"] = False
        assert await completions.claim("tag-1", [(ev1, ["a"])]) == [{"a": FRESH}]
        assert await completions.claim("tag-2", [(ev2, ["a"])]) == [{"a": FRESH}]
    finally:
        await real.aclose()


async def test_claims_live_only_while_in_flight_and_completions_for_the_window(client):
    completions = Completions(lambda: client, window=60)
    ev = event_id()
    await completions.claim("tag-1", [(ev, ["a", "b"])])
    assert await client.client.pttl(keys.job_claims(ev)) > 86_000_000  # a bound, not the way out
    await completions.mark(ev, ["a"], "tag-1")
    assert await client.client.hkeys(keys.job_claims(ev)) == [digest("b")]
    assert all(50_000 < ttl <= 60_000 + bucket_ms(60) for ttl in await record_ttls(client.client, 60))
    await completions.release(ev, ["b"], "tag-1")
    assert not await client.client.exists(keys.job_claims(ev))
    assert await completions.recorded(ev, "a") and not await completions.recorded(ev, "b")


async def test_jobs_sharing_a_shard_are_told_apart_by_event_and_handler(client):
    # Given a fresh bucket layout (one shard), jobs of two events and two handlers, half completed
    window = 3600.0 + uuid.uuid4().int % 1000  # a layout of its own on the shared server
    completions = Completions(lambda: client, window=window)
    e1, e2 = event_id(), event_id()
    await completions.claim("t", [(e1, ["a", "b"]), (e2, ["a", "b"])])
    await completions.mark(e1, ["a"], "t")
    await completions.mark(e2, ["b"], "t")
    [shard] = [k for k in await record_keys(client.client, window) if k.count(b":") == 5]
    assert await client.client.scard(shard) == 2  # both in the same set
    # Then only those two are completed: neither the other handler nor the other event
    assert await completions.claim("t2", [(e1, ["a", "b"]), (e2, ["a", "b"])]) == [
        {"a": COMPLETED, "b": HELD},
        {"a": HELD, "b": COMPLETED},
    ]
    await completions.release(e1, ["b"], "t")
    await completions.release(e2, ["a"], "t")
    assert await completions.claim("t3", [(e1, ["b"]), (e2, ["a"])]) == [{"b": FRESH}, {"a": FRESH}]


async def test_a_record_in_another_shard_is_not_a_completion(client):
    # Given the job's own member in a set that is not its shard (another selector)
    window = 3600.0 + uuid.uuid4().int % 1000
    completions = Completions(lambda: client, window=window)
    ev, other = event_id(), event_id()
    await completions.claim("t", [(other, ["a"])])
    await completions.mark(other, ["a"], "t")  # makes the bucket, with one shard
    [meta] = [k for k in await record_keys(client.client, window) if k.count(b":") == 3]
    await client.client.hset(meta, "n0", 2)  # two shards: the job's selector picks one
    member, sel = job_record(ev, "a")
    await client.client.sadd(meta + b":0:" + str(1 - sel % 2).encode(), member)
    # Then the job is not completed: a member counts only in its own shard
    assert await completions.claim("t", [(ev, ["a"])]) == [{"a": FRESH}]


async def test_a_completion_is_found_after_its_bucket_has_ended(client, rclient):
    # Given a 2.4 s window (0.1 s buckets) and a job completed in one bucket
    completions = Completions(lambda: client, window=2.4)
    ev, published = event_id(), time.time()
    await completions.claim("t", [(ev, ["a"])], [published])
    await completions.mark(ev, ["a"], "t")
    done_in = redis_ms(rclient) // bucket_ms(2.4)
    # When the next buckets begin
    wait_for(lambda: redis_ms(rclient) // bucket_ms(2.4) >= done_in + 2, 5, "two buckets later")
    # Then a claim looking from the event's timestamp still finds it, in an older bucket
    assert await completions.claim("t2", [(ev, ["a"])], [published]) == [{"a": COMPLETED}]
    prefix = keys.dedup_buckets(bucket_ms(2.4)).encode()
    sets = [k for k in await record_keys(client.client, 2.4) if k.count(b":") == 5]
    assert any(int(k[len(prefix) :].split(b":")[0]) <= done_in for k in sets)


async def test_an_old_events_recent_completion_is_found(client):
    # Given an event published long before the window began, completed just now
    completions = Completions(lambda: client, window=60)
    ev = event_id()
    await completions.claim("t", [(ev, ["a"])], [time.time() - 3600])
    await completions.mark(ev, ["a"], "t")
    # Then its redelivery skips the job: the check looks back a whole window at least
    assert await completions.claim("t2", [(ev, ["a"])], [time.time() - 3600]) == [{"a": COMPLETED}]


async def test_a_publisher_clock_ahead_of_redis_still_finds_a_recent_completion(client):
    # Given an event stamped an hour ahead of Redis' clock, its job completed just now
    completions = Completions(lambda: client, window=86400)
    ev, ahead = event_id(), time.time() + 3600
    await completions.claim("t", [(ev, ["a"])], [ahead])
    await completions.mark(ev, ["a"], "t")
    # Then its redelivery still skips the job: the check reads the last minutes at least
    assert await completions.claim("t2", [(ev, ["a"])], [ahead]) == [{"a": COMPLETED}]


async def test_a_completion_older_than_the_window_is_forgotten_and_its_keys_expire(client, rclient):
    # Given a 1.2 s window (50 ms buckets) and a job completed
    completions = Completions(lambda: client, window=1.2)
    ev, published = event_id(), time.time()
    await completions.claim("t", [(ev, ["a"])], [published])
    await completions.mark(ev, ["a"], "t")
    assert await completions.claim("t2", [(ev, ["a"])], [published]) == [{"a": COMPLETED}]
    done_at = redis_ms(rclient)
    # When the window and the bucket it completed in have passed
    wait_for(lambda: redis_ms(rclient) > done_at + 1200 + bucket_ms(1.2), 5, "the window passed")
    # Then the job runs again, and its records are gone
    assert await completions.claim("t3", [(ev, ["a"])], [published]) == [{"a": FRESH}]
    wait_for(lambda: not rclient.keys(f"{keys.dedup_buckets(bucket_ms(1.2))}*"), 5, "the records expired")


async def test_every_record_key_expires_within_the_window_and_a_bucket(client):
    window = 7200.0 + uuid.uuid4().int % 1000
    completions = Completions(lambda: client, window=window)
    events = [event_id() for _ in range(300)]
    await completions.claim("t", [(e, ["a", "b"]) for e in events])
    assert 0 < await client.client.pttl(keys.job_claims(events[0])) <= CLAIM_TTL * 1000
    await asyncio.gather(*(completions.mark(e, ["a", "b"], "t") for e in events))
    ttls = await record_ttls(client.client, window)
    assert ttls and all(0 < ttl <= window * 1000 + bucket_ms(window) for ttl in ttls)


async def test_a_full_shard_starts_a_generation_with_more_shards_and_every_record_is_found():
    # Given Redis keeping sets of up to 16 integers compact
    with RedisServer() as server:
        c = aioredis.Redis.from_url(server.url)
        try:
            await c.config_set("set-max-intset-entries", 16)
            completions = Completions(lambda: c, window=3600)
            events = [event_id() for _ in range(200)]
            # When 400 jobs complete in one bucket, which began with one shard
            await completions.claim("t", [(e, ["a", "b"]) for e in events])
            await asyncio.gather(*(completions.mark(e, ["a", "b"], "t") for e in events))
            # Then every set stayed an intset within the limit, and every completion is found
            sets = [k for k in await record_keys(c, 3600) if k.count(b":") == 5]
            assert len(sets) > 400 / 16
            assert {await c.object("encoding", k) for k in sets} == {b"intset"}
            assert max([await c.scard(k) for k in sets]) <= 16
            assert sum([await c.scard(k) for k in sets]) == 400
            results = await completions.claim("t2", [(e, ["a", "b"]) for e in events])
            assert results == [{"a": COMPLETED, "b": COMPLETED}] * 200
        finally:
            await c.aclose()


async def test_completions_are_recorded_where_config_is_denied():
    # Given a Redis user that may not run CONFIG (as on managed Redis)
    with RedisServer() as server:
        admin = aioredis.Redis.from_url(server.url)
        await admin.acl_setuser(
            "app", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-config"]
        )
        c = aioredis.Redis.from_url(server.url, username="app", password="pw")
        try:
            completions = Completions(lambda: c, window=3600)
            ev = event_id()
            # When a job completes
            await completions.claim("t", [(ev, ["a"])])
            await completions.mark(ev, ["a"], "t")
            # Then it is recorded in an intset, sized by the default limit
            assert await completions.claim("t2", [(ev, ["a"])]) == [{"a": COMPLETED}]
            sets = [k for k in await record_keys(admin, 3600) if k.count(b":") == 5]
            assert sets and {await admin.object("encoding", k) for k in sets} == {b"intset"}
        finally:
            await c.aclose()
            await admin.aclose()


async def test_redis_keeps_a_few_bytes_per_completed_job():
    # Given a Redis of its own, its scripts loaded
    with RedisServer() as server:
        c = aioredis.Redis.from_url(server.url)
        try:
            completions = Completions(lambda: c, window=86400)
            await handle(completions, [f"warm-{i}" for i in range(50)])
            before = await used_memory(c)
            # When 20,000 jobs of 10,000 events (2 handlers) complete, one message per event
            await handle(completions, [event_id() for _ in range(10_000)])
            grown = await used_memory(c) - before
            # Then Redis grew by at most 20 bytes per job (a key per event took ~100-180)
            assert grown / 20_000 <= 20
            records = await record_keys(c, 86400)
            assert sum([await c.memory_usage(k, samples=0) for k in records]) / 20_000 <= 12
            sets = [k for k in records if k.count(b":") == 5]
            assert sum([await c.scard(k) for k in sets]) == 20_000 + 100  # with the warm-up's
            assert {await c.object("encoding", k) for k in sets} == {b"intset"}
        finally:
            await c.aclose()


async def handle(completions: Completions, events: list[str]) -> None:
    """Claim and complete 2 handlers per event, 50 messages at a time, as workers do."""
    for i in range(0, len(events), 50):
        chunk = events[i : i + 50]
        await asyncio.gather(*(completions.claim(f"t{e}", [(e, ["h0", "h1"])], [time.time()]) for e in chunk))
        await asyncio.gather(*(completions.mark(e, ["h0", "h1"], f"t{e}") for e in chunk))


async def used_memory(client: aioredis.Redis) -> int:
    """``used_memory`` with only this client connected (others' buffers are not records)."""
    await client.connection_pool.disconnect()
    return int((await client.info("memory"))["used_memory"])


async def test_with_the_window_off_claims_still_hold_and_nothing_is_remembered(client):
    completions = Completions(lambda: client, window=0)
    ev = event_id()
    assert await completions.claim("tag-1", [(ev, ["a"])]) == [{"a": 1}]
    assert await completions.claim("tag-2", [(ev, ["a"])]) == [{"a": HELD}]
    await completions.mark(ev, ["a"], "tag-1")
    assert not await client.client.exists(keys.job_claims(ev))
    member, _ = job_record(ev, "a")
    sets = [k async for k in client.client.scan_iter(f"{keys.PREFIX}:dedup:*:*:*")]
    assert not [k for k in sets if await client.client.sismember(k, member)]
    assert await completions.claim("tag-2", [(ev, ["a"])]) == [{"a": 1}]


async def test_a_failed_write_reaches_every_waiting_caller():
    dead = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    completions = Completions(lambda: dead, window=60)
    results = await asyncio.gather(*(completions.mark(f"e{i}", ["h"], "t") for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    await dead.aclose()
