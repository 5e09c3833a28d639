"""Model events handled by real `celery -A earnevents worker` subprocesses (handlers: tests/model_handlers.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from bson import ObjectId
from conftest import token, wait_results
from model_fixtures import Parcel, eventually, worker_env

from earnevents import dispatch_model_event

pytest_plugins = ["model_fixtures"]  # the models_env fixture
pytestmark = [pytest.mark.mongo, pytest.mark.worker]

SHIPPED_AT = dt.datetime(2026, 6, 1, 9, 30, tzinfo=dt.timezone.utc)


@pytest.fixture
def worker(start_worker, mongo_url, mongo_db):
    """A worker with the model handlers, using this test's MongoDB database."""
    return start_worker(modules="model_handlers", env=worker_env(mongo_url, mongo_db))


async def test_a_dispatched_model_event_reaches_its_model_event_handler(models_env, worker, rclient):
    # Given a parcel with ObjectId and datetime fields
    tok = token()
    parcel = Parcel(token=tok, owner=ObjectId(), shipped_at=SHIPPED_AT)
    # When parcel.created is dispatched with an ObjectId as the id
    await dispatch_model_event(models_env.event_bus, Parcel, "created", ObjectId(), parcel)
    # Then the worker's @model_event_handler("Parcel", "created") got it with the types intact
    [seen] = wait_results(rclient, tok, 1)
    assert (seen["handler"], seen["name"]) == ("parcel_created", "parcel.created")
    assert seen["types"] == {
        "token": "str",
        "status": "str",
        "owner": "ObjectId",
        "shipped_at": "datetime",
        "id": "ObjectId",
    }
    assert seen["repr"]["shipped_at"] == repr(SHIPPED_AT)


async def test_automatic_events_reach_the_worker_with_the_changed_fields(models_env, worker, rclient):
    # Given a parcel model that publishes created/updated/deleted by itself
    tok = token()
    parcel = await Parcel(token=tok).create()
    # When two of its fields change and it is saved
    parcel.status = "shipped"
    parcel.shipped_at = SHIPPED_AT
    await parcel.save()
    # Then the worker handled parcel.created and parcel.updated, the latter naming the changed fields
    seen = {record["handler"]: record for record in wait_results(rclient, tok, 2)}
    assert seen["parcel_created"]["repr"]["id"] == repr(str(parcel.id))
    assert seen["parcel_updated"]["metadata"] == {
        "model": "Parcel",
        "entity": {"model": "Parcel", "id": str(parcel.id)},
        "changed_fields": ["status", "shipped_at"],
        "sender": "Parcel",
    }
    assert seen["parcel_updated"]["types"]["shipped_at"] == "datetime"


async def test_a_handler_in_the_worker_can_load_the_model_from_mongodb(models_env, worker, rclient):
    # Given a stored parcel
    tok = token()
    parcel = await Parcel(token=tok, status="at depot", shipped_at=SHIPPED_AT).create()
    # When an event names it by id
    await dispatch_model_event(models_env.event_bus, Parcel, "inspected", str(parcel.id), parcel)
    # Then the handler loaded it with Parcel.get in the worker process
    [seen] = [r for r in wait_results(rclient, tok, 2) if r["handler"] == "parcel_inspected"]
    assert seen["loaded"]["status"] == repr("at depot")
    assert seen["loaded"]["shipped_at"] == repr(SHIPPED_AT)
    assert seen["loaded"]["id"] == repr(parcel.id)


async def test_a_failing_model_event_handler_is_retried_then_recorded_as_a_failed_job(models_env, worker, rclient):
    # Given a handler for parcel.lost that always raises (retry policy: 2 retries)
    tok = token()
    parcel = Parcel(token=tok)
    # When parcel.lost is dispatched
    await dispatch_model_event(models_env.event_bus, Parcel, "lost", "p-1", parcel)
    # Then it ran three times and one failed job holds the event
    jobs = await eventually(models_env.event_bus.get_failed_jobs, what="a failed job for parcel.lost")
    [job] = jobs
    assert (job.handler, job.error) == ("model_handlers.parcel_lost", "LookupError: parcel p-1 is lost")
    assert job.event.name == "parcel.lost" and job.event.data["id"] == "p-1"
    assert [r["attempt"] for r in wait_results(rclient, tok, 3)] == [1, 2, 3]
