"""FailedJob: what is kept of a (event, handler) job whose retries ran out."""

from __future__ import annotations

import datetime as dt
import json
import traceback as tb
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..event import Event


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def describe(exc: BaseException) -> str:
    """``"ExcType: message"``, even for an exception whose ``__str__`` (or ``__repr__``) raises."""
    name = type(exc).__name__
    try:
        return f"{name}: {exc}"
    except Exception as str_error:  # a broken __str__ must not make the failure unrecordable
        try:
            return f"{name}: {exc!r}"
        except Exception:
            return f"{name}: <unprintable: its __str__ raised {type(str_error).__name__}>"


def _format_traceback(exc: BaseException) -> str:
    """The traceback as Python prints it: files, lines, code, messages; never the frames'
    local variables (no ``capture_locals``), which may hold passwords or tokens."""
    try:
        return "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # formatting calls into the exception; keep what can be had
        return describe(exc)


@dataclass(frozen=True)
class FailedJob:
    """One handler that kept failing for one event, with everything needed to retry it."""

    event: Event
    handler: str
    """Dotted name of the handler, e.g. ``myapp.handlers.send_welcome``."""
    error: str
    """``"ExcType: message"`` of the last failure."""
    traceback: str
    attempts: int
    """How many times the handler ran for this event before giving up."""
    queue: str
    failed_at: dt.datetime = field(default_factory=_utcnow)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def from_exception(
        cls, event: Event, handler: str, exc: BaseException, attempts: int, queue: str, job_id: str | None = None
    ) -> FailedJob:
        """Record ``exc``; pass ``job_id`` to make recording the same failure twice idempotent."""
        return cls(
            id=job_id or uuid.uuid4().hex,
            event=event,
            handler=handler,
            error=describe(exc),
            traceback=_format_traceback(exc),
            attempts=attempts,
            queue=queue,
        )

    def to_doc(self) -> dict[str, Any]:
        """Storable form: JSON-safe except ``failed_at``, a real datetime (indexable, TTL-able)."""
        return {
            "_id": self.id,
            "event": self.event.to_wire(),
            "event_name": self.event.name,
            "handler": self.handler,
            "error": self.error,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "queue": self.queue,
            "failed_at": self.failed_at,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> FailedJob:
        failed_at = doc["failed_at"]
        if isinstance(failed_at, str):
            failed_at = dt.datetime.fromisoformat(failed_at)
        if failed_at.tzinfo is None:  # a Mongo client without tz_aware
            failed_at = failed_at.replace(tzinfo=dt.timezone.utc)
        event = doc["event"]
        if isinstance(event, str):  # stored as its JSON wire form (BSON refused the event)
            event = json.loads(event)
        return cls(
            id=doc["_id"],
            event=Event.from_wire(event),
            handler=doc["handler"],
            error=doc["error"],
            traceback=doc["traceback"],
            attempts=doc["attempts"],
            queue=doc["queue"],
            failed_at=failed_at,
        )
