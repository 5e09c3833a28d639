"""Publishing: validation before anything is sent, batching, delays, outages."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import threading
import time

import pytest
from conftest import LostReply

import earnevents
from earnevents import Event, NotInitializedError, PublishError, event_bus, keys, message
from earnevents.testing import free_port


async def test_publish_before_init_says_to_call_init():
    await earnevents.close()
    with pytest.raises(NotInitializedError, match=r"earnevents\.init"):
        await event_bus.publish(Event("a.b", {}))


async def test_publish_returns_the_event_id_and_enqueues_one_message(bus, rclient, queue):
    event = Event("user.created", {"email": "a@example.com"})
    assert await bus.publish(event) == event.id
    assert rclient.llen(queue) == 1
    envelope = json.loads(rclient.lindex(queue, 0))
    assert envelope["headers"]["id"] == event.id


def _holding_itself() -> dict:
    data: dict = {}
    data["me"] = data
    return data


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda b: b.publish({"name": "a.b"}), TypeError, "Event"),
        (lambda b: b.publish(Event("a.b", {}), delay=-1), ValueError, "delay"),
        (lambda b: b.publish(Event("a.b", {}), delay=float("nan")), ValueError, "delay"),
        (lambda b: b.publish(Event("a.b", {}), delay="5"), TypeError, "delay"),
        (lambda b: b.publish(Event("a.b", {"s": {1}})), TypeError, "set"),
        (lambda b: b.publish(Event("a.b", _holding_itself())), TypeError, r"data\['me'\] is data itself"),
        (lambda b: b.publish_batch([Event("a.b", {}), Event("a.c", {"f": object()})]), TypeError, "object"),
        (lambda b: b.publish_batch(Event("a.b", {})), TypeError, "list"),
        (lambda b: b.publish_batch([Event("a.b", {})], events_per_message=0), ValueError, "events_per_message"),
        (lambda b: b.publish_batch([Event("a.b", {})], events_per_message=2.0), TypeError, "events_per_message"),
        (lambda b: b.publish_batch([Event("a.b", {})], events_per_message=True), TypeError, "events_per_message"),
        (lambda b: b.publish_batch([Event("a.b", {})], delay=5, events_per_message=2), ValueError, "immediate"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_enqueued(bus, rclient, queue, call, exc, match):
    with pytest.raises(exc, match=match):
        await call(bus)
    assert rclient.llen(queue) == 0
    assert rclient.zcard(keys.scheduled_zset(queue)) == 0


async def test_publish_batch_is_one_redis_command_in_order(bus, rclient, queue):
    events = [Event("t.n", {"i": i}) for i in range(50)]
    before = rclient.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0)
    ids = await bus.publish_batch(events)
    after = rclient.info("commandstats")["cmdstat_lpush"]["calls"]
    assert ids == [e.id for e in events]
    assert after - before == 1
    popped = [json.loads(rclient.rpop(queue))["headers"]["id"] for _ in range(50)]
    assert popped == ids  # the worker's BRPOP end yields publish order


async def test_publish_batch_packs_events_per_message_in_order(bus, rclient, queue):
    from earnevents import message

    events = [Event("t.n", {"i": i}) for i in range(7)]
    ids = await bus.publish_batch(events, events_per_message=3)
    assert ids == [e.id for e in events]
    packs = [message.parse_packed(rclient.rpop(queue))[0] for _ in range(rclient.llen(queue))]
    assert [[w["id"] for w in pack] for pack in packs] == [ids[0:3], ids[3:6], ids[6:7]]
    assert [w["data"] for w in packs[0]] == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_delay_parks_the_message_in_the_schedule_due_later(bus, rclient, queue):
    t0 = time.time()
    event_id = await bus.publish(Event("t.later", {}), delay=30)
    assert rclient.llen(queue) == 0
    due = rclient.zscore(keys.scheduled_zset(queue), event_id)
    assert due is not None and t0 + 29 < due < time.time() + 31
    assert rclient.hexists(keys.scheduled_payloads(queue), event_id)


async def test_zero_delay_publishes_immediately(bus, rclient, queue):
    await bus.publish(Event("t.now", {}), delay=0)
    assert rclient.llen(queue) == 1


async def test_init_needs_no_redis_and_publish_fails_in_bounded_time():
    port = free_port()  # nothing listens here
    await earnevents.init(redis_uri=f"redis://127.0.0.1:{port}/0", event_config={"publish_timeout": 1})
    try:
        t0 = time.monotonic()
        with pytest.raises(PublishError, match="within 1s"):
            await event_bus.publish(Event("a.b", {}))
        assert time.monotonic() - t0 < 3
    finally:
        await earnevents.close()


class BlackHole:
    """Accepts TCP connections and never answers: the worst case for a blocking client."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


