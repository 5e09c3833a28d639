"""Model automations without a worker: EventDefinition's checks, the class-definition
checks of ``_events``, due-time arithmetic, and what a write leaves in Redis (the
pending occurrences in the schedule, the events on the queue).

tests/test_automations_e2e.py and tests/test_automations_immediate_e2e.py have workers handle them.
"""

from __future__ import annotations

import datetime as dt
import types
from typing import Annotated, Any, Optional

import pydantic
import pytest
from model_fixtures import FAST_RETRIES, queued

import earnevents
from earnevents import BaseModel, EntityRef, EventDefinition, keys
from earnevents.entities import UnknownModelError
from earnevents.models.fields import MISSING

pytest_plugins = ["model_fixtures"]  # the models_env fixture

UTC = dt.timezone.utc
HOUR = dt.timedelta(hours=1)


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def ms(value: dt.datetime) -> int:
    """Unix milliseconds of an aware datetime, truncated (as MongoDB stores it)."""
    delta = value - dt.datetime(1970, 1, 1, tzinfo=UTC)
    return delta // dt.timedelta(milliseconds=1)


def confirmed(model: Any) -> bool:
    return bool(model.status == "confirmed")


async def is_vip(model: Any) -> bool:
    return bool(model.vip)


class TaBooking(BaseModel):
    """A scheduled event gated by a condition, and a reminder before it whatever the status."""

    _events = (
        EventDefinition("ta_booking_due", date_field="starts_at", condition=confirmed),
        EventDefinition("ta_booking_reminder", date_field="starts_at", offset=-HOUR),
    )
    starts_at: dt.datetime | None = None
    status: str = "pending"
    note: str = ""


class TaNoCatchUp(BaseModel):
    _events = (EventDefinition("ta_no_catch_up", date_field="at", catch_up=False),)
    at: dt.datetime | None = None


class TaFlag(BaseModel):
    """Immediate events: on a transition, always while it holds, with an async condition."""

    _events = (
        EventDefinition("ta_flag_raised", condition=lambda f: f.raised),
        EventDefinition("ta_flag_hot", condition=lambda f: f.heat >= 5, fire="always"),
        EventDefinition("ta_flag_vip", condition=is_vip),
    )
    raised: bool = False
    heat: int = 0
    vip: bool = False


# --- EventDefinition ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"name": ""}, ValueError, "EventDefinition name"),
        ({"name": "has space"}, ValueError, "EventDefinition name"),
        ({"name": "wild.*"}, ValueError, "EventDefinition name"),
        ({"name": 5}, TypeError, "EventDefinition name"),
        ({"name": "e", "condition": "status == 'confirmed'"}, TypeError, "condition must be callable"),
        ({"name": "e", "date_field": ""}, TypeError, "date_field must be a field name"),
        ({"name": "e", "date_field": 3}, TypeError, "date_field must be a field name"),
        ({"name": "e", "offset": HOUR}, ValueError, "offset applies to scheduled events"),
        ({"name": "e", "date_field": "at", "offset": 3600}, TypeError, "offset must be a timedelta"),
        ({"name": "e", "fire": "sometimes"}, ValueError, "fire must be 'transition' or 'always'"),
        ({"name": "e", "date_field": "at", "fire": "always"}, ValueError, "fire='always' applies to immediate"),
        ({"name": "e", "date_field": "at", "catch_up": "no"}, TypeError, "catch_up must be a bool"),
    ],
)
def test_event_definition_refuses_bad_arguments_when_made(kwargs, error, words):
    # When an EventDefinition is made with a bad argument
    # Then it is refused at once, naming what was wrong
    with pytest.raises(error, match=words):
        EventDefinition(**kwargs)


def test_event_definition_kinds():
    # Given an immediate and a scheduled definition
    immediate = EventDefinition("e1", condition=confirmed, fire="always")
    scheduled = EventDefinition("e2", date_field="at", offset=-HOUR, catch_up=False)
    # Then only the one with a date field is scheduled
    assert not immediate.scheduled
    assert scheduled.scheduled


# --- class definition ---------------------------------------------------------------


