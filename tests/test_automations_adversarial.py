"""Model automations when users get things wrong or the world changes under them: a
condition that raises, a naive datetime in the date field, entity references with an
ObjectId or a non-ObjectId id, the seed's ``entity_type="*"``, a write that fails, the
issue's keyword-only ``EventDefinition`` signature. Without a worker: the occurrence
handler (``occurrences.fire``) runs in-process, as a worker would run it."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from model_fixtures import queued

import earnevents
from earnevents import BaseModel, EntityRef, Event, EventConditionError, EventDefinition, ModelStateError, message
from earnevents.handlers import registry
from earnevents.models import automations
from earnevents.worker import occurrences

pytest_plugins = ["model_fixtures"]  # the models_env fixture

UTC = dt.timezone.utc
HOUR = dt.timedelta(hours=1)


def urgent(order: Any) -> bool:
    return bool(order.note.lower() == "urgent")  # AttributeError while note is None


class TadOrder(BaseModel):
    """Two definitions whose condition raises while ``note`` is None, and one without a condition."""

    _events = (
        EventDefinition("tad_urgent", condition=urgent),
        EventDefinition("tad_urgent_due", date_field="due", condition=urgent),
        EventDefinition("tad_due", date_field="due"),
    )
    due: dt.datetime | None = None
    note: str | None = None


def names(rclient, queue) -> list[str]:
    return [event.name for event in queued(rclient, queue)]


async def pending_for(name: str) -> list[Any]:
    return await earnevents.event_bus.get_scheduled(event_name=name)


def as_worker_gets_it(pending: Any) -> Event:
    """The occurrence's message from the schedule, as the worker's handler receives it."""
    return pending.event


# --- a condition that raises ----------------------------------------------------------


@pytest.mark.mongo
async def test_a_condition_that_raises_on_a_write_is_named_and_the_other_definitions_are_kept(
    models_env, rclient, queue
):
    # Given an order whose two conditions raise (note is None)
    order = TadOrder(due=dt.datetime.now(UTC) + HOUR)
    # When it is created
    with pytest.raises(EventConditionError) as raised:
        await order.create()
    # Then the error names the event, the model and the document, with the condition's error as its cause
    assert f"the condition of 'tad_urgent' raised on TadOrder {order.id}" in str(raised.value)
    assert isinstance(raised.value.__cause__, AttributeError)
    # And the write stands, and the definition without a condition was maintained all the same
    assert order.is_stored and await TadOrder.get(order.id) is not None
    [due] = await pending_for("tad_due")
    assert due.entity == EntityRef("TadOrder", str(order.id))
    assert await pending_for("tad_urgent_due") == []
    # When the write fixes the data the conditions raised on
    order.note = "urgent"
    await order.save()
    # Then the state before (where they raised) counts as not holding: the immediate event is
    # published and the gated occurrence scheduled
    assert names(rclient, queue).count("tad_urgent") == 1
    [urgent_due] = await pending_for("tad_urgent_due")
    assert urgent_due.entity == EntityRef("TadOrder", str(order.id))


@pytest.mark.mongo
async def test_a_rebuild_skips_a_document_whose_condition_raises_and_rebuilds_the_others(models_env, queue, rclient):
    # Given two orders written behind the model's back (nothing scheduled): one the conditions raise on
    due = (dt.datetime.now(UTC) + HOUR).replace(microsecond=0)
    collection = models_env.db[TadOrder._collection]
    bad = (await collection.insert_one({"due": due, "note": None})).inserted_id
    good = (await collection.insert_one({"due": due, "note": "urgent"})).inserted_id
    # When the schedule is rebuilt from MongoDB
    [report] = await automations.rebuild(models_env.redis, models_env.db, queue, [TadOrder])
    # Then the bad one is counted unreadable, the good one's occurrences are back, and the model is marked rebuilt
    assert report.unreadable == 1
    assert {p.entity.id for p in await pending_for("tad_urgent_due")} == {str(good)}
    assert {p.entity.id for p in await pending_for("tad_due")} == {str(good)}
    assert str(bad) not in {p.entity.id for p in await earnevents.event_bus.get_scheduled()}
    assert rclient.sismember(earnevents.keys.occurrences_rebuilt(queue), "TadOrder")


@pytest.mark.mongo
async def test_a_condition_that_raises_when_an_occurrence_is_due_fails_the_job_with_a_clear_error(
    models_env, rclient, queue
):
    # Given an urgent order with its gated occurrence pending
    order = await TadOrder(due=dt.datetime.now(UTC) + HOUR, note="urgent").create()
    [pending] = await pending_for("tad_urgent_due")
    # And its note cleared behind the model's back, so the condition raises
    await models_env.db[TadOrder._collection].update_one({"_id": order.id}, {"$set": {"note": None}})
    # When the worker's occurrence handler runs it
    # Then it fails (retried, then a failed job) with an error naming the event and the document
    with pytest.raises(EventConditionError, match=f"the condition of 'tad_urgent_due' raised on TadOrder {order.id}"):
        await occurrences.fire(as_worker_gets_it(pending))
    assert "tad_urgent_due" not in names(rclient, queue)


# --- a naive datetime in the date field -------------------------------------------------


class TadAlarm(BaseModel):
    _events = (EventDefinition("tad_alarm", date_field="rings_at"),)
    rings_at: dt.datetime | None = None


@pytest.mark.mongo
async def test_a_naive_date_is_taken_as_utc_by_the_writer_and_by_the_worker(models_env, rclient, queue):
    # Given an alarm written with a naive datetime (UTC, as MongoDB takes it), with microseconds
    naive = dt.datetime.now(UTC).replace(tzinfo=None) + HOUR
    alarm = await TadAlarm(rings_at=naive).create()
    # Then its occurrence is due at that time read as UTC
    [pending] = await pending_for("tad_alarm")
    assert abs(pending.due_at - naive.replace(tzinfo=UTC)) < dt.timedelta(milliseconds=1)
    # When it is due, the worker reloads the document (MongoDB gives an aware, truncated datetime)
    await occurrences.fire(as_worker_gets_it(pending))
    # Then it agrees on the due time and publishes the event, not dropping it as stale
    [fired] = [event for event in queued(rclient, queue) if event.name == "tad_alarm"]
    assert fired.entity_ref == EntityRef("TadAlarm", str(alarm.id))


# --- datetime.max as "never" ----------------------------------------------------------------


class TadLease(BaseModel):
    _events = (
        EventDefinition("tad_lease_renewal", date_field="ends", offset=-30 * 24 * HOUR),
        EventDefinition("tad_lease_archive", date_field="ends", offset=24 * HOUR),
    )
    ends: dt.datetime | None = None


@pytest.mark.mongo
async def test_datetime_max_as_never_with_a_positive_offset_schedules_nothing_and_the_write_goes_through(
    models_env, queue
):
    # Given a lease that never ends (datetime.max, a common sentinel)
    lease = await TadLease(ends=dt.datetime.max.replace(tzinfo=UTC)).create()
    # Then the definition whose offset takes it past the year 9999 is never due: nothing scheduled,
    # while the one before it is pending as any other
    assert await pending_for("tad_lease_archive") == []
    [renewal] = await pending_for("tad_lease_renewal")
    expected = dt.datetime(9999, 12, 1, 23, 59, 59, 999_000, tzinfo=UTC) - dt.datetime(1970, 1, 1, tzinfo=UTC)
    assert renewal.event.metadata["occurrence"]["due_ms"] == expected // dt.timedelta(milliseconds=1)
    # And a later write and a rebuild agree
    lease.ends = dt.datetime.now(UTC) + HOUR
    await lease.save()
    assert len(await pending_for("tad_lease_archive")) == 1
    lease.ends = dt.datetime.max
    await lease.save()
    assert await pending_for("tad_lease_archive") == []
    [report] = await automations.rebuild(models_env.redis, models_env.db, queue, [TadLease])
    assert report.unreadable == 0
    assert await pending_for("tad_lease_archive") == []


@pytest.mark.mongo
async def test_a_due_time_before_the_year_1_is_a_clear_error_and_the_other_definitions_are_kept(models_env, queue):
    # Given a lease ending in the first days of the year 1 (a bad import), its renewal due 30 days before
    # When it is created
    with pytest.raises(ValueError, match=r"'tad_lease_renewal'\): ends 0001-01-05 .* is before the year 1"):
        await TadLease(ends=dt.datetime(1, 1, 5, tzinfo=UTC)).create()
    # Then the write stands and the other definition was maintained (due long ago: it catches up)
    assert len(await pending_for("tad_lease_archive")) == 1
    # And a rebuild counts the document as unreadable instead of failing as a whole
    [report] = await automations.rebuild(models_env.redis, models_env.db, queue, [TadLease], since=10**12)
    assert report.unreadable == 1


# --- deleted between scheduling and firing ---------------------------------------------


@pytest.mark.mongo
async def test_an_occurrence_of_a_document_deleted_behind_the_models_back_publishes_nothing(
    models_env, rclient, queue, caplog
):
    # Given an alarm with its occurrence pending, deleted without the model (nothing cancelled)
    alarm = await TadAlarm(rings_at=dt.datetime.now(UTC) + HOUR).create()
    [pending] = await pending_for("tad_alarm")
    await models_env.db[TadAlarm._collection].delete_one({"_id": alarm.id})
    # When the occurrence comes due
    with caplog.at_level(logging.INFO, logger="earnevents"):
        await occurrences.fire(as_worker_gets_it(pending))
    # Then nothing is published, and the log says why
    assert "tad_alarm" not in names(rclient, queue)
    assert f"tad_alarm for TadAlarm {alarm.id} not published: the document was deleted" in caplog.text


# --- entity references ------------------------------------------------------------------


@pytest.mark.mongo
async def test_an_entity_reference_holding_the_objectid_itself_is_understood(models_env):
    # Given an event published by hand whose metadata names the document by its ObjectId
    alarm = await TadAlarm().create()
    event = Event("tad_by_hand", {}, metadata={"entity": {"model": "TadAlarm", "id": alarm.id}})
    # (as a handler receives it: ObjectIds travel as ObjectIds)
    received = Event.from_wire(message.parse(message.build(event.to_wire(), queue="q", task_id="t"))[0])
    # Then entity_ref gives its hex id, and entity() loads it
    assert received.entity_ref == EntityRef("TadAlarm", str(alarm.id))
    assert await received.entity() == alarm


@pytest.mark.mongo
@pytest.mark.parametrize("record_id", [123, "123", "reservation-7"], ids=["int", "digits", "name"])
async def test_an_entity_id_that_is_no_objectid_is_a_clear_error_not_a_deleted_document(models_env, record_id):
    # Given an event dispatched about a model with an id no document can have (the seed's int ids)
    await earnevents.dispatch_model_event(earnevents.event_bus, TadAlarm, "rang", record_id)
    event = Event("tad_alarm.rang", {}, metadata={"entity": {"model": "TadAlarm", "id": str(record_id)}})
    # When a handler loads its entity
    # Then it is told the id is no ObjectId, rather than getting None as for a deleted document
    with pytest.raises(ValueError, match=r"TadAlarm documents have ObjectId ids"):
        await event.entity()


# --- handlers ------------------------------------------------------------------------------


def test_entity_type_star_is_every_model_as_the_seed_writes_it():
    # Given handlers written the seed's way, with its default entity_type="*" spelled out
    @earnevents.on_event(event_name="tad_star", entity_type="*")
    def on_any(event: Event) -> None: ...

    @earnevents.on_event_created("tad_star_due", entity_type="*")
    def on_any_created(event: Event) -> None: ...

    # Then they run for events of any sender, as without entity_type
    assert [h.func for h in registry.resolve("tad_star", "TadAlarm")] == [on_any]
    assert [h.func for h in registry.resolve("tad_star", None)] == [on_any]
    assert [h.func for h in registry.resolve("tad_star_due:created", "TadOrder")] == [on_any_created]


# --- a write that fails ------------------------------------------------------------------


@pytest.mark.mongo
async def test_a_save_that_fails_publishes_and_schedules_nothing(models_env, rclient, queue):
    # Given an order loaded, then deleted elsewhere
    order = await TadOrder(note="calm").create()
    await models_env.db[TadOrder._collection].delete_one({"_id": order.id})
    before = names(rclient, queue)
    # When it is saved urgent with a date
    order.note = "urgent"
    order.due = dt.datetime.now(UTC) + HOUR
    with pytest.raises(ModelStateError):
        await order.save()
    # Then no immediate event was published and no occurrence scheduled
    assert names(rclient, queue) == before
    assert await earnevents.event_bus.count_scheduled() == 0


# --- the signature -------------------------------------------------------------------------


def test_event_definition_takes_its_options_by_keyword_only():
    # The EventDefinition(name, *, condition=None, date_field=None, offset=None):
    # a positional condition or date field would be easy to mix up
    with pytest.raises(TypeError, match="positional"):
        EventDefinition("tad_positional", urgent)  # type: ignore[misc]
    assert EventDefinition(name="tad_named", condition=urgent).condition is urgent
