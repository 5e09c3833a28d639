"""Delivery you can trust (issue 4): delays, cancellation, restarts, crashes, outbox, dedup.

Every test runs real redis-server and `celery -A earnevents worker` processes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import psutil
import pytest
import redis
from conftest import LostReply, results, stays, token, wait_results

import earnevents
from earnevents import Event, event_bus, keys, message, outbox
from earnevents.config import DEFAULTS
from earnevents.testing import RedisServer
from earnevents.worker.completions import recorded

pytestmark = pytest.mark.worker

WINDOW = float(DEFAULTS["EARNEVENTS_DEDUP_WINDOW"])  # the workers' dedup window


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own (appendonly), for tests that stop or kill it."""
    server = RedisServer(appendonly=True)
    server.start()
    yield server
    server.cleanup()


async def test_delay_longer_than_the_visibility_timeout_runs_exactly_once(bus, start_worker, rclient):
    start_worker(env={"EARNEVENTS_VISIBILITY_TIMEOUT": "1"})
    tok = token()
    t0 = time.time()
    await bus.publish(Event("t.record", {"token": tok}), delay=3)
    recs = wait_results(rclient, tok, 2, timeout=15)
    assert min(r["at"] for r in recs) >= t0 + 3
    assert stays(lambda: len(results(rclient, tok)) == 2, 3)


async def test_due_events_are_enqueued_within_a_second(bus, start_worker, rclient):
    start_worker(env={"EARNEVENTS_SCHEDULER_INTERVAL": "0.2"})
    tok = token()
    t0 = time.time()
    await bus.publish_batch([Event("t.record", {"token": tok, "i": i}) for i in range(20)], delay=1)
    recs = wait_results(rclient, tok, 40)
    assert max(r["at"] for r in recs) - (t0 + 1) < 1.0


async def test_cancelled_event_never_runs(bus, start_worker, rclient):
    tok_keep, tok_drop = token(), token()
    await bus.publish(Event("t.record", {"token": tok_keep}), delay=1)
    drop = await bus.publish(Event("t.record", {"token": tok_drop}), delay=1)
    assert await bus.cancel(drop) is True
    start_worker()
    wait_results(rclient, tok_keep, 2)
    assert stays(lambda: results(rclient, tok_drop) == [], 1.5)


async def test_pending_delayed_events_survive_a_worker_restart(bus, start_worker, rclient):
    worker = start_worker()
    tok = token()
    await bus.publish(Event("t.record", {"token": tok}), delay=2)
    worker.stop()
    assert await bus.count_scheduled() == 1
    start_worker()
    wait_results(rclient, tok, 2, timeout=15)


async def test_pending_delayed_events_survive_a_redis_crash_with_appendonly(own_redis, queue, start_worker):
    await earnevents.init(redis_uri=own_redis.url, event_config={"queue_name": queue})
    try:
        tok = token()
        await event_bus.publish(Event("t.record", {"token": tok}), delay=2)
        own_redis.kill()
        own_redis.start()
        start_worker(env={"EARNEVENTS_REDIS_URI": own_redis.url})
        client = redis.Redis.from_url(own_redis.url)
        wait_results(client, tok, 2, timeout=15)
        client.close()
    finally:
        await earnevents.close()


async def test_two_workers_racing_enqueue_each_delayed_event_once(bus, start_worker, rclient):
    start_worker(env={"EARNEVENTS_SCHEDULER_INTERVAL": "0.01"})
    start_worker(env={"EARNEVENTS_SCHEDULER_INTERVAL": "0.01"})
    tok = token()
    ids = await bus.publish_batch([Event("t.record", {"token": tok, "i": i}) for i in range(300)], delay=1)
    recs = wait_results(rclient, tok, 600, timeout=30)
    assert stays(lambda: len(results(rclient, tok)) == 600, 1)
    assert sorted(r["id"] for r in recs if r["handler"] == "record_async") == sorted(ids)


async def test_a_long_handler_is_not_redelivered_while_its_worker_lives(bus, start_worker, rclient):
    env = {"EARNEVENTS_VISIBILITY_TIMEOUT": "1"}
    start_worker(env=env)
    start_worker(env=env)
    tok = token()
    await bus.publish(Event("t.slow", {"token": tok}))
    wait_results(rclient, tok, 1)
    # Six visibility timeouts: plain kombu would have handed it to the other worker by now.
    assert stays(lambda: len(results(rclient, tok)) == 1, 6)
    rclient.set(f"release:{tok}", 1)
    recs = wait_results(rclient, tok, 2)
    assert [r["handler"] for r in recs] == ["slow_started", "slow_done"]


