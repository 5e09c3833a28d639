"""The event log with real workers: handler statuses through retries, failure, retry_job,
cancel and replay, on both stores; and a log store that is down never fails a handler."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import token, wait_results
from pymongo import MongoClient

import earnevents
from earnevents import Event, EventNotFoundError, EventRecord, event_bus, keys, message
from earnevents.testing import free_port, wait_for

pytestmark = pytest.mark.worker

POLICY = {"max_retries": 1, "interval_start": 0.5, "interval_step": 0, "interval_max": 0.5}
TTL = "3600"


async def until(check: Callable[[EventRecord], bool], event_id: str, timeout: float = 20) -> EventRecord:
    """Poll the event's record until ``check`` holds; return it."""
    deadline = time.monotonic() + timeout
    last: EventRecord | None = None
    while True:
        try:
            last = await event_bus.get_event(event_id)
            if check(last):
                return last
        except EventNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"event {event_id}: condition not met; last record {last}")
        await asyncio.sleep(0.02)


def statuses(record: EventRecord) -> dict[str, str]:
    return {name.rsplit(".", 1)[1]: h.status for name, h in record.handlers.items()}


# threads: the all-async events run on the worker's loop without a pool thread (worker.strategy)
@pytest.mark.parametrize(("store", "pool"), [("redis", "prefork"), ("mongo", "prefork"), ("redis", "threads")])
async def test_statuses_retry_failure_retry_job_cancel_and_replay(
    store, pool, request, redis_url, queue, start_worker, rclient
):
    mongo: dict[str, str] = {"EARNEVENTS_MONGO_URI": ""}
    if store == "mongo":
        mongo = {
            "EARNEVENTS_MONGO_URI": request.getfixturevalue("mongo_url"),
            "EARNEVENTS_DATABASE": request.getfixturevalue("mongo_db"),
        }
    start_worker(
        env={"EARNEVENTS_EVENT_LOG": "1", "EARNEVENTS_EVENT_LOG_TTL": TTL, **mongo},
        pool=pool,
        concurrency=4 if pool == "threads" else 2,
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("EARNEVENTS_EVENT_LOG_TTL", TTL)
    env = await earnevents.init(
        redis_uri=redis_url,
        mongo_uri=mongo["EARNEVENTS_MONGO_URI"],
        database=mongo.get("EARNEVENTS_DATABASE"),
        event_config={"queue_name": queue, "retry_policy": POLICY, "event_log": True},
    )
    try:
        # Given a handler that fails until fixed, and a sibling that succeeds
        tok = token()
        event = Event("t.fixable", {"token": tok}, metadata={"sender": "tests.Shop"})
        await event_bus.publish(event)
        # Then the failing handler is seen retrying, then failed; the event partially failed
        await until(lambda r: statuses(r).get("fixable") == "retrying", event.id)
        record = await until(lambda r: statuses(r).get("fixable") == "failed", event.id)
        assert record.status == "partially_failed" and record.sender == "tests.Shop"
        failed, sibling = record.handlers["e2e_handlers.fixable"], record.handlers["e2e_handlers.fixable_sibling"]
        assert failed.attempts == 2 and failed.error is not None and failed.error.startswith("ConnectionError")
        assert failed.traceback is not None and "downstream unavailable" in failed.traceback
        assert failed.started_at is not None and failed.finished_at is not None and failed.duration is not None
        assert sibling.status == "succeeded" and sibling.attempts == 1 and sibling.error is None
        assert [r.id for r in await event_bus.find_events(status="partially_failed")] == [event.id]

        # When the downstream is fixed and the failed job retried
        rclient.set(f"fixed:{tok}", 1)
        [job] = await event_bus.get_failed_jobs()
        # (the dashboard links a failed handler's entry to its job by this id)
        assert job.id == message.derived_id("failed", event.id, "e2e_handlers.fixable", failed.attempts)
        await event_bus.retry_job(job.id)
        # Then the handler is retrying at once, then succeeded, and so is the event
        assert statuses(await event_bus.get_event(event.id))["fixable"] in ("retrying", "running", "succeeded")
        record = await until(lambda r: r.status == "succeeded", event.id)
        assert statuses(record) == {"fixable": "succeeded", "fixable_sibling": "succeeded"}

        # A cancelled delayed event shows cancelled, and no worker ever records it
        later = Event("t.record", {"token": token()})
        await event_bus.publish(later, delay=60)
        assert await event_bus.cancel(later.id)
        assert (await until(lambda r: r.status == "cancelled", later.id)).handlers == {}

        # Replay to one handler: a new event, replay_of set, only that handler runs
        replay_id = await event_bus.replay(event.id, handlers=["e2e_handlers.fixable_sibling"])
        replayed = await until(lambda r: r.status == "succeeded", replay_id)
        assert replayed.replay_of == event.id and replayed.data == event.data
        assert statuses(replayed) == {"fixable_sibling": "succeeded"}
        # ... and to all of them
        replay_all = await event_bus.replay(event.id)
        assert statuses(await until(lambda r: r.status == "succeeded", replay_all)) == {
            "fixable": "succeeded",
            "fixable_sibling": "succeeded",
        }
        assert {r["id"] for r in wait_results(rclient, tok, 4)} >= {replay_id, replay_all}

        # Records written by workers expire too
        if store == "redis":
            assert 3500 < await env.redis.ttl(keys.eventlog_record(replay_all)) <= 3601
        else:
            client: MongoClient[Any] = MongoClient(mongo["EARNEVENTS_MONGO_URI"], tz_aware=True)
            try:
                col = client[mongo["EARNEVENTS_DATABASE"]][keys.MONGO_EVENTLOG_COLLECTION]
                assert all(isinstance(d["expire_at"], dt.datetime) for d in col.find({}))
                assert any("expireAfterSeconds" in i for i in col.index_information().values())
            finally:
                client.close()
    finally:
        await earnevents.close()
        mp.undo()


async def test_a_log_store_that_is_down_fails_no_handler(redis_url, queue, start_worker, rclient):
    # Given workers whose event log store (MongoDB) is unreachable
    dead_mongo = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    worker = start_worker(env={"EARNEVENTS_EVENT_LOG": "1", "EARNEVENTS_MONGO_URI": dead_mongo})
    await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue})
    try:
        # When events are published, then every handler runs
        tok = token()
        await event_bus.publish_batch([Event("t.record", {"token": tok, "i": i}) for i in range(3)])
        assert len(wait_results(rclient, tok, 6)) == 6
        # and the gap is in the worker's log
        wait_for(lambda: "event log: cannot write to its store" in worker.log(), 20, "the worker logging the gap")
    finally:
        await earnevents.close()