async def test_publishing_never_stalls_the_event_loop_even_when_redis_hangs():
    hole = BlackHole()
    await earnevents.init(redis_uri=f"redis://127.0.0.1:{hole.port}/0", event_config={"publish_timeout": 1})
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - t - 0.005)

    tick = asyncio.create_task(ticker())
    try:
        t0 = time.monotonic()
        with pytest.raises(PublishError):
            await event_bus.publish(Event("a.b", {}))
        elapsed = time.monotonic() - t0
    finally:
        done.set()
        await tick
        await earnevents.close()
        hole.close()
    assert 0.9 < elapsed < 2.5
    assert worst < 0.1, f"event loop stalled {worst * 1000:.0f} ms"


async def test_close_then_init_again_works(redis_url, rclient, queue):
    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue})
    await earnevents.close()
    with pytest.raises(NotInitializedError):
        await event_bus.publish(Event("a.b", {}))
    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue})
    try:
        await event_bus.publish(Event("a.b", {}))
    finally:
        await earnevents.close()
    assert rclient.llen(queue) == 1


async def test_mongodb_uri_is_an_alias_of_mongo_uri(redis_url):
    env = await earnevents.init(redis_uri=redis_url, mongodb_uri="mongodb://127.0.0.1:1/")
    try:
        assert env.settings.mongo_uri == "mongodb://127.0.0.1:1/"
    finally:
        await earnevents.close()


async def test_publisher_retry_policy_travels_with_the_message(redis_url, rclient, queue):
    policy = {"max_retries": 5, "interval_start": 1, "interval_step": 2, "interval_max": 9}
    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue, "retry_policy": policy})
    try:
        await event_bus.publish(Event("a.b", {}))
    finally:
        await earnevents.close()
    import base64

    body = json.loads(base64.b64decode(json.loads(rclient.rpop(queue))["body"]))
    assert body[1]["retry_policy"] == {**policy, "interval_start": 1.0, "interval_step": 2.0, "interval_max": 9.0}


async def test_publish_succeeds_when_redis_comes_back_within_the_timeout(queue):
    from earnevents.testing import RedisServer

    server = RedisServer()  # port reserved, not started yet
    await earnevents.init(redis_uri=server.url, event_config={"queue_name": queue, "publish_timeout": 10})
    try:
        publishing = asyncio.create_task(event_bus.publish(Event("a.b", {})))
        await asyncio.sleep(0.5)
        assert not publishing.done()
        await asyncio.to_thread(server.start)
        event_id = await asyncio.wait_for(publishing, 10)
        import redis as redis_sync

        client = redis_sync.Redis.from_url(server.url)
        assert json.loads(client.rpop(queue))["headers"]["id"] == event_id
        client.close()
    finally:
        await earnevents.close()
        server.cleanup()


