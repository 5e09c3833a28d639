"""End to end: handlers that misbehave never stop a worker nor lose their event."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import results, token, wait_results

from earnevents import Event, event_bus

pytestmark = pytest.mark.worker

MODULES = "e2e_handlers,e2e_fault_handlers"


async def wait_failed(count: int, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while True:
        jobs = await event_bus.get_failed_jobs()
        if len(jobs) >= count:
            return jobs
        if time.monotonic() > deadline:
            raise TimeoutError(f"expected {count} failed job(s), have {len(jobs)}")
        await asyncio.sleep(0.05)


async def test_handlers_raising_system_exit_keyboard_interrupt_or_generator_exit_fail_and_the_worker_goes_on(
    bus, start_worker, rclient
):
    # Given a worker with one pool process
    worker = start_worker(modules=MODULES, concurrency=1)
    tok = token()
    kinds = ["SystemExit", "KeyboardInterrupt", "GeneratorExit"]
    # When async and sync handlers raise each of them
    for kind in kinds:
        await bus.publish(Event("t.raises_base", {"token": tok, "kind": kind}))
        await bus.publish(Event("t.raises_base_sync", {"token": tok, "kind": kind}))
    # Then each is retried once and recorded as a failed job, like any failure
    jobs = await wait_failed(6)
    assert sorted(j.error.split(":")[0] for j in jobs) == sorted(kinds * 2)
    assert {j.attempts for j in jobs} == {2}
    # and the same pool process still handles a normal event
    await bus.publish(Event("t.record", {"token": tok}))
    recs = wait_results(rclient, tok, 12 + 2)  # 6 handlers x 2 tries, then the normal event's 2
    assert {r["handler"] for r in recs} >= {"record_async", "record_sync"}
    assert worker.proc.poll() is None


async def test_handlers_past_their_timeout_are_retried_then_recorded(bus, start_worker, rclient):
    # Given handlers with timeout=1 that never return (async and sync) and a worker timeout of 1 s
    start_worker(modules=MODULES, env={"EARNEVENTS_HANDLER_TIMEOUT": "1"})
    tok = token()
    # When their events are handled
    for name in ("t.hangs", "t.hangs_sync", "t.hangs_without_own_timeout"):
        await bus.publish(Event(name, {"token": tok}))
    # Then each try ends after about a second with HandlerTimeoutError, is retried, then recorded
    jobs = {j.handler.rsplit(".", 1)[-1]: j for j in await wait_failed(3, timeout=30)}
    assert set(jobs) == {"hangs_async", "hangs_sync", "hangs_without_own_timeout"}
    assert all(j.error.startswith("HandlerTimeoutError: ") for j in jobs.values())
    assert (jobs["hangs_async"].attempts, jobs["hangs_sync"].attempts) == (2, 2)
    assert jobs["hangs_without_own_timeout"].attempts == 1
    # and the worker goes on serving
    await bus.publish(Event("t.record", {"token": tok}))
    recs = wait_results(rclient, tok, 5 + 2)  # 2 + 2 + 1 tries, then the normal event's 2
    assert "record_sync" in {r["handler"] for r in recs}


async def test_a_hard_time_limit_hands_the_message_back_instead_of_losing_it(bus, start_worker, rclient):
    # Given a worker with Celery's --time-limit 2 and a handler that sleeps 5 s on its first try
    start_worker(modules=MODULES, concurrency=1, extra_args=["--time-limit", "2"])
    tok = token()
    # When Celery kills the pool process mid-handler
    await bus.publish(Event("t.slow_first_try", {"token": tok, "seconds": 5}))
    # Then the message is redelivered and its second try finishes, once (the kill is no
    # handler failure: no retry of its own is scheduled)
    wait_results(rclient, tok, 3, timeout=30)
    time.sleep(1)  # a wrongly scheduled retry would run within this second
    assert [(r["handler"], r["attempt"]) for r in results(rclient, tok)] == [
        ("slow_first_try_started", 1),
        ("slow_first_try_started", 2),
        ("slow_first_try_done", 2),
    ]
    assert await event_bus.get_failed_jobs() == []


async def test_a_soft_time_limit_fails_a_sync_handler_and_hands_back_a_message_waiting_for_async_ones(
    bus, start_worker, rclient
):
    # Given a worker with Celery's --soft-time-limit 1, an async handler sleeping 3 s on its
    # first try and a sync handler sleeping 3 s
    start_worker(modules=MODULES, concurrency=1, extra_args=["--soft-time-limit", "1"])
    tok = token()
    # When SoftTimeLimitExceeded interrupts the wait for the async one, and the sync one itself
    await bus.publish(Event("t.slow_first_try_async", {"token": tok, "seconds": 3}))
    await bus.publish(Event("t.sleeps_sync", {"token": tok, "seconds": 3}))
    # Then the sync handler's try is its failure, recorded (its policy allows no retry)
    [job] = await wait_failed(1)
    assert job.handler == "e2e_fault_handlers.sleeps_sync" and job.error.startswith("SoftTimeLimitExceeded")
    # and the async handler's first try is cancelled (never finishes) while the message,
    # handed back, is delivered again and finishes
    wait_results(rclient, tok, 4, timeout=30)
    time.sleep(3)  # the cancelled first try would have finished by now
    assert [(r["handler"], r.get("attempt")) for r in results(rclient, tok) if r["handler"] != "sleeps_sync"] == [
        ("slow_first_try_async_started", 1),
        ("slow_first_try_async_started", 2),
        ("slow_first_try_async_done", 2),
    ]
