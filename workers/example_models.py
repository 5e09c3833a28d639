"""Example models for the demo: creating a Customer publishes ``customer.created``; a
Reservation declares a conditional event and one scheduled at its check-in time."""

from __future__ import annotations

import datetime as dt

from earnevents import BaseModel, EventDefinition
from earnevents.events.decorators import before_create


class Customer(BaseModel):
    _collection = "customers"
    _events = ("created", "updated")  # published automatically after each successful write

    name: str
    email: str
    plan: str = "free"
    signed_up_at: dt.datetime

    @before_create
    def _stamp(self) -> None:
        self.signed_up_at = dt.datetime.now(dt.timezone.utc)


class Reservation(BaseModel):
    """Seed 003's example: an event when a reservation is confirmed, and one at check-in."""

    _collection = "reservations"
    _events = (
        EventDefinition("reservation_confirmed", condition=lambda r: r.status == "confirmed"),
        EventDefinition("checkin_due", date_field="checkin_at", condition=lambda r: r.status == "confirmed"),
    )

    guest: str
    checkin_at: dt.datetime
    status: str = "pending"
