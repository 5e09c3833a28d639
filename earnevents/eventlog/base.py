"""The protocol every event log store implements."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Protocol

from .. import names
from .record import EVENT_STATUSES, Change, EventRecord

DEFAULT_TTL = 7 * 86400.0
"""Seconds a record is kept after its last change unless told otherwise (EARNEVENTS_EVENT_LOG_TTL)."""


class EventLogStore(Protocol):
    """Where the event log lives (MongoDB when configured, else Redis): one record per event.

    A store lists one queue's events; ids are the events' own, so ``get`` works by id
    alone. Ids and filters are str only (TypeError otherwise, never a query operator or
    a pattern); an id not of the form event ids take is not found, without a query.
    Records are kept ``ttl`` seconds after their last change.
    """

    ttl: float

    async def write(self, changes: Sequence[Change]) -> None:
        """Apply ``changes`` in order, in one round trip where the store allows."""

    async def get(self, event_id: str) -> EventRecord | None:
        """The record of that event, or None."""

    async def find(
        self,
        name: str | None = None,
        status: str | None = None,
        sender: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[EventRecord]:
        """The queue's records newest first (by publish time), filtered; ``since`` inclusive,
        ``until`` exclusive."""


def check_query(
    name: object, status: object, sender: object, since: object, until: object, limit: object, offset: object
) -> None:
    """TypeError/ValueError for find arguments a store must not see (before any query)."""
    names.check_filter(name, "name")
    names.check_filter(sender, "sender")
    if names.check_filter(status, "status") is not None and status not in EVENT_STATUSES:
        raise ValueError(f"status must be one of {', '.join(EVENT_STATUSES)}, got {status!r}")
    for what, moment in (("since", since), ("until", until)):
        if moment is None:
            continue
        if not isinstance(moment, dt.datetime):
            raise TypeError(f"{what} must be a datetime or None, got {type(moment).__name__}")
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"{what} must be timezone-aware (e.g. datetime.now(timezone.utc) - timedelta(hours=1))")
    for what, number in (("limit", limit), ("offset", offset)):
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"{what} must be an int, got {type(number).__name__}")
        if number < 0:
            raise ValueError(f"{what} must not be negative, got {number}")
