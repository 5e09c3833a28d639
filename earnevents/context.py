"""What a running handler can ask about its own job: ``earnevents.current_job()``.

A job is one (event, handler) pair. Its ``job_id`` stays the same across retries
and redeliveries, so it makes a good idempotency key for the handler's own side
effects (a payment provider's idempotency key, a unique index, ...).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class JobContext:
    """The job a handler is running for."""

    job_id: str
    """Stable for this (event, handler) pair across retries and redeliveries."""
    event_id: str
    handler: str
    attempt: int
    """1 on the first try, 2 on the first retry, ..."""
    queue: str
    deliveries: int = 1
    """How many times this message has been delivered to a worker that got as far as
    running this job: 1 normally, more after a worker process died while running it."""


_current: ContextVar[JobContext | None] = ContextVar("earnevents_job", default=None)


def current_job() -> JobContext:
    """The job of the handler that is running; LookupError outside a handler."""
    job = _current.get()
    if job is None:
        raise LookupError("current_job() is only available inside an event handler run by a worker")
    return job
