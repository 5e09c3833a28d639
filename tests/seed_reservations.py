"""Seed 003 §1-2's Reservation, written as its users write it with earnevents (the README's
"Model automations" example): the model, its events, and single-step automations with
``@on_event``, in one application module. Its handlers' side effect ("send an email",
"prepare the room") is a line in the Redis list ``outbox:<reservation id>``, which
tests/test_automations_seed_e2e.py reads.

``python -m seed_reservations CHECKIN_IN_SECONDS`` is the application's side: it books and
confirms one reservation, books and then cancels another, and prints their ids as JSON.
A separate process from the test's, as the web app is from its workers (and so this
``Reservation`` does not share a process with the other tests' models of that name).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime, timedelta, timezone

from earnevents import BaseModel, Event, EventDefinition, on_event, on_event_cancelled, on_event_created, runtime


class Reservation(BaseModel):
    _events = (
        "created",
        # Immediate: occurs after the write if the condition is true (and was not before)
        EventDefinition("reservation_confirmed", condition=lambda r: r.status == "confirmed"),
        # Scheduled: occurs at checkin_at, still gated by the condition
        EventDefinition("checkin_due", date_field="checkin_at", condition=lambda r: r.status == "confirmed"),
        # Scheduled a day before check-in
        EventDefinition("checkin_reminder", date_field="checkin_at", offset=timedelta(hours=-24)),
    )
    checkin_at: datetime
    status: str = "pending"


async def send(what: str, event: Event, reservation: Reservation | None) -> None:
    """The side effect: one line in the reservation's outbox."""
    ref = event.entity_ref
    assert ref is not None
    line = {
        "what": what,
        "at": time.time(),
        "status": None if reservation is None else reservation.status,
        "data": {key: str(value) for key, value in event.data.items()},
    }
    await runtime.current().redis.rpush(f"outbox:{ref.id}", json.dumps(line))


@on_event(event_name="reservation_confirmed")  # entity_type optional; omit unless you want to filter
async def send_welcome_email(event: Event) -> None:
    reservation = await event.entity()  # fetches the Reservation instance
    await send("welcome_email", event, reservation)


@on_event("checkin_due", entity_type="Reservation")
async def prepare_room(event: Event) -> None:
    reservation = await event.entity()
    await send("prepare_room", event, reservation)


@on_event("checkin_reminder")
async def remind_guest(event: Event) -> None:
    await send("reminder", event, await event.entity())


@on_event_created("checkin_due")  # an occurrence was scheduled or moved
async def note_checkin(event: Event) -> None:
    await send("checkin_scheduled", event, await event.entity())


@on_event_cancelled("checkin_due")  # a pending one was withdrawn
async def unnote_checkin(event: Event) -> None:
    await send("checkin_cancelled", event, await event.entity())


async def book(checkin_in: float) -> dict[str, str]:
    """The application: earnevents configured from EARNEVENTS_* as in production."""
    import earnevents

    await earnevents.init()
    try:
        checkin = datetime.now(timezone.utc) + timedelta(seconds=checkin_in)
        kept = await Reservation(checkin_at=checkin).create()
        kept.status = "confirmed"
        await kept.save()
        dropped = await Reservation(checkin_at=checkin, status="confirmed").create()
        dropped.status = "cancelled"
        await dropped.save()
        return {"kept": str(kept.id), "dropped": str(dropped.id), "checkin": checkin.isoformat()}
    finally:
        await earnevents.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(book(float(sys.argv[1])))))
