"""End to end: publish from asyncio, real `celery -A earnevents worker` subprocesses."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
import uuid
from decimal import Decimal

import pytest
from bson import ObjectId
from conftest import results, token, wait_results

import earnevents
from earnevents import Event, event_bus, keys
from earnevents.config import DEFAULTS
from earnevents.testing import wait_for
from earnevents.worker.completions import recorded

pytestmark = pytest.mark.worker

FAST = {"max_retries": 3, "interval_start": 0.3, "interval_step": 0.3, "interval_max": 0.6}

WINDOW = float(DEFAULTS["EARNEVENTS_DEDUP_WINDOW"])  # the workers' dedup window


async def failed_jobs(**filters):
    return await event_bus.get_failed_jobs(**filters)


async def wait_failed(count: int = 1, timeout: float = 20, **filters):
    deadline = time.monotonic() + timeout
    while True:
        jobs = await failed_jobs(**filters)
        if len(jobs) >= count:
            return jobs
        if time.monotonic() > deadline:
            raise TimeoutError(f"expected {count} failed job(s), have {len(jobs)}")
        await _sleep(0.05)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@pytest.fixture
async def fast_bus(redis_url, queue):
    await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue, "retry_policy": FAST})
    yield event_bus
    await earnevents.close()


async def test_failing_handler_is_retried_at_policy_intervals_then_recorded(fast_bus, start_worker, rclient):
    start_worker()
    tok = token()
    event = Event("t.always_fails", {"token": tok, "when": dt.date(2026, 3, 1)}, metadata={"trace": "abc"})
    await fast_bus.publish(event)
    [job] = await wait_failed()
    tries = [r for r in results(rclient, tok) if r["handler"] == "always_fails"]
    assert [r["attempt"] for r in tries] == [1, 2, 3, 4]
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(tries)]
    for gap, expected in zip(gaps, [0.3, 0.6, 0.6], strict=True):
        assert expected - 0.05 <= gap <= expected + 0.5, gaps
    assert job.handler == "e2e_handlers.always_fails"
    assert job.error == "ValueError: always fails (4)"
    assert job.attempts == 4 and "Traceback" in job.traceback
    assert job.event == event  # the whole event, typed data and metadata included
    assert job.failed_at.tzinfo is not None


async def test_one_failing_handler_never_reruns_its_sibling(fast_bus, start_worker, rclient):
    start_worker()
    tok = token()
    await fast_bus.publish(Event("t.always_fails", {"token": tok}))
    await wait_failed()
    siblings = [r for r in results(rclient, tok) if r["handler"] == "steady_sibling"]
    assert len(siblings) == 1


async def test_handler_that_recovers_leaves_no_failed_job(fast_bus, start_worker, rclient):
    start_worker()
    tok = token()
    await fast_bus.publish(Event("t.flaky", {"token": tok, "fail_times": 2}))
    recs = wait_results(rclient, tok, 3)
    assert [r["attempt"] for r in recs] == [1, 2, 3]
    time.sleep(0.5)  # a wrong extra retry would show up within the policy's intervals
    assert len(results(rclient, tok)) == 3
    assert await failed_jobs() == []


async def test_handler_policy_wins_over_the_publishers(fast_bus, start_worker, rclient):
    start_worker()
    tok = token()
    await fast_bus.publish(Event("t.own_policy", {"token": tok}))
    [job] = await wait_failed()
    assert job.attempts == 2  # its own max_retries=1, not the publisher's 3
    recs = results(rclient, tok)
    assert len(recs) == 2 and 0.25 <= recs[1]["at"] - recs[0]["at"] <= 0.8


async def test_worker_policy_applies_when_the_publisher_sets_none(bus, start_worker, rclient):
    start_worker(env={"EARNEVENTS_RETRY_POLICY": json.dumps({"max_retries": 1, "interval_start": 0.1})})
    tok = token()
    await bus.publish(Event("t.always_fails", {"token": tok}))
    [job] = await wait_failed()
    assert job.attempts == 2


async def test_default_policy_is_three_retries(bus, start_worker):
    start_worker()
    await bus.publish(Event("t.always_fails", {"token": token()}))
    [job] = await wait_failed()
    assert job.attempts == 4


async def test_retry_job_reruns_only_that_handler_and_clears_the_record(fast_bus, start_worker, rclient):
    start_worker()
    tok = token()
    await fast_bus.publish(Event("t.fixable", {"token": tok}))
    [job] = await wait_failed()
    assert job.handler == "e2e_handlers.fixable" and job.error.startswith("ConnectionError")
    rclient.set(f"fixed:{tok}", 1)
    await fast_bus.retry_job(job.id)
    assert await failed_jobs() == []
    recs = wait_results(rclient, tok, 2)
    assert sorted(r["handler"] for r in recs) == ["fixable", "fixable_sibling"]
    assert recs[-1]["handler"] == "fixable" and recs[-1]["attempt"] == 5


async def test_no_handler_starts_before_the_delay(bus, start_worker, rclient):
    start_worker()
    tok = token()
    t0 = time.time()
    await bus.publish(Event("t.record", {"token": tok}), delay=1.5)
    recs = wait_results(rclient, tok, 2)
    assert min(r["at"] for r in recs) >= t0 + 1.5
    assert max(r["at"] for r in recs) <= t0 + 1.5 + 2


async def test_typed_values_reach_the_handler_with_their_types(bus, start_worker, rclient):
    start_worker()
    tok = token()
    data = {
        "token": tok,
        "when": dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc),
        "day": dt.date(2026, 1, 2),
        "uid": uuid.uuid4(),
        "price": Decimal("19.99"),
        "oid": ObjectId(),
        "nested": [{"at": dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)}],
    }
    event = Event("t.record", data, metadata={"source": "test"})
    await bus.publish(event)
    rec = next(r for r in wait_results(rclient, tok, 2) if r["handler"] == "record_async")
    assert rec["types"] == {
        "token": "str",
        "when": "datetime",
        "day": "date",
        "uid": "UUID",
        "price": "Decimal",
        "oid": "ObjectId",
        "nested": "list",
    }
    assert rec["repr"]["nested"] == repr(data["nested"])
    assert rec["id"] == event.id and rec["metadata"] == repr({"source": "test"})
    assert rec["timestamp"] == event.timestamp.isoformat()


async def test_garbage_on_the_queue_is_dropped_and_the_worker_keeps_serving(bus, start_worker, rclient, queue):
    worker = start_worker()
    good = json.loads(__import__("earnevents").message.build(Event("t.record", {}).to_wire(), queue=queue, task_id="x"))
    unknown_task = {**good, "headers": {**good["headers"], "task": "no.such.task", "id": "unknown-1"}}
    import base64

    bad_args = {
        **good,
        "body": base64.b64encode(b'[["not an event"], {}, {}]').decode(),
        "headers": {**good["headers"], "id": "bad-args-1"},
    }
    bad_kwargs = {
        **good,
        "body": base64.b64encode(b'[[{"name": "t.record"}], {"attempt": -3}, {}]').decode(),
        "headers": {**good["headers"], "id": "bad-kwargs-1"},
    }
    bad_body = {**good, "body": "%%% not base64", "headers": {**good["headers"], "id": "bad-body-1"}}
    for garbage in (
        b"\x00not json at all",
        b'{"body": "%%%"}',
        b"[1, 2, 3]",
        json.dumps(unknown_task),
        json.dumps(bad_args),
        json.dumps(bad_kwargs),
        json.dumps(bad_body),  # a well-formed envelope, so taken as unacknowledged first
    ):
        rclient.lpush(queue, garbage)
    tok = token()
    await bus.publish(Event("t.record", {"token": tok}))
    wait_results(rclient, tok, 2)
    assert worker.proc.poll() is None
    log = worker.log()
    assert log.count("dropped an item on") == 7
    assert await bus.count_dead_items() == 7
    # Nothing of this queue is left unacknowledged: not the dropped item, not the others.
    wait_for(lambda: not [v for v in rclient.hvals(keys.UNACKED) if queue.encode() in v], 10, "no unacked entries")
    assert "no.such.task" in log and "bad-args-1" in log and "bad-kwargs-1" in log
    assert "Connection to broker lost" not in log and "Unrecoverable" not in log


async def test_handler_killed_mid_run_is_handled_after_a_restart(redis_url, queue, start_worker, rclient):
    env = {"EARNEVENTS_VISIBILITY_TIMEOUT": "3"}
    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue})
    try:
        worker = start_worker(env=env)
        tok = token()
        await event_bus.publish(Event("t.slow", {"token": tok}))
        wait_results(rclient, tok, 1)
        worker.kill()
        rclient.set(f"release:{tok}", 1)
        killed_at = time.monotonic()
        start_worker(env=env)
        recs = wait_results(rclient, tok, 3, timeout=30)
        assert [r["handler"] for r in recs] == ["slow_started", "slow_started", "slow_done"]
        assert time.monotonic() - killed_at < 3 + 10
    finally:
        await earnevents.close()


def test_handler_module_that_fails_to_import_stops_the_worker(start_worker):
    with pytest.raises(RuntimeError, match="worker exited") as info:
        start_worker(modules="e2e_handlers,no_such_handler_module")
    assert "no_such_handler_module" in str(info.value)
    assert "ModuleNotFoundError" in str(info.value)


async def test_failed_jobs_go_to_mongodb_when_configured(redis_url, mongo_url, mongo_db, queue, start_worker):
    start_worker(
        env={
            "EARNEVENTS_MONGO_URI": mongo_url,
            "EARNEVENTS_DATABASE": mongo_db,
            "EARNEVENTS_RETRY_POLICY": json.dumps({"max_retries": 0}),
        }
    )
    env = await earnevents.init(
        redis_uri=redis_url, mongo_uri=mongo_url, database=mongo_db, event_config={"queue_name": queue}
    )
    try:
        event = Event("t.always_fails", {"token": token(), "oid": ObjectId()})
        await event_bus.publish(event)
        [job] = await wait_failed()
        assert job.event == event and job.attempts == 1
        assert await env.db["earnevents_failed_jobs"].count_documents({}) == 1
        assert not [k async for k in env.redis.scan_iter(f"earnevents:{queue}:failed*")]
    finally:
        await earnevents.close()


async def test_async_handlers_share_one_loop_per_pool_process_created_after_fork(bus, start_worker, rclient):
    worker = start_worker(concurrency=1)
    tok = token()
    await bus.publish_batch([Event("t.record", {"token": tok, "i": i}) for i in range(5)])
    recs = wait_results(rclient, tok, 10)
    async_recs = [r for r in recs if r["handler"] == "record_async"]
    sync_recs = [r for r in recs if r["handler"] == "record_sync"]
    assert len({r["loop"] for r in async_recs}) == 1  # not a new loop per message
    assert {r["thread"] for r in async_recs} == {"earnevents-loop"}
    assert {r["thread"] for r in sync_recs} == {"MainThread"}  # plain calls in the pool process
    assert {r["pid"] for r in recs} != {worker.proc.pid}  # the pool child, after fork


async def test_a_burst_is_handled_and_every_message_acknowledged_once_the_queue_is_empty(
    bus, start_worker, rclient, queue
):
    # While messages flow, acknowledgements ride on the next fetch; once the queue is
    # empty they must all have been sent, not left to the visibility timeout.
    worker = start_worker(concurrency=2)
    tok = token()
    indexed_before = set(rclient.zrange(keys.UNACKED_INDEX, 0, -1))
    await bus.publish_batch([Event("t.count", {"token": tok}) for _ in range(300)])
    wait_for(lambda: int(rclient.get(f"count:{tok}") or 0) >= 300, 60, "300 events handled")
    wait_for(lambda: not [v for v in rclient.hvals(keys.UNACKED) if queue.encode() in v], 10, "no unacked entries")
    wait_for(lambda: not set(rclient.zrange(keys.UNACKED_INDEX, 0, -1)) - indexed_before, 10, "an empty unacked index")
    assert rclient.llen(queue) == 0 and worker.proc.poll() is None


async def test_packed_messages_run_every_event_and_retry_a_failing_job_alone(fast_bus, start_worker, rclient, queue):
    start_worker(concurrency=2)
    tok = token()
    events = [Event("t.sleepy", {"token": tok, "seconds": 0.3}) for _ in range(40)]
    events.insert(7, Event("t.flaky", {"token": tok, "fail_times": 1}))
    started = time.monotonic()
    await fast_bus.publish_batch(events, events_per_message=41)  # one message for all
    recs = wait_results(rclient, tok, 42, timeout=30)  # 40 sleepy + flaky twice (fail, retry)
    # One worker process ran the 40 sleepy handlers at once, not one after the other (12 s).
    assert time.monotonic() - started < 6
    assert sorted(r["handler"] for r in recs).count("sleepy") == 40
    assert [r["attempt"] for r in recs if r["handler"] == "flaky"] == [1, 2]
    assert sorted(r["id"] for r in recs if r["handler"] == "sleepy") == sorted(
        e.id for e in events if e.name == "t.sleepy"
    )
    time.sleep(0.5)
    assert len(results(rclient, tok)) == 42  # nothing ran twice


async def test_a_packed_message_redelivered_after_a_kill_reruns_only_unfinished_jobs(
    redis_url, queue, start_worker, rclient
):
    env = {"EARNEVENTS_VISIBILITY_TIMEOUT": "3"}
    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue})
    try:
        worker = start_worker(env=env)
        tok = token()
        events = [Event("t.count", {"token": tok}) for _ in range(30)] + [Event("t.slow", {"token": tok})]
        await event_bus.publish_batch(events, events_per_message=len(events))
        wait_results(rclient, tok, 1)  # slow started; the 30 counts run beside it
        # Kill once the 30 count jobs are done and recorded as completed (between the two,
        # a kill re-runs a job: the "completed more than once" window the README states).
        wait_for(
            lambda: all(recorded(rclient, WINDOW, e.id, "e2e_handlers.count") for e in events[:30]),
            10,
            "30 completion records",
        )
        worker.kill()
        rclient.set(f"release:{tok}", 1)
        start_worker(env=env)
        recs = wait_results(rclient, tok, 3, timeout=30)
        assert [r["handler"] for r in recs] == ["slow_started", "slow_started", "slow_done"]
        assert int(rclient.get(f"count:{tok}")) == 30  # the completed jobs were skipped
    finally:
        await earnevents.close()


def drained(rclient, queue: str) -> bool:
    """Nothing of ``queue`` waits or is unacknowledged: every message taken was finished."""
    return rclient.llen(queue) == 0 and not [v for v in rclient.hvals(keys.UNACKED) if queue.encode() in v]


async def test_a_handler_that_kills_its_process_is_recorded_once_after_max_deliveries(
    bus, start_worker, rclient, queue
):
    worker = start_worker(env={"EARNEVENTS_MAX_DELIVERIES": "2", "EARNEVENTS_VISIBILITY_TIMEOUT": "4"})
    tok = token()
    event = Event("t.exits", {"token": tok})
    await bus.publish(event)
    [job] = await wait_failed(timeout=30)
    wait_for(lambda: drained(rclient, queue), 10, "the message acknowledged")
    assert job.handler == "e2e_handlers.exits" and job.event == event and job.attempts == 1
    assert job.error.startswith("WorkerLostError: the worker process died while running this handler")
    recs = results(rclient, tok)
    assert [r["deliveries"] for r in recs if r["handler"] == "exits"] == [1, 2]  # then not run again
    assert [r["handler"] for r in recs].count("exits_sibling") == 1  # completed before the first death
    assert len(await failed_jobs()) == 1 and worker.proc.poll() is None


async def test_two_copies_of_one_message_running_at_once_run_the_handler_once(bus, start_worker, rclient, queue):
    tok = token()
    event = Event("t.once", {"token": tok, "seconds": 1})
    await bus.publish(event)
    await bus.publish(event)  # a second message for the same event
    worker = start_worker(concurrency=2)  # takes both at once, one per pool process
    wait_results(rclient, tok, 1)
    wait_for(lambda: drained(rclient, queue), 15, "both copies acknowledged")
    assert len(results(rclient, tok)) == 1
    assert "another copy of the message runs it" in worker.log()
    assert await failed_jobs() == []


async def test_a_sibling_cut_short_by_a_handler_that_kills_its_process_still_completes(
    bus, start_worker, rclient, queue
):
    # Given an async sibling still running when the sync one kills the process, every time
    start_worker(env={"EARNEVENTS_MAX_DELIVERIES": "2"})
    tok = token()
    await bus.publish(Event("t.exits_beside_slow", {"token": tok}))
    [job] = await wait_failed(timeout=30)
    wait_for(lambda: drained(rclient, queue), 10, "the message acknowledged")
    # Then only the killer is recorded; the sibling ran alone on the redelivery and completed
    assert job.handler == "e2e_handlers.exits_beside_slow" and job.error.startswith("WorkerLostError")
    done = [r for r in results(rclient, tok) if r["handler"] == "slow_beside_exits"]
    assert len(done) == 1 and done[0]["deliveries"] == 2
    assert len(await failed_jobs()) == 1


async def _settled_message_back(publish, event: Event, start_worker, rclient, queue, env=None):
    """Publish ``event`` with no worker running and keep its queue item; start a worker, wait
    until its failure is settled and the message acknowledged; then push the very item again,
    as a redelivery after an acknowledgement lost to a crash would bring it back."""
    await publish(event)
    [item] = rclient.lrange(queue, 0, -1)
    worker = start_worker(env=env or {})
    [job] = await wait_failed(timeout=30)
    wait_for(lambda: drained(rclient, queue), 15, "the message acknowledged")
    ran = len(results(rclient, event.data["token"]))
    rclient.lpush(queue, item)
    wait_for(
        lambda: "settled it as failed before" in worker.log() or len(results(rclient, event.data["token"])) > ran,
        15,
        "the message back skipped or run",
    )
    wait_for(lambda: drained(rclient, queue), 15, "the message back acknowledged")
    return job, worker


async def test_a_message_back_after_its_job_was_recorded_lost_does_not_run_it_again(bus, start_worker, rclient, queue):
    tok = token()
    job, worker = await _settled_message_back(
        bus.publish, Event("t.exits", {"token": tok}), start_worker, rclient, queue, {"EARNEVENTS_MAX_DELIVERIES": "2"}
    )
    assert job.error.startswith("WorkerLostError")
    recs = results(rclient, tok)
    assert [r["deliveries"] for r in recs if r["handler"] == "exits"] == [1, 2]  # not a third time
    assert [r["handler"] for r in recs].count("exits_sibling") == 1
    assert [j.id for j in await failed_jobs()] == [job.id] and worker.proc.poll() is None


async def test_a_message_back_after_its_failure_was_retried_does_not_run_the_job_again(
    fast_bus, start_worker, rclient, queue
):
    tok = token()
    job, _ = await _settled_message_back(
        fast_bus.publish, Event("t.always_fails", {"token": tok}), start_worker, rclient, queue
    )
    tries = [r["attempt"] for r in results(rclient, tok) if r["handler"] == "always_fails"]
    assert tries == [1, 2, 3, 4]  # the retries ran; the message back ran nothing
    assert [r["handler"] for r in results(rclient, tok)].count("steady_sibling") == 1
    assert [j.id for j in await failed_jobs()] == [job.id]
