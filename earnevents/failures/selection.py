"""Which failed jobs an operator means, and walking through all of them.

``JobSelection`` names jobs by event name and handler (compared as they are), by a
substring of the error text and by a failure-time window, so an operator can say
"the jobs that failed with ConnectionError since 9:00". Both stores take a selection
and filter by all of it themselves (``FailureStore.list`` / ``count``); ``walk`` goes
through everything a selection matches, page by page, for bulk commands.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from .record import FailedJob

PAGE = 500
"""Jobs asked of the store per round trip while walking the list."""


@dataclass(frozen=True)
class JobSelection:
    """Failed jobs of one event name and/or handler (compared as they are), whose error
    text contains ``error`` (a plain substring, case-sensitive, never a pattern), that
    failed from ``since`` to ``until`` (both inclusive)."""

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

    def describe(self, nothing: str = "all of them") -> str:
        """The selection in words (names and text as ``repr``), ``nothing`` when it selects all."""
        parts = []
        if self.event_name is not None:
            parts.append(f"event {self.event_name!r}")
        if self.handler is not None:
            parts.append(f"handler {self.handler!r}")
        if self.error is not None:
            parts.append(f"error containing {self.error!r}")
        if self.since is not None:
            parts.append(f"failed since {self.since:%Y-%m-%d %H:%M:%S} UTC")
        if self.until is not None:
            parts.append(f"failed until {self.until:%Y-%m-%d %H:%M:%S} UTC")
        return ", ".join(parts) or nothing

    @property
    def indexed_only(self) -> bool:
        """True when only event name and/or handler are given (no error text, no time window)."""
        return self.error is None and self.since is None and self.until is None


def checked(selection: object) -> JobSelection:
    """``selection`` (None: everything) as a JobSelection; TypeError for anything else."""
    if selection is None:
        return JobSelection()
    if not isinstance(selection, JobSelection):
        raise TypeError(f"selection must be a JobSelection, got {type(selection).__name__}")
    return selection


class ListPage(Protocol):
    """``event_bus.get_failed_jobs``: jobs newest first (then by id, descending)."""

    async def __call__(
        self,
        limit: int,
        offset: int,
        event_name: str | None,
        handler: str | None,
        *,
        error: str | None,
        since: dt.datetime | None,
        until: dt.datetime | None,
    ) -> list[FailedJob]: ...


async def walk(list_page: ListPage, selection: JobSelection, page: int | None = None) -> AsyncIterator[FailedJob]:
    """The jobs ``selection`` matches, newest first, asking ``list_page`` for ``page`` (:data:`PAGE`) at a time.

    Pages by failure time, not by offset from the top: each page asks for the jobs that
    failed up to the last one seen (``until``), skipping only those already seen at that
    very moment. So each page costs the store what the first one does (no rescan of the
    jobs before it), however deep the walk. Jobs added or removed while walking may be
    missed or seen again (each id is yielded once); take the ids first when acting on them.
    """
    page = page or PAGE
    seen: set[str] = set()
    bound, at_bound = selection.until, 0  # jobs already seen that failed exactly at `bound`
    while True:
        jobs = await list_page(
            page,
            at_bound,
            selection.event_name,
            selection.handler,
            error=selection.error,
            since=selection.since,
            until=bound,
        )
        for job in jobs:
            if job.id not in seen:
                seen.add(job.id)
                yield job
        if len(jobs) < page:
            return
        last = jobs[-1].failed_at
        if last == bound:
            at_bound += len(jobs)
        else:
            bound, at_bound = last, sum(1 for job in jobs if job.failed_at == last)
