"""The worker in each pool and consumer mode Celery offers, end to end.

Each test publishes events that all get handled and one whose handler always fails,
which must end as one failed-job record after its retry.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from conftest import stays, token, wait_results

import earnevents
from earnevents import Event, event_bus

pytestmark = pytest.mark.worker

FAST = {"max_retries": 1, "interval_start": 0.2}


async def publish_and_check(bus: earnevents.EventBus, rclient: Any) -> None:
    """Three events handled by both handlers each; a failing handler recorded once."""
    tok = token()
    for i in range(3):
        await bus.publish(Event("t.record", {"token": tok, "i": i}))
    recs = wait_results(rclient, tok, 6)
    assert sorted(r["handler"] for r in recs) == ["record_async"] * 3 + ["record_sync"] * 3
    await bus.publish(Event("t.always_fails", {"token": tok}))
    deadline = time.monotonic() + 20
    while not (jobs := await bus.get_failed_jobs()) and time.monotonic() < deadline:
        await _sleep(0.05)
    assert [(job.handler, job.attempts) for job in jobs] == [("e2e_handlers.always_fails", 2)]


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@pytest.fixture
async def fast_bus(redis_url, queue):
    await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue, "retry_policy": FAST})
    yield event_bus
    await earnevents.close()


@pytest.mark.parametrize("pool", ["threads", "solo"])
async def test_the_worker_serves_with_the_pool(pool, fast_bus, start_worker, rclient):
    # Given a worker with the threads or the solo pool
    start_worker(pool=pool, concurrency=1 if pool == "solo" else 4)
    # Then events are handled and a failing handler is recorded
    await publish_and_check(fast_bus, rclient)


async def test_the_worker_serves_with_celerys_gossip_mingle_and_heartbeat_on(fast_bus, start_worker, rclient):
    # Given a worker with Celery's defaults: gossip, mingle and heartbeat on
    worker = start_worker(without=())
    assert "--without-gossip" not in worker.args
    # Then events are handled and a failing handler is recorded
    await publish_and_check(fast_bus, rclient)


async def test_a_worker_consuming_two_queues_serves_both(redis_url, queue, start_worker, rclient):
    # Given a worker consuming two queues (-Q a,b)
    other = f"q-{uuid.uuid4().hex[:10]}"
    start_worker(extra_args=["-Q", f"{queue},{other}"])
    # Then events published to each queue are handled and failures recorded under each
    for name in (queue, other):
        await earnevents.init(
            redis_uri=redis_url, mongo_uri="", event_config={"queue_name": name, "retry_policy": FAST}
        )
        try:
            await publish_and_check(event_bus, rclient)
        finally:
            await earnevents.close()


@pytest.mark.parametrize("pool", ["threads", "solo"])
async def test_a_long_handler_is_not_redelivered_with_the_pool(pool, redis_url, queue, start_worker, rclient):
    # Given two workers of the pool with a 1 s visibility timeout
    env = {"EARNEVENTS_VISIBILITY_TIMEOUT": "1"}
    start_worker(pool=pool, concurrency=1, env=env)
    start_worker(pool=pool, concurrency=1, env=env)
    await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue})
    try:
        tok = token()
        # When a handler runs for several visibility timeouts
        await event_bus.publish(Event("t.slow", {"token": tok}))
        wait_results(rclient, tok, 1)
        # Then the other worker never gets the message, and the handler finishes once
        assert stays(lambda: len(wait_results(rclient, tok, 1)) == 1, 4)
        rclient.set(f"release:{tok}", 1)
        recs = wait_results(rclient, tok, 2)
        assert [r["handler"] for r in recs] == ["slow_started", "slow_done"]
    finally:
        await earnevents.close()


async def test_with_two_queues_a_killed_workers_event_is_redelivered(redis_url, queue, start_worker, rclient):
    # Given a worker consuming two queues (kombu's own fetch) with a 2 s visibility timeout
    other = f"q-{uuid.uuid4().hex[:10]}"
    env = {"EARNEVENTS_VISIBILITY_TIMEOUT": "2"}
    worker = start_worker(env=env, extra_args=["-Q", f"{queue},{other}"])
    await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": other})
    try:
        tok = token()
        await event_bus.publish(Event("t.slow", {"token": tok}))
        wait_results(rclient, tok, 1)
        # When the worker is killed mid-handler and another one starts
        worker.kill()
        rclient.set(f"release:{tok}", 1)
        start_worker(env=env, extra_args=["-Q", f"{queue},{other}"])
        # Then the event is handled again, to the end
        recs = wait_results(rclient, tok, 3, timeout=30)
        assert [r["handler"] for r in recs] == ["slow_started", "slow_started", "slow_done"]
    finally:
        await earnevents.close()
