"""Which failed jobs an operator means: filters the stores do not index (error text, time
window), applied to pages the stores list, newest first.

The stores filter by event name and handler themselves; ``JobSelection`` adds a
substring of the error text and a failure-time window on top, so an operator can say
"the jobs that failed with ConnectionError since 9:00". Matching is done here, over
pages, rather than in each store: both stores page newest first, so a ``since`` bound
ends the walk early, and a filter written once holds for both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from .record import FailedJob

PAGE = 500
"""Jobs asked of the store per round trip while walking the list."""


@dataclass(frozen=True)
class JobSelection:
    """Failed jobs of one event name and/or handler (compared as they are), whose error
    text contains ``error``, that failed from ``since`` to ``until`` (both inclusive)."""

    event_name: str | None = None
    handler: str | None = None
    error: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def __post_init__(self) -> None:
        for name in ("event_name", "handler", "error"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, dt.datetime) or value.tzinfo is None):
                raise ValueError(f"{name} must be a timezone-aware datetime")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError(f"since ({self.since.isoformat()}) is after until ({self.until.isoformat()})")

    @property
    def indexed_only(self) -> bool:
        """True when the store's own filters say it all (its count is the answer)."""
        return self.error is None and self.since is None and self.until is None

    def matches(self, job: FailedJob) -> bool:
        if self.event_name is not None and job.event.name != self.event_name:
            return False
        if self.handler is not None and job.handler != self.handler:
            return False
        if self.error is not None and self.error not in job.error:
            return False
        if self.since is not None and job.failed_at < self.since:
            return False
        return self.until is None or job.failed_at <= self.until


ListPage = Callable[[int, int, str | None, str | None], Awaitable[list[FailedJob]]]
"""``(limit, offset, event_name, handler)`` -> jobs newest first, as ``event_bus.get_failed_jobs``."""


async def walk(list_page: ListPage, selection: JobSelection, page: int | None = None) -> AsyncIterator[FailedJob]:
    """The jobs ``selection`` matches, newest first, asking ``list_page`` for ``page`` (:data:`PAGE`) at a time.

    Stops at the first job older than ``since``: the list is newest first. Jobs removed
    while walking may shift a page, so one may be missed or seen twice (each id is
    yielded once); take the ids first when acting on them.
    """
    page = page or PAGE
    seen: set[str] = set()
    offset = 0
    while True:
        jobs = await list_page(page, offset, selection.event_name, selection.handler)
        for job in jobs:
            if selection.since is not None and job.failed_at < selection.since:
                return
            if job.id not in seen and selection.matches(job):
                seen.add(job.id)
                yield job
        if len(jobs) < page:
            return
        offset += len(jobs)
