"""Failure records are always storable, and bookkeeping that can never succeed is final."""

from __future__ import annotations

import importlib
import logging

import pytest
from pymongo.errors import AutoReconnect, DocumentTooLarge, OperationFailure
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ReadOnlyError, ResponseError

import earnevents
from earnevents import Event, FailedJob, RetryPolicy, event_bus, keys
from earnevents.worker.app import SettleError, WorkerRuntime, is_transient
from earnevents.worker.jobs import Job, Outcome

worker_app = importlib.import_module("earnevents.worker.app")  # the package exports the Celery app as "app"


@pytest.fixture
async def mongo_env(redis_url, queue, mongo_url, mongo_db):
    environment = await earnevents.init(
        redis_uri=redis_url, mongo_uri=mongo_url, database=mongo_db, event_config={"queue_name": queue}
    )
    yield environment
    await earnevents.close()


def failed(event: Event, queue: str, error: BaseException) -> FailedJob:
    return FailedJob.from_exception(event, "app.handler", error, attempts=1, queue=queue)


@pytest.mark.parametrize(
    "data",
    [{"a\x00b": 1}, {"n": 2**70}, {"nested": [{"m": -(2**64)}]}, {"$where": 1, "a.b": 2}],
    ids=["nul-key", "int-beyond-64-bits", "nested-big-int", "dollar-and-dot-keys"],
)
async def test_an_event_bson_refuses_is_recorded_once_with_its_data_intact(env, queue, data):
    # Given a failed job whose event data BSON cannot encode
    event = Event("user.created", data)
    # When it is recorded
    await env.failures.add(failed(event, queue, ValueError("bad")))
    # Then there is one record, holding the event exactly
    [got] = await event_bus.get_failed_jobs()
    assert got.event == event and got.error == "ValueError: bad"
    if env.settings.mongo_uri and data != {"$where": 1, "a.b": 2}:
        [doc] = await env.db[keys.MONGO_FAILED_COLLECTION].find({}).to_list()
        assert doc["event_json"] is True and isinstance(doc["event"], str)  # said so on the record


async def test_an_error_text_utf8_cannot_carry_is_recorded(env, queue):
    # Given an exception whose message holds a lone surrogate
    await env.failures.add(failed(Event("user.created", {}), queue, ValueError("bad \udc80 byte")))
    # Then it is stored, the surrogate escaped where the store needs it
    [got] = await event_bus.get_failed_jobs()
    assert got.error.startswith("ValueError: bad ")


def runtime_job(event: Event, queue: str) -> Job:
    return Job(event=event, handler=None, attempt=0, retry_policy=RetryPolicy(max_retries=0), queue=queue)


async def test_a_failure_too_large_for_mongodb_gets_a_minimal_record_instead_of_an_endless_requeue(
    mongo_env, queue, monkeypatch, caplog
):
    monkeypatch.setattr(worker_app, "SETTLE_TIMEOUT", 3.0)  # before the fix: SettleError after this
    # Given a handler failure whose message alone is beyond MongoDB's 16 MB document limit
    event = Event("user.created", {"k": 1})
    huge = ValueError("x" * (17 * 1024 * 1024))
    books = WorkerRuntime(loop=None, env=mongo_env)  # type: ignore[arg-type]
    # When the worker settles it
    with caplog.at_level(logging.ERROR):
        await books.settle(runtime_job(event, queue), [Outcome("app.handler", huge)])
    # Then one minimal record keeps the event, the start of the error and why it is minimal
    [got] = await event_bus.get_failed_jobs()
    assert got.event == event and got.handler == "app.handler"
    assert got.error.startswith("ValueError: xxx") and "DocumentTooLarge" in got.error
    assert len(got.error) < 25_000
    assert "giving up settling event" in caplog.text


async def test_a_failure_no_store_accepts_is_logged_with_the_event_and_acknowledged(
    redis_url, queue, rclient, monkeypatch, caplog
):
    monkeypatch.setattr(worker_app, "SETTLE_TIMEOUT", 3.0)
    environment = await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue})
    try:
        # Given a Redis failure store whose index key holds a value of the wrong type (WRONGTYPE)
        rclient.set(keys.failed_index(queue), "not a sorted set")
        event = Event("user.created", {"k": "findme"})
        books = WorkerRuntime(loop=None, env=environment)  # type: ignore[arg-type]
        # When the worker settles a failure, Then it gives up after a few tries (no requeue)
        with caplog.at_level(logging.ERROR):
            await books.settle(runtime_job(event, queue), [Outcome("app.handler", ValueError("bad"))])
        # and the event's wire form is in the log, at CRITICAL: never a silent acknowledgement
        critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        assert len(critical) == 1 and event.id in critical[0].getMessage() and "findme" in critical[0].getMessage()
    finally:
        await earnevents.close()


async def test_a_transient_bookkeeping_error_still_hands_the_message_back(redis_url, queue, monkeypatch):
    monkeypatch.setattr(worker_app, "SETTLE_TIMEOUT", 0.5)
    environment = await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue})
    try:
        books = WorkerRuntime(loop=None, env=environment)  # type: ignore[arg-type]

        async def unreachable(job):
            raise RedisConnectionError("redis is down")

        monkeypatch.setattr(environment.failures, "add", unreachable)
        with pytest.raises(SettleError):
            await books.settle(runtime_job(Event("e.x", {}), queue), [Outcome("app.handler", ValueError("bad"))])
    finally:
        await earnevents.close()


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (RedisConnectionError("down"), True),
        (ReadOnlyError("READONLY"), True),
        (ConnectionRefusedError(), True),
        (AutoReconnect("primary stepped down"), True),
        (OperationFailure("auth failed", code=18), True),
        (ResponseError("WRONGTYPE"), False),
        (DataError("bad value"), False),
        (DocumentTooLarge("too large"), False),
        (OperationFailure("bad query", code=2), False),
        (ValueError("a bug"), False),
    ],
)
def test_which_bookkeeping_errors_are_transient(error, transient):
    assert is_transient(error) is transient
