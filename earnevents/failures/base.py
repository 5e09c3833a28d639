"""The protocol every failure store implements."""

from __future__ import annotations

from typing import Protocol

from .record import FailedJob


class FailureStore(Protocol):
    """Where failed jobs wait for an operator: newest first, filterable, removable.

    A store serves one queue: list and count show that queue's jobs; ids are
    unique across queues, so get, take and remove work by id alone.

    Ids and name filters are str only (TypeError otherwise, never a query operator);
    an id not of the form earnevents makes (``names.is_record_id``) is not found,
    without a query. Filters are compared as they are, never as patterns.
    """

    async def add(self, job: FailedJob) -> None:
        """Keep ``job`` (idempotent for the same id)."""

    async def list(
        self, limit: int = 100, offset: int = 0, event_name: str | None = None, handler: str | None = None
    ) -> list[FailedJob]:
        """Jobs newest first, optionally only one event name and/or handler."""

    async def count(self, event_name: str | None = None, handler: str | None = None) -> int:
        """How many jobs :meth:`list` would page through."""

    async def get(self, job_id: str) -> FailedJob | None:
        """The job with that id, or None."""

    async def take(self, job_id: str) -> FailedJob | None:
        """Remove and return the job; of two concurrent takers only one gets it."""

    async def remove(self, job_id: str) -> bool:
        """Delete the job; False when there was none."""
