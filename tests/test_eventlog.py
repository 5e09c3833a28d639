"""The event log in-process, on both stores: what publish, cancel and the queries do.

Workers' writes are in test_eventlog_e2e.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import MongoClient

import earnevents
from earnevents import Event, EventNotFoundError, FailedJob, keys, message
from earnevents.eventlog.record import (
    CANCELLED,
    FAILED,
    PARTIALLY_FAILED,
    PENDING,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    Completed,
    HandlerChange,
    Published,
    derive_status,
)


@pytest.fixture(params=["redis", "mongo"])
async def logged(request: pytest.FixtureRequest, redis_url: str, queue: str) -> AsyncIterator[Any]:
    """earnevents with the event log on, once on each store (TTL one hour)."""
    mongo: dict[str, Any] = {"mongo_uri": ""}
    if request.param == "mongo":
        mongo = {"mongo_uri": request.getfixturevalue("mongo_url"), "database": request.getfixturevalue("mongo_db")}
    mp = pytest.MonkeyPatch()
    mp.setenv("EARNEVENTS_EVENT_LOG_TTL", "3600")
    try:
        environment = await earnevents.init(
            redis_uri=redis_url, event_config={"queue_name": queue, "event_log": True}, **mongo
        )
        yield environment
    finally:
        await earnevents.close()
        mp.undo()


async def _record(event_id: str, timeout: float = 5.0) -> earnevents.EventRecord:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await earnevents.event_bus.get_event(event_id)
        except EventNotFoundError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


def test_the_event_status_is_derived_from_the_handlers():
    assert derive_status([], cancelled=False, dispatched=False) == PENDING
    assert derive_status([], cancelled=False, dispatched=True) == SUCCEEDED
    assert derive_status([SUCCEEDED], cancelled=True, dispatched=True) == CANCELLED
    assert derive_status([SUCCEEDED, RUNNING], cancelled=False, dispatched=True) == RUNNING
    assert derive_status([FAILED, RETRYING], cancelled=False, dispatched=True) == RUNNING
    assert derive_status([PENDING, PENDING], cancelled=False, dispatched=False) == PENDING
    assert derive_status([SUCCEEDED, PENDING], cancelled=False, dispatched=True) == RUNNING
    assert derive_status([SUCCEEDED, SUCCEEDED], cancelled=False, dispatched=True) == SUCCEEDED
    assert derive_status([FAILED], cancelled=False, dispatched=True) == FAILED
    assert derive_status([SUCCEEDED, FAILED], cancelled=False, dispatched=True) == PARTIALLY_FAILED


async def test_a_published_event_is_recorded_pending_with_its_fields(logged):
    # Given the event log on, when an event with a sender is published
    event = Event("order.paid", {"n": 1, "when": dt.date(2026, 1, 2)}, metadata={"sender": "shop.Order"})
    await earnevents.event_bus.publish(event)
    # Then its record holds the event and is pending (no worker took it)
    record = await _record(event.id)
    assert (record.id, record.name, record.data, record.sender) == (event.id, "order.paid", event.data, "shop.Order")
    assert record.status == PENDING and record.handlers == {} and record.due_at is None
    assert record.published_at is not None and abs(record.published_at.timestamp() - time.time()) < 60


async def test_a_handler_a_later_delivery_found_completed_shows_succeeded_keeping_what_was_written(logged, queue):
    # Given an event whose worker wrote "running" for one handler and nothing for another,
    # then died before its "succeeded" writes left its buffer
    event = Event("order.paid", {"n": 1})
    started = time.time() - 1
    running = {"status": RUNNING, "attempts": 1, "started_at": started}
    await logged.eventlog.write(
        [Published(event, queue, started), HandlerChange(event.id, queue, "app.h.first", running, None)]
    )
    assert (await _record(event.id)).status == RUNNING
    # When the redelivered message finds both jobs completed (the dedup record) and says so
    await logged.eventlog.write(
        [
            Completed(event.id, queue, "app.h.first", time.time()),
            Completed(event.id, queue, "app.h.second", time.time()),
        ]
    )
    # Then both show succeeded, the first with the start its worker wrote, and so does the event
    record = await _record(event.id)
    assert record.status == SUCCEEDED
    first, second = record.handlers["app.h.first"], record.handlers["app.h.second"]
    assert first.status == SUCCEEDED and first.started_at is not None
    assert abs(first.started_at.timestamp() - started) < 0.01
    assert second.status == SUCCEEDED and second.finished_at is not None


async def test_a_cancelled_delayed_event_shows_cancelled(logged):
    event = Event("invoice.reminder", {"n": 1})
    await earnevents.event_bus.publish(event, delay=3600)
    record = await _record(event.id)
    assert record.status == PENDING and record.due_at is not None
    assert record.due_at.timestamp() == pytest.approx(time.time() + 3600, abs=60)
    assert await earnevents.event_bus.cancel(event.id)
    record = await earnevents.event_bus.get_event(event.id)
    assert record.status == CANCELLED and record.cancelled_at is not None


async def test_cancelling_a_handler_retry_leaves_no_event_log_record_for_its_id(logged):
    # Given a handler's pending retry (a message for one handler, under its own id) in the schedule
    bus = earnevents.event_bus
    settings = earnevents.runtime.current().settings
    event = Event("invoice.reminder", {"n": 1})
    retry_id = message.derived_id("retry", event.id, "m.h", 1)
    payload = message.build(event.to_wire(), queue=settings.queue_name, task_id=retry_id, handler="m.h", attempt=1)
    await bus.enqueue([(retry_id, event.name, payload)], queue=settings.queue_name, delay=3600)
    # When an operator cancels it
    assert await bus.cancel(retry_id)
    await bus.flush_event_log()
    # Then the event log's store holds nothing made up for that id, nor for the event
    env = earnevents.runtime.current()
    for record_id in (retry_id, event.id):
        with pytest.raises(earnevents.EventNotFoundError):
            await bus.get_event(record_id)
        if env.connections.has_mongo:
            assert await env.db[keys.MONGO_EVENTLOG_COLLECTION].count_documents({"_id": record_id}) == 0
        else:
            assert not await env.redis.exists(keys.eventlog_record(record_id))


async def test_a_worker_done_before_replay_or_retry_job_returns_keeps_what_it_wrote(logged, queue, monkeypatch):
    """The caller's own entries ("pending" for a replay, "retrying" for a retried job) are
    written before the message is sent: a worker that handles it at once, before the call
    returns, must not have its "succeeded" overwritten by them (CI saw a replay stuck
    pending with its worker done)."""
    bus = earnevents.event_bus
    env = earnevents.runtime.current()
    push_now, enqueue = bus._push_now, bus.enqueue

    async def handled_at_once(messages: Any) -> None:
        # What a fast worker writes the moment a message is on the queue
        for _, _, payload in messages:
            wire, kwargs = message.parse(payload)
            done = {"status": SUCCEEDED, "attempts": 1, "finished_at": time.time()}
            await logged.eventlog.write([HandlerChange(wire["id"], queue, kwargs["handler"], done, None)])

    async def push_and_handle(messages: Any, queue_name: str) -> None:
        await push_now(messages, queue_name)
        await handled_at_once(messages)

    async def enqueue_and_handle(messages: Any, **kwargs: Any) -> None:
        await enqueue(messages, **kwargs)
        await handled_at_once(messages)

    monkeypatch.setattr(bus, "_push_now", push_and_handle)
    monkeypatch.setattr(bus, "enqueue", enqueue_and_handle)
    # Given a logged event, when it is replayed to one handler that a worker handles at once
    event = Event("order.paid", {"n": 1})
    await logged.eventlog.write([Published(event, queue, time.time())])
    replay_id = await bus.replay(event.id, handlers=["app.h.first"])
    await bus.flush_event_log()
    # Then its record shows the handler succeeded, not pending
    record = await bus.get_event(replay_id)
    assert record.status == SUCCEEDED and record.handlers["app.h.first"].status == SUCCEEDED
    # And the same for a failed job retried and handled at once
    failed = FailedJob(event, "app.h.second", "RuntimeError: x", "tb", 2, queue)
    await env.failures.add(failed)
    await logged.eventlog.write(
        [HandlerChange(event.id, queue, "app.h.second", {"status": FAILED, "attempts": 2}, event)]
    )
    await bus.retry_job(failed.id)
    await bus.flush_event_log()
    assert (await bus.get_event(event.id)).handlers["app.h.second"].status == SUCCEEDED


async def test_a_replay_or_retry_that_cannot_be_sent_is_not_left_pending_or_retrying(logged, queue, monkeypatch):
    bus = earnevents.event_bus
    env = earnevents.runtime.current()

    async def redis_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(bus, "_push_now", redis_down)
    monkeypatch.setattr(bus, "enqueue", redis_down)
    event = Event("order.paid", {"n": 1})
    await logged.eventlog.write([Published(event, queue, time.time())])
    # A replay that could not be sent shows cancelled (never pending for ever)
    with pytest.raises(ConnectionError):
        await bus.replay(event.id, handlers=["app.h.first"])
    [replay] = [r for r in await bus.find_events(name="order.paid") if r.id != event.id]
    assert replay.replay_of == event.id and replay.status == CANCELLED
    # A retried job that could not be sent is failed again, on the list and in the log
    failed = FailedJob(event, "app.h.second", "RuntimeError: x", "tb", 2, queue)
    await env.failures.add(failed)
    with pytest.raises(ConnectionError):
        await bus.retry_job(failed.id)
    assert (await bus.get_failed_job(failed.id)).id == failed.id
    entry = (await bus.get_event(event.id)).handlers["app.h.second"]
    assert (entry.status, entry.attempts, entry.error) == (FAILED, 2, "RuntimeError: x")


async def test_find_events_filters_and_pages_newest_first(logged):
    bus = earnevents.event_bus
    events = [
        Event("a.one", {"i": 0}, metadata={"sender": "S1"}),
        Event("a.two", {"i": 1}, metadata={"sender": "S2"}),
        Event("a.one", {"i": 2}, metadata={"sender": "S2"}),
    ]
    for event in events:
        await bus.publish(event)
        await asyncio.sleep(0.01)  # distinct publish times
    await bus.flush_event_log()
    assert [r.id for r in await bus.find_events()] == [e.id for e in reversed(events)]
    assert [r.id for r in await bus.find_events(name="a.one")] == [events[2].id, events[0].id]
    assert [r.id for r in await bus.find_events(sender="S2")] == [events[2].id, events[1].id]
    assert [r.id for r in await bus.find_events(name="a.one", sender="S2")] == [events[2].id]
    assert [r.id for r in await bus.find_events(limit=1, offset=1)] == [events[1].id]
    assert [r.id for r in await bus.find_events(status=PENDING, limit=2)] == [events[2].id, events[1].id]
    assert await bus.find_events(status=FAILED) == []
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=60)
    assert await bus.find_events(since=later) == []
    assert len(await bus.find_events(until=later)) == 3


async def test_ids_and_filters_are_str_only_and_unknown_ids_are_not_found(logged):
    bus = earnevents.event_bus
    with pytest.raises(TypeError, match="event_id must be a str"):
        await bus.get_event({"$gt": ""})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be a str"):
        await bus.find_events(name={"$ne": None})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sender must be a str"):
        await bus.find_events(sender=["x"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status must be one of"):
        await bus.find_events(status="done")
    with pytest.raises(ValueError, match="timezone-aware"):
        await bus.find_events(since=dt.datetime(2026, 1, 1))
    with pytest.raises(EventNotFoundError, match="no logged event"):
        await bus.get_event("0" * 32)
    with pytest.raises(EventNotFoundError):
        await bus.get_event("not an id")  # a space: not of the form, not looked up


async def test_records_expire_after_the_ttl(logged, request):
    event = Event("ttl.check", {})
    await earnevents.event_bus.publish(event)
    await earnevents.event_bus.flush_event_log()
    settings = logged.settings
    assert settings.event_log_ttl == 3600
    if "mongo" in request.node.callspec.id:
        client: MongoClient[Any] = MongoClient(settings.mongo_uri, tz_aware=True)
        try:
            col = client[settings.database][keys.MONGO_EVENTLOG_COLLECTION]
            ttl = [i for i in col.index_information().values() if "expireAfterSeconds" in i]
            assert [(i["key"], i["expireAfterSeconds"]) for i in ttl] == [([("expire_at", 1)], 0)]
            doc = col.find_one({"_id": event.id})
            assert doc is not None and isinstance(doc["expire_at"], dt.datetime)
            assert doc["expire_at"].timestamp() == pytest.approx(time.time() + 3600, abs=60)
        finally:
            client.close()
    else:
        client_r = logged.connections.redis()
        assert 3500 < await client_r.ttl(keys.eventlog_record(event.id)) <= 3601
        assert 3500 < await client_r.ttl(keys.eventlog_index(settings.queue_name)) <= 3600


async def test_without_the_event_log_nothing_is_recorded(bus):
    event = Event("quiet.event", {})
    await bus.publish(event)
    await bus.flush_event_log()
    with pytest.raises(EventNotFoundError, match="EARNEVENTS_EVENT_LOG=1"):
        await bus.get_event(event.id)


async def test_a_log_store_that_fails_never_fails_a_publish(logged, caplog):
    # Given an event log store that refuses every write
    async def broken(changes):
        raise ConnectionError("log store down")

    recorder = earnevents.event_bus._state().recorder
    assert recorder is not None
    recorder.store.write = broken  # type: ignore[method-assign]
    # When an event is published, then the publish succeeds and the loss is logged
    event_id = await earnevents.event_bus.publish(Event("still.works", {}))
    await earnevents.event_bus.flush_event_log()
    assert event_id and recorder.dropped == 1
    assert "could not record 1 change(s) of published events" in caplog.text