def test_a_date_field_naming_no_field_is_refused_when_the_class_is_defined():
    with pytest.raises(ValueError, match=r"TaNoField._events: 'e' has date_field 'start', which is no field"):

        class TaNoField(BaseModel):
            _events = (EventDefinition("e", date_field="start"),)
            starts_at: dt.datetime | None = None


def test_the_id_is_no_date_field():
    with pytest.raises(ValueError, match="which is no field"):

        class TaIdDate(BaseModel):
            _events = (EventDefinition("e", date_field="id"),)


@pytest.mark.parametrize("annotation", [str, int, dt.date, "str | None", "datetime | int"])
def test_a_date_field_that_holds_no_datetime_is_refused_when_the_class_is_defined(annotation):
    kind = eval(annotation, {"datetime": dt.datetime}) if isinstance(annotation, str) else annotation
    with pytest.raises(TypeError, match=r"'e' has date_field 'when'.*needs a datetime field"):
        types.new_class(
            "TaNotADate",
            (BaseModel,),
            exec_body=lambda ns: ns.update(
                {"_events": (EventDefinition("e", date_field="when"),), "__annotations__": {"when": kind}}
            ),
        )


def test_a_definition_name_used_twice_on_one_model_is_refused():
    with pytest.raises(ValueError, match=r"TaTwice._events: the event 'e' is declared twice"):

        class TaTwice(BaseModel):
            _events = (
                EventDefinition("e", condition=confirmed),
                EventDefinition("e", date_field="at"),
            )
            at: dt.datetime | None = None
            status: str = ""


def test_a_name_that_is_neither_an_action_nor_a_definition_is_refused():
    with pytest.raises(ValueError, match="unknown"):

        class TaUnknown(BaseModel):
            _events = ("created", "confirmed")


@pytest.mark.parametrize(
    "annotation",
    [
        dt.datetime,
        dt.datetime | None,
        Optional[dt.datetime],  # noqa: UP045 - the spelling users still write
        Annotated[dt.datetime, pydantic.Field(description="when")],
        Annotated[dt.datetime | None, "a note"],
        pydantic.AwareDatetime,
        pydantic.AwareDatetime | None,
        pydantic.FutureDatetime,
    ],
    ids=["datetime", "datetime|None", "Optional", "Annotated", "Annotated|None", "Aware", "Aware|None", "Future"],
)
def test_datetime_fields_are_accepted_as_date_fields(annotation, request):
    # Given a model whose date field is a datetime, however spelled
    name = "TaDate" + request.node.callspec.id.replace("|", "Or")
    model = types.new_class(
        name,
        (BaseModel,),
        exec_body=lambda ns: ns.update(
            {
                "_events": (EventDefinition(f"ta_{name.lower()}", date_field="when"),),
                "__annotations__": {"when": annotation},
            }
        ),
    )
    # Then the class is defined with its scheduled event
    assert list(model.__event_definitions__) == [f"ta_{name.lower()}"]


def test_declared_names_and_their_announcements_are_defined_events():
    # Given TaBooking (defined above) declares scheduled events and TaFlag immediate ones
    # Then their names are in the event registry, with <name>:created/:cancelled for the scheduled ones
    for name in ("ta_booking_due", "ta_booking_due:created", "ta_booking_due:cancelled", "ta_flag_raised"):
        assert name in earnevents.registry, name
    assert "ta_flag_raised:created" not in earnevents.registry


# --- due times ----------------------------------------------------------------------


def holding(value: Any) -> Any:
    return types.SimpleNamespace(at=value)


@pytest.mark.parametrize(
    ("offset", "shift_ms"),
    [(None, 0), (-dt.timedelta(hours=24), -86_400_000), (dt.timedelta(minutes=90), 5_400_000)],
)
def test_due_is_the_date_plus_the_offset_in_unix_milliseconds(offset, shift_ms):
    at = dt.datetime(2026, 12, 24, 15, 30, 5, 250_000, tzinfo=UTC)
    definition = EventDefinition("e", date_field="at", offset=offset)
    assert definition.due_ms(holding(at)) == ms(at) + shift_ms


