"""The model and handler of bench/chaos_automations.py: a Booking due at ``at`` while confirmed.

The handler counts every firing per occurrence (``<booking id>:<due ms>``) and keeps the
time of the first, for the latency.
"""

from __future__ import annotations

import datetime as dt
import time

from earnevents import BaseModel, Event, EventDefinition, on_event, runtime

FIRED = "chaos-automations:fired"
"""Hash: ``<booking id>:<due ms>`` -> how many times booking.due ran for it."""
FIRST_AT = "chaos-automations:first-at"
"""Hash: ``<booking id>:<due ms>`` -> unix ms when booking.due first ran for it."""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def to_ms(value: dt.datetime) -> int:
    """Unix milliseconds, counted as EventDefinition.due_ms counts them (naive: UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


class Booking(BaseModel):
    _collection = "chaos_bookings"
    _events = (EventDefinition("booking.due", date_field="at", condition=lambda b: b.status == "confirmed"),)

    at: dt.datetime | None = None
    status: str = "pending"


@on_event("booking.due")
async def booking_due(event: Event) -> None:
    now_ms = int(time.time() * 1000)
    field = f"{event.data['id']}:{to_ms((event.metadata or {})['due_at'])}"
    client = runtime.current().redis
    await client.hsetnx(FIRST_AT, field, now_ms)
    await client.hincrby(FIRED, field, 1)
