"""Scheduled model events that `make chaos-automations` lost, made small: a booking moved
while Redis was down kept its earlier occurrence in the schedule (the MongoDB outbox keeps
the first message of an id; a relay after Redis came back overwrites what a later write
scheduled directly), so the earlier one fired, was dropped as stale, and the moved one
never fired. The worker's occurrence handler now schedules the document's current one
when a stale one comes due (unless one is pending)."""

from __future__ import annotations

import datetime as dt

import redis

from earnevents import BaseModel, Event, EventDefinition, keys, message, runtime, schedule
from earnevents.models import automations
from earnevents.worker import occurrences

pytest_plugins = ["model_fixtures"]  # the models_env fixture

UTC = dt.timezone.utc


class TcrBooking(BaseModel):
    _events = (EventDefinition("tcr_booking_due", date_field="at", condition=lambda b: b.status == "confirmed"),)
    at: dt.datetime | None = None
    status: str = "pending"


def ms(value: dt.datetime) -> int:
    return (value - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(milliseconds=1)


def pending(rclient: redis.Redis, queue: str, booking: TcrBooking) -> tuple[float, int] | None:
    """The due time (unix s) and occurrence due_ms of the booking's pending occurrence, if any."""
    member = keys.occurrence_member("TcrBooking", str(booking.id), "tcr_booking_due")
    score = rclient.zscore(keys.scheduled_zset(queue), member)
    if score is None:
        return None
    raw = rclient.hget(keys.scheduled_payloads(queue), member)
    assert isinstance(raw, bytes)
    event = Event.from_wire(message.parse(raw)[0])
    return score, event.metadata["occurrence"]["due_ms"]


def stale_occurrence(booking: TcrBooking, due_ms: int, queue: str) -> Event:
    """The occurrence message the schedule held for ``booking`` due at ``due_ms``, as the worker gets it."""
    raw = automations.occurrence_message(automations.entity_of(booking), "tcr_booking_due", due_ms, queue)
    return Event.from_wire(message.parse(raw)[0])


async def lose_pending_occurrence(booking: TcrBooking, queue: str) -> None:
    member = keys.occurrence_member("TcrBooking", str(booking.id), "tcr_booking_due")
    script_keys, argv = schedule.cancel_args(queue, member)
    await runtime.current().redis.eval(schedule.CANCEL_SCRIPT, len(script_keys), *script_keys, *argv)


async def test_a_stale_occurrence_coming_due_schedules_the_documents_current_one(models_env, rclient, queue):
    # Given a confirmed booking moved to an hour from now, whose moved occurrence was lost
    moved = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    booking = await TcrBooking(at=moved, status="confirmed").create()
    await lose_pending_occurrence(booking, queue)
    assert pending(rclient, queue, booking) is None
    # When its earlier occurrence (due a minute ago) fires
    await occurrences.fire(stale_occurrence(booking, ms(moved) - 3_660_000, queue))
    # Then the occurrence at the booking's current time is in the schedule
    assert pending(rclient, queue, booking) == (ms(moved) / 1000, ms(moved))


async def test_a_stale_occurrence_leaves_a_pending_one_and_a_cancelled_booking_alone(models_env, rclient, queue):
    # Given a confirmed booking due in an hour, its occurrence pending
    due = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    booking = await TcrBooking(at=due, status="confirmed").create()
    before = pending(rclient, queue, booking)
    # When an earlier occurrence fires: the pending one stays as it is
    await occurrences.fire(stale_occurrence(booking, ms(due) - 60_000, queue))
    assert pending(rclient, queue, booking) == before == (ms(due) / 1000, ms(due))
    # And for a booking no longer confirmed, nothing is scheduled
    booking.status = "pending"
    await booking.save()
    assert pending(rclient, queue, booking) is None
    await occurrences.fire(stale_occurrence(booking, ms(due) - 60_000, queue))
    assert pending(rclient, queue, booking) is None