def test_a_naive_date_is_taken_as_utc_and_another_zone_is_converted():
    definition = EventDefinition("e", date_field="at")
    aware = dt.datetime(2026, 12, 24, 15, 30, tzinfo=UTC)
    paris = aware.astimezone(dt.timezone(dt.timedelta(hours=1)))
    assert definition.due_ms(holding(aware.replace(tzinfo=None))) == ms(aware)
    assert definition.due_ms(holding(paris)) == ms(aware)


def test_due_counts_whole_milliseconds_truncated():
    definition = EventDefinition("e", date_field="at")
    at = dt.datetime(2026, 12, 24, 15, 30, 0, 123_999, tzinfo=UTC)
    assert definition.due_ms(holding(at)) == ms(at.replace(microsecond=123_000))


def test_due_is_the_same_for_the_date_as_written_and_as_mongodb_gives_it_back():
    # Given an offset with a fraction of a millisecond, and a date MongoDB will store truncated
    definition = EventDefinition("e", date_field="at", offset=dt.timedelta(microseconds=1_500))
    written = dt.datetime(2026, 12, 24, 15, 30, 0, 999, tzinfo=UTC)
    reloaded = written.replace(microsecond=0)
    # Then the writer and the worker (which reloads the document) compute the same due time
    assert definition.due_ms(holding(written)) == definition.due_ms(holding(reloaded))


def test_no_due_without_a_date_and_a_type_error_for_a_non_datetime():
    definition = EventDefinition("e", date_field="at")
    assert definition.due_ms(holding(None)) is None
    assert definition.due_ms(holding(MISSING)) is None
    with pytest.raises(TypeError, match="at holds a str, not a datetime"):
        definition.due_ms(holding("2026-12-24"))


async def test_due_if_holds_needs_the_condition_plain_or_async():
    plain = EventDefinition("e", date_field="at", condition=confirmed)
    asynchronous = EventDefinition("e", date_field="at", condition=is_vip)
    at = dt.datetime(2026, 12, 24, tzinfo=UTC)
    assert await plain.due_if_holds(types.SimpleNamespace(at=at, status="confirmed")) == ms(at)
    assert await plain.due_if_holds(types.SimpleNamespace(at=at, status="pending")) is None
    assert await asynchronous.due_if_holds(types.SimpleNamespace(at=at, vip=True)) == ms(at)
    assert await asynchronous.due_if_holds(types.SimpleNamespace(at=at, vip=False)) is None


# --- writes and the schedule --------------------------------------------------------


async def pending(name: str) -> list[Any]:
    return await earnevents.event_bus.get_scheduled(event_name=name)


def on_queue(rclient, queue, name):
    """The events of that name the writes put on the queue (no worker takes them here)."""
    return [event for event in queued(rclient, queue) if event.name == name]


@pytest.mark.mongo
async def test_create_with_a_date_and_the_condition_schedules_one_occurrence(models_env, rclient, queue):
    # Given a confirmed booking starting in an hour
    starts = utcnow() + HOUR
    # When it is created
    booking = await TaBooking(starts_at=starts, status="confirmed").create()
    # Then one occurrence of each scheduled event is pending, for that document, at its time
    [due] = await pending("ta_booking_due")
    assert due.entity == EntityRef("TaBooking", str(booking.id))
    assert due.handler == keys.OCCURRENCE_HANDLER
    assert due.event.metadata["occurrence"] == {"definition": "ta_booking_due", "due_ms": ms(starts)}
    assert abs(due.due_at - starts) < dt.timedelta(milliseconds=1)
    [reminder] = await pending("ta_booking_reminder")
    assert reminder.entity == EntityRef("TaBooking", str(booking.id))
    assert reminder.event.metadata["occurrence"]["due_ms"] == ms(starts - HOUR)
    # And the occurrence's creation is announced on the queue
    [created] = on_queue(rclient, queue, "ta_booking_due:created")
    assert created.data == {"id": str(booking.id), "due_at": created.data["due_at"], "previous_due_at": None}
    assert ms(created.data["due_at"]) == ms(starts)
    assert created.entity_ref == EntityRef("TaBooking", str(booking.id))
    assert created.sender == "TaBooking"