def _holder(workers, pid: int):
    for worker in workers:
        tree = {worker.proc.pid} | {c.pid for c in psutil.Process(worker.proc.pid).children(recursive=True)}
        if pid in tree:
            return worker
    raise AssertionError(f"no worker runs pid {pid}")


async def test_a_killed_workers_event_is_handled_by_another_running_worker(bus, start_worker, rclient):
    env = {"EARNEVENTS_VISIBILITY_TIMEOUT": "2"}
    workers = [start_worker(env=env), start_worker(env=env)]
    tok = token()
    await bus.publish(Event("t.slow", {"token": tok}))
    [started] = wait_results(rclient, tok, 1)
    victim = _holder(workers, started["pid"])
    victim.kill()
    rclient.set(f"release:{tok}", 1)
    t_kill = time.monotonic()
    recs = wait_results(rclient, tok, 3, timeout=30)
    assert time.monotonic() - t_kill < 2 + 5
    survivor = next(w for w in workers if w is not victim)
    assert _holder([survivor], recs[1]["pid"]) is survivor
    assert [r["handler"] for r in recs] == ["slow_started", "slow_started", "slow_done"]


async def test_workers_resume_consuming_after_redis_restarts(own_redis, queue, start_worker):
    start_worker(env={"EARNEVENTS_REDIS_URI": own_redis.url})
    await earnevents.init(redis_uri=own_redis.url, event_config={"queue_name": queue})
    client = redis.Redis.from_url(own_redis.url)
    try:
        tok = token()
        await event_bus.publish(Event("t.record", {"token": tok}))
        wait_results(client, tok, 2)
        own_redis.stop()
        own_redis.start()
        tok2 = token()
        restarted = time.monotonic()
        await event_bus.publish(Event("t.record", {"token": tok2}))
        wait_results(client, tok2, 2, timeout=30)
        assert time.monotonic() - restarted < 30
    finally:
        client.close()
        await earnevents.close()


async def test_a_redelivered_message_does_not_rerun_completed_handlers(bus, start_worker, rclient, queue):
    start_worker()
    tok = token()
    event = Event("t.record", {"token": tok})
    await bus.publish(event)
    wait_results(rclient, tok, 2)
    # The same event again, as after a crash between finishing and acknowledging.
    rclient.lpush(queue, message.build(event.to_wire(), queue=queue, task_id=event.id))
    marker = token()
    await bus.publish(Event("t.record", {"token": marker}))  # proves the duplicate was consumed
    wait_results(rclient, marker, 2)
    assert len(results(rclient, tok)) == 2
    assert recorded(rclient, WINDOW, event.id, "e2e_handlers.record_async")


async def test_events_published_while_redis_is_down_go_to_the_outbox_and_are_relayed_in_order(
    own_redis, mongo_url, mongo_db, queue, start_worker
):
    own_redis.stop()
    env = await earnevents.init(
        redis_uri=own_redis.url,
        mongo_uri=mongo_url,
        database=mongo_db,
        event_config={"queue_name": queue, "publish_timeout": 5},
    )
    try:
        tok = token()
        t0 = time.monotonic()
        ids = [await event_bus.publish(Event("t.record", {"token": tok, "i": i})) for i in range(3)]
        ids += await event_bus.publish_batch([Event("t.record", {"token": tok, "i": i}) for i in range(3, 10)])
        assert time.monotonic() - t0 < 4 * (outbox.REDIS_BUDGET + 1)
        assert await env.db[outbox.COLLECTION].count_documents({"queue": queue}) == 10
        own_redis.start()
        start_worker(
            concurrency=1,
            env={
                "EARNEVENTS_REDIS_URI": own_redis.url,
                "EARNEVENTS_MONGO_URI": mongo_url,
                "EARNEVENTS_DATABASE": mongo_db,
            },
        )
        client = redis.Redis.from_url(own_redis.url)
        recs = wait_results(client, tok, 20, timeout=30)
        client.close()
        handled = [json.loads(r["repr"]["i"]) for r in recs if r["handler"] == "record_sync"]
        assert handled == list(range(10))  # publish order, each once
        assert [r["id"] for r in recs if r["handler"] == "record_sync"] == ids
        deadline = time.monotonic() + 10
        while await env.db[outbox.COLLECTION].count_documents({"queue": queue}) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await env.db[outbox.COLLECTION].count_documents({"queue": queue}) == 0
    finally:
        await earnevents.close()


