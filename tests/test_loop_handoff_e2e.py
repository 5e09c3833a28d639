"""Under ``-P threads``, a message whose handlers are all ``async def`` runs on the worker's
loop without a pool thread (``earnevents.worker.strategy``), with every guarantee the pool
path gives: retries, failed jobs, deduplication, a warm shutdown that lets it finish."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import results, stays, token, wait_results

import earnevents
from earnevents import Event, event_bus

pytestmark = pytest.mark.worker

MODULES = "loop_handoff_handlers"


def pool_ran(rclient: Any, tok: str) -> int:
    """How many tasks carrying ``tok`` Celery's pool ran (tests/loop_handoff_handlers.py)."""
    return int(rclient.llen(f"pool:{tok}"))


@pytest.fixture
async def bus(redis_url, queue):
    policy = {"max_retries": 1, "interval_start": 0.2}
    await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue, "retry_policy": policy})
    yield event_bus
    await earnevents.close()


async def test_all_async_events_skip_the_pool_and_the_others_still_use_it(bus, start_worker, rclient):
    # Given a threads-pool worker
    start_worker(modules=MODULES, pool="threads", concurrency=4)
    tok = token()
    # When events whose handlers are all async, and one with a sync handler too, are published
    for i in range(5):
        await bus.publish(Event("t.sleepy", {"token": tok, "seconds": 0.05, "i": i}))
    await bus.publish(Event("t.record", {"token": tok}))
    # Then all are handled, and only the one with a sync handler went through a pool thread
    recs = wait_results(rclient, tok, 7)
    assert sorted(r["handler"] for r in recs) == ["record_async", "record_sync"] + ["sleepy"] * 5
    assert {r["thread"] for r in recs if r["handler"] == "sleepy"} == {"earnevents-loop"}
    assert pool_ran(rclient, tok) == 1


async def eventually(read: Any, timeout: float = 20) -> Any:
    """Await ``read()`` until it returns something truthy (``timeout`` seconds at most)."""
    deadline = time.monotonic() + timeout
    while not (value := await read()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return value


async def test_on_the_loop_a_failure_is_retried_then_recorded_and_retry_job_runs_it(bus, start_worker, rclient):
    # Given a threads-pool worker and an event of two async handlers, one failing until fixed
    start_worker(modules=MODULES, pool="threads", concurrency=4)
    tok = token()
    await bus.publish(Event("t.fixable", {"token": tok}))
    # Then the failing one is tried twice and recorded as failed; its sibling ran once
    jobs = await eventually(bus.get_failed_jobs)
    assert [(j.handler, j.attempts) for j in jobs] == [("e2e_handlers.fixable", 2)]
    assert [r["handler"] for r in results(rclient, tok)] == ["fixable_sibling"]
    # When it is fixed and retried from the failed-job list
    rclient.set(f"fixed:{tok}", 1)
    await bus.retry_job(jobs[0].id)
    # Then it runs once more, and no try of this event went through a pool thread
    recs = wait_results(rclient, tok, 2)
    assert [(r["handler"], r.get("attempt")) for r in recs] == [("fixable_sibling", None), ("fixable", 3)]
    assert await eventually(lambda: _none_failed(bus))
    assert pool_ran(rclient, tok) == 0


async def _none_failed(bus: Any) -> bool:
    return not await bus.get_failed_jobs()


async def test_on_the_loop_a_copy_of_a_handled_event_is_skipped(bus, start_worker, rclient):
    # Given a threads-pool worker
    start_worker(modules=MODULES, pool="threads", concurrency=4)
    tok = token()
    # When one event is published twice (the same id: a publisher retrying after a lost reply)
    event = Event("t.count", {"token": tok})
    await bus.publish(event)
    await bus.publish(event)
    marker = Event("t.sleepy", {"token": tok, "seconds": 0})
    await bus.publish(marker)
    wait_results(rclient, tok, 1)  # the marker, published last, is handled
    # Then its handler ran once
    assert stays(lambda: rclient.get(f"count:{tok}") == b"1", 1)
    assert pool_ran(rclient, tok) == 0


async def test_a_warm_shutdown_lets_the_events_running_on_the_loop_finish_and_acknowledges_them(
    bus, start_worker, rclient
):
    # Given a threads-pool worker running an async handler that waits to be released
    worker = start_worker(modules=MODULES, pool="threads", concurrency=4)
    tok = token()
    await bus.publish(Event("t.slow", {"token": tok}))
    wait_results(rclient, tok, 1)
    # When the worker is told to stop (SIGTERM: a warm shutdown) and the handler is then released
    stopping = threading.Thread(target=worker.stop, kwargs={"timeout": 30})
    stopping.start()
    assert stays(lambda: worker.proc is not None and worker.proc.poll() is None, 1)  # it waits
    rclient.set(f"release:{tok}", 1)
    stopping.join(35)
    # Then the handler finished before the worker exited, cleanly
    assert [r["handler"] for r in results(rclient, tok)] == ["slow_started", "slow_done"]
    assert worker.proc is None or worker.proc.returncode == 0
    # And the message was acknowledged: a new worker does not run it again
    start_worker(modules=MODULES, pool="threads", concurrency=4, env={"EARNEVENTS_VISIBILITY_TIMEOUT": "1"})
    assert stays(lambda: len(results(rclient, tok)) == 2, 3)
    assert pool_ran(rclient, tok) == 0