@pytest.mark.mongo
async def test_moving_the_date_moves_the_one_pending_occurrence(models_env, rclient, queue):
    # Given a confirmed booking scheduled in an hour
    first = utcnow() + HOUR
    booking = await TaBooking(starts_at=first, status="confirmed").create()
    # When its date moves twice
    second = first + HOUR
    booking.starts_at = second
    await booking.save()
    third = first + 3 * HOUR
    booking.starts_at = third
    await booking.save()
    # Then exactly one occurrence is pending, at the last date
    [due] = await pending("ta_booking_due")
    assert due.event.metadata["occurrence"]["due_ms"] == ms(third)
    assert due.entity == EntityRef("TaBooking", str(booking.id))
    assert await earnevents.event_bus.count_scheduled() == 2  # and the reminder, also moved
    # And each move was announced with the time it moved from
    moves = on_queue(rclient, queue, "ta_booking_due:created")
    assert [(ms(e.data["due_at"]), e.data["previous_due_at"] and ms(e.data["previous_due_at"])) for e in moves] == [
        (ms(first), None),
        (ms(second), ms(first)),
        (ms(third), ms(second)),
    ]


@pytest.mark.mongo
async def test_the_condition_gates_the_occurrence_both_ways(models_env, rclient, queue):
    # Given a pending (not confirmed) booking with a date
    starts = utcnow() + HOUR
    booking = await TaBooking(starts_at=starts).create()
    # Then its gated event is not scheduled (the reminder, without a condition, is)
    assert await pending("ta_booking_due") == []
    assert len(await pending("ta_booking_reminder")) == 1
    # When it is confirmed, one occurrence is scheduled
    booking.status = "confirmed"
    await booking.save()
    assert len(await pending("ta_booking_due")) == 1
    # When it stops being confirmed, it is cancelled, and that is announced with the reason
    booking.status = "cancelled"
    await booking.save()
    assert await pending("ta_booking_due") == []
    [cancelled] = on_queue(rclient, queue, "ta_booking_due:cancelled")
    assert cancelled.data == {"id": str(booking.id), "due_at": cancelled.data["due_at"], "reason": "condition"}
    assert ms(cancelled.data["due_at"]) == ms(starts)
    assert cancelled.entity_ref == EntityRef("TaBooking", str(booking.id))
    assert len(await pending("ta_booking_reminder")) == 1


@pytest.mark.mongo
async def test_clearing_the_date_and_deleting_cancel_the_occurrences(models_env, rclient, queue):
    # Given two confirmed bookings, each with both occurrences pending
    starts = utcnow() + HOUR
    cleared = await TaBooking(starts_at=starts, status="confirmed").create()
    deleted = await TaBooking(starts_at=starts, status="confirmed").create()
    assert await earnevents.event_bus.count_scheduled() == 4
    # When one's date is cleared and the other is deleted
    cleared.starts_at = None
    await cleared.save()
    await deleted.delete()
    # Then none is pending
    assert await earnevents.event_bus.count_scheduled() == 0
    # And each cancellation was announced with its reason
    reasons = {
        (e.name, e.data["id"], e.data["reason"]) for e in queued(rclient, queue) if e.name.endswith(":cancelled")
    }
    assert reasons == {
        ("ta_booking_due:cancelled", str(cleared.id), "date_cleared"),
        ("ta_booking_reminder:cancelled", str(cleared.id), "date_cleared"),
        ("ta_booking_due:cancelled", str(deleted.id), "deleted"),
        ("ta_booking_reminder:cancelled", str(deleted.id), "deleted"),
    }