async def test_outbox_can_be_turned_off(own_redis, mongo_url, mongo_db, queue):
    own_redis.stop()
    await earnevents.init(
        redis_uri=own_redis.url,
        mongo_uri=mongo_url,
        database=mongo_db,
        event_config={"queue_name": queue, "publish_timeout": 1, "outbox": False},
    )
    try:
        with pytest.raises(earnevents.PublishError):
            await event_bus.publish(Event("t.record", {"token": token()}))
    finally:
        await earnevents.close()


async def test_a_message_taken_by_a_consumer_that_died_is_returned_and_handled(bus, start_worker, rclient, queue):
    # Given a message some consumer took off the queue and died holding (its alive key is gone)
    tok = token()
    event = Event("t.record", {"token": tok})
    rclient.sadd(keys.inflight_consumers(queue), "dead-host:1:abc")
    rclient.lpush(
        keys.inflight_list(queue, "dead-host:1:abc"), message.build(event.to_wire(), queue=queue, task_id=event.id)
    )
    # When a worker runs, Then it puts the message back on the queue and handles it
    start_worker(env={"EARNEVENTS_VISIBILITY_TIMEOUT": "2"})
    recs = wait_results(rclient, tok, 2)
    assert {r["id"] for r in recs} == {event.id}
    assert rclient.llen(keys.inflight_list(queue, "dead-host:1:abc")) == 0
    assert not rclient.sismember(keys.inflight_consumers(queue), "dead-host:1:abc")


async def test_a_live_consumer_is_registered_and_kept_alive(bus, start_worker, rclient, queue):
    start_worker(env={"EARNEVENTS_VISIBILITY_TIMEOUT": "2"})
    tok = token()
    await bus.publish(Event("t.record", {"token": tok}))
    wait_results(rclient, tok, 2)
    [consumer] = [c.decode() for c in rclient.smembers(keys.inflight_consumers(queue))]
    assert stays(lambda: rclient.exists(keys.consumer_alive(consumer)) == 1, 3)  # beyond its 2 s TTL
    assert rclient.llen(keys.inflight_list(queue, consumer)) == 0  # nothing left in flight


async def test_with_default_settings_a_killed_workers_event_is_handled_within_60_seconds(bus, start_worker, rclient):
    workers = [start_worker(), start_worker()]  # default EARNEVENTS_VISIBILITY_TIMEOUT
    tok = token()
    await bus.publish(Event("t.slow", {"token": tok}))
    [started] = wait_results(rclient, tok, 1)
    killed_at = time.monotonic()
    _holder(workers, started["pid"]).kill()
    rclient.set(f"release:{tok}", 1)  # the redelivered run may finish
    recs = wait_results(rclient, tok, 3, timeout=70)
    handled_after = time.monotonic() - killed_at
    assert [r["handler"] for r in recs][-1] == "slow_done"
    assert handled_after < 60, handled_after


async def test_a_publish_whose_push_landed_unseen_then_went_to_the_outbox_is_handled_once(
    redis_server, rclient, mongo_url, mongo_db, queue, start_worker
):
    # Given a publisher whose first LPUSH lands but whose reply is lost, Redis then unreachable
    proxy = LostReply(redis_server.port, then_down=True)
    port = await proxy.start()
    env = await earnevents.init(
        redis_uri=f"redis://127.0.0.1:{port}/0",
        mongo_uri=mongo_url,
        database=mongo_db,
        event_config={"queue_name": queue, "publish_timeout": 3},
    )
    try:
        tok = token()
        # When it publishes an event whose handler takes 3 s: not knowing whether the push
        # landed, it keeps the event in the outbox as well
        await event_bus.publish(Event("t.once", {"token": tok, "seconds": 3}))
        assert proxy.dropped == 1
        assert rclient.llen(queue) == 1  # the push had landed
        assert await env.db[outbox.COLLECTION].count_documents({"queue": queue}) == 1
        # Then a worker runs the event from the queue while it relays the outbox copy (within
        # its 1 s relay interval), and the copy, taken by the other pool process meanwhile,
        # does not run the handler again
        start_worker(env={"EARNEVENTS_MONGO_URI": mongo_url, "EARNEVENTS_DATABASE": mongo_db})
        wait_results(rclient, tok, 1)
        deadline = time.monotonic() + 15
        while await env.db[outbox.COLLECTION].count_documents({"queue": queue}) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await env.db[outbox.COLLECTION].count_documents({"queue": queue}) == 0
        assert stays(lambda: len(results(rclient, tok)) == 1 and rclient.llen(queue) == 0, 4)
    finally:
        await earnevents.close()
        await proxy.stop()