async def test_at_schedules_for_that_moment(bus, rclient, queue):
    at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)
    event_id = await bus.publish(Event("t.at", {}), at=at)
    assert rclient.zscore(keys.scheduled_zset(queue), event_id) == pytest.approx(at.timestamp(), abs=0.001)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"at": dt.datetime(2030, 1, 1)}, ValueError, "timezone-aware"),
        ({"at": "2030-01-01"}, TypeError, "datetime"),
        ({"at": dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc), "delay": 5}, ValueError, "not both"),
    ],
)
async def test_bad_at_is_refused(bus, rclient, queue, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        await bus.publish(Event("t.at", {}), **kwargs)
    assert rclient.zcard(keys.scheduled_zset(queue)) == 0


async def test_get_scheduled_lists_pending_events_soonest_first_and_by_name(bus):
    later = await bus.publish(Event("t.b", {"n": 2}), delay=300)
    sooner = await bus.publish(Event("t.a", {"n": 1, "when": dt.date(2026, 1, 1)}), delay=100)
    other = await bus.publish(Event("t.b", {"n": 3}), delay=200)
    listed = await bus.get_scheduled()
    assert [s.id for s in listed] == [sooner, other, later]
    first = listed[0]
    assert first.event.name == "t.a" and first.event.data == {"n": 1, "when": dt.date(2026, 1, 1)}
    assert first.handler is None and first.attempt == 0
    assert 95 < (first.due_at - dt.datetime.now(dt.timezone.utc)).total_seconds() <= 100
    assert [s.id for s in await bus.get_scheduled(event_name="t.b")] == [other, later]
    assert [s.id for s in await bus.get_scheduled(limit=1, offset=1)] == [other]
    assert await bus.count_scheduled() == 3 and await bus.count_scheduled(event_name="t.a") == 1


async def test_cancel_withdraws_a_pending_event_once(bus, rclient, queue):
    keep = await bus.publish(Event("t.c", {}), delay=60)
    drop = await bus.publish(Event("t.c", {}), delay=60)
    assert await bus.cancel(drop) is True
    assert await bus.cancel(drop) is False
    assert await bus.cancel("never-published") is False
    assert [s.id for s in await bus.get_scheduled(event_name="t.c")] == [keep]
    assert not rclient.hexists(keys.scheduled_payloads(queue), drop)


async def test_concurrent_publishes_share_round_trips_and_keep_call_order(bus, rclient, queue):
    events = [Event("t.n", {"i": i}) for i in range(200)]
    before = rclient.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0)
    ids = await asyncio.gather(*(bus.publish(e) for e in events))
    calls = rclient.info("commandstats")["cmdstat_lpush"]["calls"] - before
    assert ids == [e.id for e in events]
    assert calls < 20, calls  # group commit: one LPUSH carries everything that queued up meanwhile
    popped = [json.loads(rclient.rpop(queue))["headers"]["id"] for _ in range(200)]
    assert popped == ids


async def test_a_failed_group_commit_fails_every_publish_in_it(queue):
    await earnevents.init(
        redis_uri=f"redis://127.0.0.1:{free_port()}/0", event_config={"queue_name": queue, "publish_timeout": 1}
    )
    try:
        results = await asyncio.gather(
            *(event_bus.publish(Event("a.b", {})) for _ in range(20)), return_exceptions=True
        )
    finally:
        await earnevents.close()
    assert all(isinstance(r, PublishError) for r in results)


async def test_under_a_hung_redis_every_concurrent_publisher_gets_its_answer_within_publish_timeout(queue):
    # Given a Redis that accepts connections and never answers, and publish_timeout=1
    hole = BlackHole()
    await earnevents.init(
        redis_uri=f"redis://127.0.0.1:{hole.port}/0", event_config={"queue_name": queue, "publish_timeout": 1}
    )
    elapsed: list[float] = []

    async def timed_publish() -> None:
        t0 = time.monotonic()
        try:
            with pytest.raises(PublishError):
                await event_bus.publish(Event("a.b", {}))
        finally:
            elapsed.append(time.monotonic() - t0)

    async def burst() -> None:  # publishers keep arriving while sends are in flight
        tasks = []
        for _ in range(6):
            tasks += [asyncio.create_task(timed_publish()) for _ in range(5)]
            await asyncio.sleep(0.3)
        await asyncio.gather(*tasks)

    try:
        await burst()
    finally:
        await earnevents.close()
        hole.close()
    # Then no publisher waited much beyond its own publish_timeout (publishers that waited for an
    # earlier send until their deadline had passed used to try once more and take 2 s: about one
    # run in six)
    assert len(elapsed) == 30
    assert max(elapsed) < 1.6, sorted(elapsed)