@pytest.mark.mongo
async def test_a_write_that_leaves_the_due_time_alone_schedules_nothing_again(models_env, rclient, queue):
    # Given a confirmed booking with its occurrences pending
    booking = await TaBooking(starts_at=utcnow() + HOUR, status="confirmed").create()
    before = await earnevents.event_bus.get_scheduled()
    announcements = len(queued(rclient, queue))
    # When it is saved unchanged, then with only an unrelated field changed
    assert await booking.save() == []
    booking.note = "late arrival"
    assert await booking.save() == ["note"]
    # Then the same occurrences are pending, and nothing more was announced
    assert await earnevents.event_bus.get_scheduled() == before
    assert len(queued(rclient, queue)) == announcements


@pytest.mark.mongo
async def test_a_past_due_time_is_scheduled_at_once_unless_catch_up_is_off(models_env, rclient, queue):
    # Given dates already past when written
    past = utcnow() - dt.timedelta(minutes=5)
    # When a booking (catch_up on, the default) is created with one
    booking = await TaBooking(starts_at=past, status="confirmed").create()
    # Then its occurrence is pending, due in the past: the worker fires it at once
    [due] = await pending("ta_booking_due")
    assert due.entity == EntityRef("TaBooking", str(booking.id))
    assert due.due_at <= utcnow()
    # When a model with catch_up=False is created with one, and another is moved into the past
    await TaNoCatchUp(at=past).create()
    moved = await TaNoCatchUp(at=utcnow() + HOUR).create()
    assert len(await pending("ta_no_catch_up")) == 1
    moved.at = past
    await moved.save()
    # Then none of those is pending
    assert await pending("ta_no_catch_up") == []
    [cancelled] = on_queue(rclient, queue, "ta_no_catch_up:cancelled")
    assert cancelled.data["reason"] == "past"


@pytest.mark.mongo
async def test_occurrences_are_kept_per_document(models_env):
    # Given two confirmed bookings at different times
    one = await TaBooking(starts_at=utcnow() + HOUR, status="confirmed").create()
    two = await TaBooking(starts_at=utcnow() + 2 * HOUR, status="confirmed").create()
    # When one of them is cancelled
    one.status = "cancelled"
    await one.save()
    # Then the other's occurrence stays
    [due] = await pending("ta_booking_due")
    assert due.entity == EntityRef("TaBooking", str(two.id))


# --- immediate events on the queue --------------------------------------------------


@pytest.mark.mongo
async def test_an_immediate_event_is_published_on_the_conditions_transitions(models_env, rclient, queue):
    # Given a flag created raised: published once
    flag = await TaFlag(raised=True).create()
    assert len(on_queue(rclient, queue, "ta_flag_raised")) == 1
    # When it is saved still raised, nothing more
    flag.heat = 1
    await flag.save()
    assert len(on_queue(rclient, queue, "ta_flag_raised")) == 1
    # When it is lowered, nothing; raised again: a second one
    flag.raised = False
    await flag.save()
    assert len(on_queue(rclient, queue, "ta_flag_raised")) == 1
    flag.raised = True
    await flag.save()
    first, second = on_queue(rclient, queue, "ta_flag_raised")
    assert first.data["heat"] == 0 and second.data["heat"] == 1
    # When it is deleted, nothing
    await flag.delete()
    assert len(on_queue(rclient, queue, "ta_flag_raised")) == 2
    assert await earnevents.event_bus.count_scheduled() == 0


@pytest.mark.mongo
async def test_fire_always_publishes_after_every_write_while_it_holds(models_env, rclient, queue):
    flag = await TaFlag(heat=5).create()
    flag.heat = 6
    await flag.save()
    flag.heat = 1
    await flag.save()
    flag.heat = 9
    await flag.save()
    assert [e.data["heat"] for e in on_queue(rclient, queue, "ta_flag_hot")] == [5, 6, 9]


@pytest.mark.mongo
async def test_an_async_condition_is_awaited(models_env, rclient, queue):
    await TaFlag(vip=False).create()
    vip = await TaFlag(vip=True).create()
    [event] = on_queue(rclient, queue, "ta_flag_vip")
    assert event.data["id"] == str(vip.id)


