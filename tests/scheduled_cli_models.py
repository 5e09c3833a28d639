"""A model with a scheduled event, imported by `earnevents scheduled rebuild` in the CLI
tests (EARNEVENTS_HANDLER_MODULES=scheduled_cli_models) and by the tests themselves."""

from __future__ import annotations

import datetime as dt

from earnevents import BaseModel, EventDefinition


class Appointment(BaseModel):
    _events = (EventDefinition("appointment_due", date_field="starts_at", condition=lambda a: a.status == "booked"),)

    starts_at: dt.datetime | None = None
    status: str = "booked"
