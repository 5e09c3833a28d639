"""The seed's Reservation (seed 003 §1) as earnevents users write it, shared by the
automation tests and their workers (``automation_handlers`` imports it)."""

from __future__ import annotations

import datetime as dt

from earnevents import BaseModel, EventDefinition


class Reservation(BaseModel):
    _events = (
        "created",
        # Immediate: occurs after the write if the condition is true (and was not before)
        EventDefinition("reservation_confirmed", condition=lambda r: r.status == "confirmed"),
        # Scheduled: occurs at checkin_at (still gated by the condition)
        EventDefinition("checkin_due", date_field="checkin_at", condition=lambda r: r.status == "confirmed"),
        # Scheduled, a day before check-in, whatever the status
        EventDefinition("checkin_reminder", date_field="checkin_at", offset=dt.timedelta(hours=-24)),
    )

    token: str
    checkin_at: dt.datetime | None = None
    status: str = "pending"


class Visit(BaseModel):
    """Scheduled events with a positive offset and without catch-up (seed 003 §3's
    ``offset_minutes > 0``, in seconds so tests stay short)."""

    _events = (
        # Scheduled a second after starts_at
        EventDefinition("visit_followup", date_field="starts_at", offset=dt.timedelta(seconds=1)),
        # Scheduled at starts_at; a starts_at already past when written is skipped
        EventDefinition("visit_started", date_field="starts_at", catch_up=False),
    )

    token: str
    starts_at: dt.datetime | None = None