@pytest.mark.mongo
async def test_an_immediate_event_carries_the_models_data_sender_and_entity(models_env, rclient, queue):
    flag = await TaFlag(raised=True, heat=2).create()
    [event] = on_queue(rclient, queue, "ta_flag_raised")
    assert event.data == {"id": str(flag.id), "raised": True, "heat": 2, "vip": False}
    assert event.sender == "TaFlag"
    assert event.metadata["entity"] == {"model": "TaFlag", "id": str(flag.id)}
    assert event.entity_ref == EntityRef("TaFlag", str(flag.id))


# --- strict mode --------------------------------------------------------------------


@pytest.mark.mongo
async def test_strict_mode_accepts_the_declared_events(redis_url, mongo_url, mongo_db, queue, rclient):
    # Given earnevents in strict mode (undefined event names are refused at publish)
    await earnevents.init(
        mongo_uri=mongo_url,
        database=mongo_db,
        redis_uri=redis_url,
        event_config={"queue_name": queue, "retry_policy": FAST_RETRIES, "strict": True},
    )
    try:
        # When models publish their declared events and announcements
        booking = await TaBooking(starts_at=utcnow() + HOUR, status="confirmed").create()
        booking.status = "cancelled"
        await booking.save()
        await TaFlag(raised=True).create()
        # Then they were accepted
        names = [e.name for e in queued(rclient, queue)]
        assert sorted(names) == sorted(
            [
                "ta_booking_due:created",
                "ta_booking_reminder:created",
                "ta_booking_due:cancelled",
                "ta_flag_raised",
            ]
        )
        with pytest.raises(earnevents.UndefinedEventError):
            await earnevents.event_bus.publish(earnevents.Event(name="ta_not_declared", data={}))
    finally:
        await earnevents.close()


def test_the_apps_own_define_event_replaces_what_a_model_defined_for_its_name():
    # Given a model declaring an event, imported before the app defines that event
    class TaDeclaredFirst(BaseModel):
        _events = (EventDefinition("ta_declared_first", condition=confirmed),)
        status: str = ""

    assert earnevents.registry["ta_declared_first"].metadata == {"declared_by_model": True}
    # When the app defines it with a description of its own
    mine = earnevents.define_event("ta_declared_first", description="a booking was confirmed")
    # Then that is the definition, and a model declaring it afterwards keeps it
    assert earnevents.registry["ta_declared_first"] is mine

    class TaDeclaredAfter(BaseModel):
        _events = (EventDefinition("ta_declared_first", condition=confirmed),)
        status: str = ""

    assert earnevents.registry["ta_declared_first"] is mine
    # And defining it differently again is still refused
    with pytest.raises(earnevents.EventDefinitionError, match="already defined"):
        earnevents.define_event("ta_declared_first", description="something else")


# --- event.entity() -----------------------------------------------------------------


async def test_entity_of_an_event_about_no_document_is_a_value_error():
    event = earnevents.Event(name="ta_plain", data={"id": "0" * 24})
    assert event.entity_ref is None
    with pytest.raises(ValueError, match="names no entity"):
        await event.entity()


async def test_entity_of_a_model_not_imported_is_an_unknown_model_error():
    event = earnevents.Event(name="ta_x", data={}, metadata={"entity": {"model": "TaNowhere", "id": "0" * 24}})
    assert event.entity_ref == EntityRef("TaNowhere", "0" * 24)
    with pytest.raises(UnknownModelError, match="no model class named 'TaNowhere'"):
        await event.entity()


@pytest.mark.mongo
async def test_entity_loads_the_document_of_declared_automatic_and_dispatched_events(models_env, rclient, queue):
    # Given events about one document: declared, and dispatched through dispatch_model_event
    flag = await TaFlag(raised=True).create()
    await earnevents.dispatch_model_event(earnevents.event_bus, TaFlag, "inspected", str(flag.id), flag)
    declared, dispatched = queued(rclient, queue)
    # Then entity() loads it as a TaFlag for each
    assert await declared.entity() == flag
    assert await dispatched.entity() == flag
    loaded = await dispatched.entity()
    assert isinstance(loaded, TaFlag) and loaded.is_stored
    # When the document is deleted, entity() finds nothing
    await flag.delete()
    assert await declared.entity() is None
    assert await dispatched.entity() is None
