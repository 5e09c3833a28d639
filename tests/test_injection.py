"""Ids and name filters are plain strings, never MongoDB operators or Redis key tricks:
the same on the Redis and the MongoDB failure store (the ``env`` fixture runs both)."""

from __future__ import annotations

import pytest
from bson import ObjectId

from earnevents import BaseModel, DeadItemNotFoundError, Event, FailedJob, JobNotFoundError, deadletters, event_bus
from earnevents.failures.selection import JobSelection

pytest_plugins = ["model_fixtures"]  # the models_env fixture

OPERATORS = [{"$ne": None}, {"$gt": ""}, {"$exists": True}, ["$gt", ""], 7]


async def two_failed_jobs(env, queue: str) -> list[FailedJob]:
    jobs = []
    for name in ("a.secret", "b.secret"):
        try:
            raise RuntimeError("boom")
        except RuntimeError as exc:
            jobs.append(FailedJob.from_exception(Event(name, {"k": 1}), "app.h", exc, attempts=1, queue=queue))
    for job in jobs:
        await env.failures.add(job)
    return jobs


@pytest.mark.parametrize("value", OPERATORS)
async def test_a_failed_job_filter_that_is_not_a_str_is_a_type_error(env, queue, value):
    # Given failed jobs of two events
    await two_failed_jobs(env, queue)
    # When a filter is an operator (or anything but a str), Then it is refused, not run as a query
    for call in (event_bus.get_failed_jobs, event_bus.count_failed_jobs):
        with pytest.raises(TypeError, match="event_name must be a str"):
            await call(event_name=value)
        with pytest.raises(TypeError, match="handler must be a str"):
            await call(handler=value)
    with pytest.raises(TypeError, match="event_name must be a str"):
        JobSelection(event_name=value)
    with pytest.raises(TypeError, match="selection must be a JobSelection"):
        await env.failures.list(10, 0, {"event_name": value})
    with pytest.raises(TypeError, match="selection must be a JobSelection"):
        await env.failures.count({"event_name": value})
    # And a str filter is compared as it is
    assert await event_bus.get_failed_jobs(event_name="$ne") == []
    assert [j.event.name for j in await event_bus.get_failed_jobs(event_name="a.secret")] == ["a.secret"]


@pytest.mark.parametrize("value", OPERATORS)
async def test_a_failed_job_id_that_is_not_a_str_is_a_type_error_and_nothing_is_touched(env, queue, value):
    # Given two failed jobs
    jobs = await two_failed_jobs(env, queue)
    # When get, retry or remove is given an operator as the id, Then each is a TypeError
    for call in (event_bus.get_failed_job, event_bus.retry_job, event_bus.remove_job):
        with pytest.raises(TypeError, match="job_id must be a str"):
            await call(value)
    for store_call in (env.failures.get, env.failures.take, env.failures.remove):
        with pytest.raises(TypeError):
            await store_call(value)
    # And both jobs are still there
    assert {j.id for j in await event_bus.get_failed_jobs()} == {j.id for j in jobs}


@pytest.mark.parametrize("job_id", ["no-such-job", "", "A" * 32, "../" + "0" * 29, "0" * 32 + "\n", "*"])
async def test_a_failed_job_id_not_of_the_documented_form_is_not_found_and_says_the_form(env, queue, job_id):
    await two_failed_jobs(env, queue)
    for call in (event_bus.get_failed_job, event_bus.retry_job, event_bus.remove_job):
        with pytest.raises(JobNotFoundError, match="ids are 32 lowercase hex digits"):
            await call(job_id)
    assert await event_bus.count_failed_jobs() == 2


@pytest.mark.parametrize("value", [{"$gt": ""}, 1, None])
async def test_dead_item_ids_are_str_only(bus, rclient, queue, value):
    dead = deadletters.DeadItem.new(b"junk", queue, "not JSON")
    script_keys, argv = deadletters.add_args(dead, 10)
    rclient.eval(deadletters.ADD_SCRIPT, len(script_keys), *script_keys, *argv)
    for call in (bus.get_dead_item, bus.remove_dead_item):
        with pytest.raises(TypeError, match="item_id must be a str"):
            await call(value)
    with pytest.raises(DeadItemNotFoundError, match="ids are 32 lowercase hex digits"):
        await bus.get_dead_item("junk*")
    assert await bus.count_dead_items() == 1


async def test_cancel_and_scheduled_filters_are_str_only(bus):
    event_id = await bus.publish(Event("later.one", {}), delay=3600)
    with pytest.raises(TypeError, match="event_id must be a str"):
        await bus.cancel({"$gt": ""})  # type: ignore[arg-type]
    for call in (bus.get_scheduled, bus.count_scheduled):
        with pytest.raises(TypeError, match="event_name must be a str"):
            await call(event_name={"$ne": None})
    assert await bus.count_scheduled() == 1
    assert await bus.cancel(event_id) is True


class Secret(BaseModel):
    owner: str


@pytest.mark.mongo
async def test_model_get_takes_an_objectid_or_its_hex_string_only(models_env):
    # Given a stored document
    secret = await Secret(owner="ada").create()
    # When get is given an operator, Then it is a TypeError (not "any document")
    for value in ({"$exists": True}, {"$ne": None}, 5, None, [secret.id]):
        with pytest.raises(TypeError, match=r"Secret\.get takes an ObjectId"):
            await Secret.get(value)
    # And a str that is not 24 hex digits names no model
    for text in ("x", "$exists", str(secret.id) + "0", str(secret.id).upper() + " "):
        assert await Secret.get(text) is None
    assert await Secret.get(str(secret.id)) == secret
    assert await Secret.get(ObjectId(str(secret.id))) == secret
