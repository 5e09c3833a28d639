"""The protocol every failure store implements."""

from __future__ import annotations

from typing import Protocol

from .record import FailedJob
from .selection import JobSelection

DEFAULT_MAX_JOBS = 100_000
"""Failed-job records a store keeps per queue unless told otherwise (EARNEVENTS_FAILED_MAX)."""

DEFAULT_MAX_AGE = 30 * 86400.0
"""Seconds a store keeps a failed-job record unless told otherwise (EARNEVENTS_FAILED_MAX_AGE)."""


class FailureStore(Protocol):
    """Where failed jobs wait for an operator: newest first, filterable, removable.

    A store serves one queue: list and count show that queue's jobs; ids are
    unique across queues, so get, take and remove work by id alone.

    Ids and name filters are str only (TypeError otherwise, never a query operator);
    an id not of the form earnevents makes (``names.is_record_id``) is not found,
    without a query. Filters are compared as they are, never as patterns: event name
    and handler equal, error text a substring, the failure time within the window.
    Matching an error text reads records: a list or count reads at most ``max_jobs``
    of them, newest first, in the window its other filters give.

    Bounded: it keeps at most ``max_jobs`` records of the queue (adding one more
    deletes the oldest) and none older than ``max_age`` seconds (never listed or
    counted, and deleted).
    """

    max_jobs: int
    max_age: float

    async def add(self, job: FailedJob) -> None:
        """Keep ``job`` (idempotent for the same id); delete the queue's oldest beyond ``max_jobs``."""

    async def purge(
        self, older_than: float | None = None, event_name: str | None = None, handler: str | None = None
    ) -> int:
        """Delete the queue's jobs (only one event name and/or handler) that failed more than
        ``older_than`` seconds ago, or all; returns how many were deleted."""

    async def list(self, limit: int = 100, offset: int = 0, selection: JobSelection | None = None) -> list[FailedJob]:
        """Jobs newest first (then by id, descending), only those ``selection`` matches (None: all)."""

    async def count(self, selection: JobSelection | None = None) -> int:
        """How many jobs :meth:`list` would page through."""

    async def get(self, job_id: str) -> FailedJob | None:
        """The job with that id, or None."""

    async def take(self, job_id: str) -> FailedJob | None:
        """Remove and return the job; of two concurrent takers only one gets it."""

    async def remove(self, job_id: str) -> bool:
        """Delete the job; False when there was none."""
