"""Job claims and completion records against a real redis-server."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from earnevents import keys
from earnevents.testing import free_port
from earnevents.worker.completions import COMPLETED, HELD, Completions, completed_in, digest


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


async def test_concurrent_marks_share_round_trips_and_all_are_stored(client):
    completions = Completions(lambda: client, window=60)
    events = [event_id() for _ in range(50)]
    await completions.mark(events[0], ["warm"], "t")  # loads the script once
    client.trips = 0
    await asyncio.gather(*(completions.mark(e, ["h"], "t") for e in events))
    assert client.trips <= 3  # the first write, then everyone who arrived meanwhile
    assert all([completed_in(await client.client.get(keys.completed(e)), "h") for e in events])
    ttl = await client.client.pttl(keys.completed(events[1]))
    assert 50_000 < ttl <= 60_000


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


async def test_claims_live_only_while_in_flight_and_completions_for_the_window(client):
    completions = Completions(lambda: client, window=60)
    ev = event_id()
    await completions.claim("tag-1", [(ev, ["a", "b"])])
    assert await client.client.pttl(keys.job_claims(ev)) > 86_000_000  # a bound, not the way out
    await completions.mark(ev, ["a"], "tag-1")
    assert await client.client.hkeys(keys.job_claims(ev)) == [digest("b")]
    assert 50_000 < await client.client.pttl(keys.completed(ev)) <= 60_000
    await completions.release(ev, ["b"], "tag-1")
    assert not await client.client.exists(keys.job_claims(ev))
    marks = await client.client.get(keys.completed(ev))
    assert completed_in(marks, "a") and not completed_in(marks, "b")


async def test_a_completion_string_is_read_digest_by_digest(client):
    # Given marks whose bytes hold handler c's digest straddling two digests
    completions = Completions(lambda: client, window=60)
    ev, c = event_id(), digest("c")
    await client.client.set(keys.completed(ev), b"\0" * 4 + c + b"\0" * 4)
    # Then c did not complete: only whole, aligned digests count
    assert await completions.claim("t", [(ev, ["c"])]) == [{"c": 1}]
    await completions.mark(ev, ["c"], "t")
    assert await completions.claim("t2", [(ev, ["c"])]) == [{"c": COMPLETED}]


async def test_with_the_window_off_claims_still_hold_and_nothing_is_remembered(client):
    completions = Completions(lambda: client, window=0)
    ev = event_id()
    assert await completions.claim("tag-1", [(ev, ["a"])]) == [{"a": 1}]
    assert await completions.claim("tag-2", [(ev, ["a"])]) == [{"a": HELD}]
    await completions.mark(ev, ["a"], "tag-1")
    assert not await client.client.exists(keys.job_claims(ev), keys.completed(ev))
    assert await completions.claim("tag-2", [(ev, ["a"])]) == [{"a": 1}]


async def test_a_failed_write_reaches_every_waiting_caller():
    dead = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    completions = Completions(lambda: dead, window=60)
    results = await asyncio.gather(*(completions.mark(f"e{i}", ["h"], "t") for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    await dead.aclose()
