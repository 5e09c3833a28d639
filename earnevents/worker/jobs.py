"""What the worker's dispatch works on: a message's jobs, their outcomes, and the
protocols for where async work runs (:class:`Loop`) and where the bookkeeping goes
(:class:`Bookkeeper`). Free of Celery and of any I/O.

A job is one (event, handler) pair; a message carries the jobs of one event (or
of several, when packed), or one job (a retry).
"""

from __future__ import annotations

import time
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .. import message
from ..context import JobContext
from ..event import Event
from ..handlers import HandlerRegistry
from ..retry import RetryCaps, RetryPolicy

T = TypeVar("T")


COMPLETED = 0
"""A claim result (see :meth:`Bookkeeper.claim`): the job completed before; skip it."""

HELD = -1
"""A claim result: another copy of the message runs the job right now; skip it."""

SETTLED = -2
"""A claim result: this message settled the job as failed before (retry scheduled or failure
recorded; the message came back because its acknowledgement was lost); skip it."""

FRESH = 1
"""A claim result: claimed now, counted as the job's first start. Above it: this
message's own claim taken over (its worker died), the number the next start would be."""


class Loop(Protocol):
    """Where async work runs: the worker's per-process loop thread."""

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]: ...

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T: ...


@dataclass(frozen=True)
class Outcome:
    """How one handler fared: ``error`` is None on success."""

    handler: str
    error: BaseException | None = None
    recorded: bool = False
    """A success already remembered as completed (so a redelivery skips it)."""
    at: float = field(default_factory=time.time, compare=False)
    """When the try ended (unix seconds): the event log's ``finished_at``."""


@dataclass(frozen=True)
class Job:
    """One message: an event for all its handlers, or for one (a retry)."""

    event: Event
    handler: str | None
    attempt: int
    retry_policy: RetryPolicy | None
    queue: str
    handler_timeout: float | None = None
    """The worker's timeout for handlers that set none of their own (None: no limit)."""
    copy_id: str = ""
    """This copy of the message (``message.COPY_ID``): the same on every redelivery, another
    for another message of the same event; it owns the claims on the message's jobs."""
    deliveries: Mapping[str, int] = field(default_factory=dict)
    """Handler -> in how many deliveries of this message it started, this one included (set by the claim)."""

    @classmethod
    def from_message(
        cls,
        event: Mapping[str, Any],
        kwargs: Mapping[str, Any],
        queue: str,
        registry: HandlerRegistry | None = None,
        handler_timeout: float | None = None,
        copy_id: str = "",
        retry_caps: RetryCaps | None = None,
        decoded: Event | None = None,
    ) -> Job:
        """Decode the task's arguments; ValueError/TypeError when they are malformed.

        ``decoded``: ``event`` as :meth:`Event.from_wire` already decoded it (the consumer's
        item check did), not decoded again.

        With ``registry``, a retry naming a handler none of whose names or patterns
        match the message's event is malformed too (it must not run on this event). The
        message's retry policy is held within ``retry_caps`` (the worker's
        EARNEVENTS_MAX_RETRIES_CAP and EARNEVENTS_MIN_RETRY_INTERVAL; None: only
        the policy bounds), and a retry message built from this job carries it so.
        """
        handler = kwargs.get("handler")
        attempt = kwargs.get("attempt", 0)
        if handler is not None and not isinstance(handler, str):
            raise TypeError(f"handler must be a str, got {type(handler).__name__}")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ValueError(f"attempt must be an int >= 0, got {attempt!r}")
        if not isinstance(event, Mapping):
            raise TypeError(f"event must be a dict, got {type(event).__name__}")
        if decoded is None:
            decoded = Event.from_wire(event)
        if handler is not None and registry is not None:
            if registry.subscribed(handler, decoded.name) is False:
                subscribed = ", ".join(repr(h.event_name) for h in registry.handlers() if h.name == handler)
                raise ValueError(f"handler {handler} is subscribed to {subscribed}, not to {decoded.name!r}")
        return cls(
            event=decoded,
            handler=handler,
            attempt=attempt,
            retry_policy=RetryPolicy.from_message(kwargs.get("retry_policy"), retry_caps or RetryCaps()),
            queue=queue,
            handler_timeout=handler_timeout,
            copy_id=copy_id,
        )


class Bookkeeper(Protocol):
    """The worker's Redis/Mongo side of handling a message."""

    max_deliveries: int
    """Deliveries a job may die in before it is recorded as failed instead of run."""

    async def claim(self, jobs: list[tuple[Job, list[str]]]) -> list[dict[str, int]]:
        """Atomically claim the jobs (event, handler) of one message before running any.

        One entry per job, mapping each handler to :data:`COMPLETED`, :data:`HELD`,
        :data:`SETTLED`, :data:`FRESH`, or (the same message back after its worker died) the number
        its next start would be: the claimed jobs run, the others are skipped.
        """

    async def started(self, job: Job, handler: str, starts: int) -> None:
        """Record that a taken-over job starts for the ``starts``-th time, before it runs."""

    async def completed(self, job: Job, handler: str) -> None:
        """Remember that ``handler`` completed for this event, ending its claim (may raise; settle retries)."""

    async def settle(self, job: Job, outcomes: list[Outcome]) -> None:
        """Remember unrecorded successes; end the failures' claims, schedule retries for or record them."""


class BlockingBookkeeper(Protocol):
    """What a :class:`Bookkeeper` may also offer: its claim and completion record from the
    calling thread, blocking. A task thread running plain ``def`` handlers then claims,
    runs and records without a hop to the loop (without it, each is a ``Loop.run``)."""

    def claim_blocking(self, jobs: list[tuple[Job, list[str]]]) -> list[dict[str, int]] | None:
        """:meth:`Bookkeeper.claim` in this thread, one try; None when the store failed (then
        ``claim`` runs on the loop, with its retries). Anything else it raises propagates."""

    def completed_blocking(self, job: Job, handler: str) -> bool:
        """:meth:`Bookkeeper.completed` in this thread; False when the store failed (then
        ``settle`` remembers it). Anything else it raises propagates."""


def job_context(job: Job, handler: str) -> JobContext:
    """What ``earnevents.current_job()`` returns inside ``handler`` for this message."""
    return JobContext(
        job_id=message.derived_id("job", job.event.id, handler, 0),
        event_id=job.event.id,
        handler=handler,
        attempt=job.attempt + 1,
        queue=job.queue,
        deliveries=job.deliveries.get(handler, 1),
    )
