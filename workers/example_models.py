"""An example model for the demo: creating a Customer publishes ``customer.created``."""

from __future__ import annotations

import datetime as dt

from earnevents import BaseModel
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