@pytest.mark.parametrize("position", ["sending", "waiting"])
async def test_wait_for_around_publish_returns_within_its_timeout_under_a_hung_redis(queue, position):
    # Given a hung Redis, one publisher whose send is in flight and one waiting to share the next
    hole = BlackHole()
    await earnevents.init(
        redis_uri=f"redis://127.0.0.1:{hole.port}/0", event_config={"queue_name": queue, "publish_timeout": 5}
    )

    async def bounded() -> float:
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(event_bus.publish(Event("a.b", {})), 0.3)
        return time.monotonic() - t0

    try:
        if position == "sending":
            mine = asyncio.create_task(bounded())
            await asyncio.sleep(0.05)
            other = asyncio.create_task(event_bus.publish(Event("a.b", {})))
        else:
            other = asyncio.create_task(event_bus.publish(Event("a.b", {})))
            await asyncio.sleep(0.05)
            mine = asyncio.create_task(bounded())
        # When the bounded publisher's time is up, Then it has its answer at once
        elapsed = await asyncio.wait_for(mine, 4)
        other.cancel()
        with pytest.raises(asyncio.CancelledError):
            await other
    finally:
        await earnevents.close()
        hole.close()
    assert elapsed < 0.6, elapsed


async def test_a_push_whose_reply_was_lost_is_sent_again_as_a_copy_of_its_own(redis_server, rclient, queue):
    # Given a connection to Redis that drops the first LPUSH's reply (the push itself landed)
    proxy = LostReply(redis_server.port)
    port = await proxy.start()
    await earnevents.init(redis_uri=f"redis://127.0.0.1:{port}/0", event_config={"queue_name": queue})
    try:
        # When an event is published
        event = Event("t.copy", {})
        await event_bus.publish(event)
    finally:
        await earnevents.close()
        await proxy.stop()
    # Then it was pushed twice (at least once: the outcome of the first was unknown), each
    # push a copy of its own, so the workers' job claims run its handlers once
    assert proxy.dropped == 1
    items = [json.loads(raw) for raw in rclient.lrange(queue, 0, -1)]
    assert [m["headers"]["id"] for m in items] == [event.id, event.id]
    copies = {m["properties"][message.COPY_ID] for m in items}
    assert len(copies) == 2


# --- bounds on delay and at (10 years ahead at most) ---------------------------------

TEN_YEARS = 10 * 365.25 * 86400
"""The documented maximum of delay and at (earnevents.schedule.MAX_DELAY)."""


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"delay": 1e12}, ValueError, r"delay must be from 0 to 315576000 seconds \(10 years\), got 1000000000000"),
        ({"delay": 10**400}, ValueError, r"got an integer of 1329 bits"),
        ({"delay": TEN_YEARS + 1}, ValueError, "10 years"),
        ({"delay": 10**12}, ValueError, "10 years"),
        ({"at": dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3660)}, ValueError, "at most 10 years ahead"),
        ({"at": dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-23)))}, ValueError, "10 years"),
    ],
)
async def test_delay_or_at_beyond_ten_years_is_a_value_error_and_nothing_is_sent(
    bus, rclient, queue, kwargs, exc, match
):
    # When an event is published that far ahead, alone or in a batch
    with pytest.raises(exc, match=match):
        await bus.publish(Event("t.far", {}), **kwargs)
    with pytest.raises(exc, match=match):
        await bus.publish_batch([Event("t.far", {})], **kwargs)
    # Then nothing reached Redis, and the schedule still lists fine
    assert rclient.llen(queue) == 0 and rclient.zcard(keys.scheduled_zset(queue)) == 0
    assert await bus.get_scheduled() == []


async def test_ten_years_ahead_is_accepted_and_an_at_long_past_is_due_at_once(bus, rclient, queue):
    # Given events at the limit, and at moments long past (year 1 at UTC+23 is year 0 in UTC)
    at_limit = await bus.publish(Event("t.far", {}), delay=TEN_YEARS)
    long_ago = dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=23)))
    past = await bus.publish(Event("t.past", {}), at=long_ago)
    recent = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    recently = await bus.publish(Event("t.past", {}), at=recent)
    # Then all are pending, the past ones due before now, and get_scheduled shows them
    listed = {s.id: s.due_at for s in await bus.get_scheduled()}
    now = dt.datetime.now(dt.timezone.utc)
    assert set(listed) == {at_limit, past, recently}
    assert listed[past] < listed[recently] < now
    assert abs(listed[recently] - recent) < dt.timedelta(milliseconds=1)
    assert listed[at_limit] - now > dt.timedelta(days=3652)
