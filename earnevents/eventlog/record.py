"""EventRecord: what the event log keeps of one published event and of each handler it ran.

Writes are plain data (:class:`Published`, :class:`HandlerChange`, :class:`Marked`), so
the publisher (asyncio) and the worker's background writer (a thread with blocking
clients) turn the same changes into the same Redis commands or MongoDB updates. Every
change is an upsert of its own fields: they commute, so a worker's record of a handler
may land before the publisher's record of the event and nothing is lost.
"""

from __future__ import annotations

import datetime as dt
import traceback as tb
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..event import Event
from ..failures.record import describe

# Handler statuses.
PENDING = "pending"
RUNNING = "running"
RETRYING = "retrying"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
PARTIALLY_FAILED = "partially_failed"

HANDLER_STATUSES = (PENDING, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED)
EVENT_STATUSES = (PENDING, RUNNING, SUCCEEDED, FAILED, PARTIALLY_FAILED, CANCELLED)

MAX_TEXT = 10_000
"""Characters of a handler's last error and traceback the log keeps (the traceback's end)."""


def utc(timestamp: float | None) -> dt.datetime | None:
    return None if timestamp is None else dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)


def error_text(exc: BaseException) -> tuple[str, str]:
    """``("ExcType: message", traceback)``, cut to MAX_TEXT; never the frames' local variables."""
    try:
        trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # formatting calls into the exception
        trace = describe(exc)
    return describe(exc)[:MAX_TEXT], trace[-MAX_TEXT:]


def derive_status(statuses: Iterable[str], cancelled: bool, dispatched: bool) -> str:
    """The event's status from its handlers' statuses.

    cancelled (withdrawn before it was due); pending (no handler started yet); running
    (some handler running, retrying or still pending while another started); succeeded /
    failed (every handler did; an event no handler subscribes to succeeds once a worker
    took it); partially_failed (some succeeded, some failed).
    """
    if cancelled:
        return CANCELLED
    seen = set(statuses)
    if not seen:
        return SUCCEEDED if dispatched else PENDING
    if seen & {RUNNING, RETRYING}:
        return RUNNING
    if PENDING in seen:
        return PENDING if seen <= {PENDING, CANCELLED} else RUNNING
    finished = seen - {CANCELLED}
    if not finished:
        return CANCELLED
    if finished == {SUCCEEDED}:
        return SUCCEEDED
    if finished == {FAILED}:
        return FAILED
    return PARTIALLY_FAILED


@dataclass(frozen=True)
class HandlerRecord:
    """One handler's part in one event."""

    handler: str
    """Dotted name of the handler."""
    status: str
    """pending, running, retrying, succeeded, failed or cancelled."""
    attempts: int = 0
    """Tries in its latest round (``retry_job`` starts a new round)."""
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    duration: float | None = None
    """Seconds from start to finish of its latest try."""
    error: str | None = None
    """``"ExcType: message"`` of its latest failure."""
    traceback: str | None = None

    def to_entry(self) -> dict[str, Any]:
        """JSON-safe form (times as unix seconds)."""
        return {
            "status": self.status,
            "attempts": self.attempts,
            "started_at": None if self.started_at is None else self.started_at.timestamp(),
            "finished_at": None if self.finished_at is None else self.finished_at.timestamp(),
            "duration": self.duration,
            "error": self.error,
            "traceback": self.traceback,
        }

    @classmethod
    def from_entry(cls, handler: str, entry: Mapping[str, Any]) -> HandlerRecord:
        return cls(
            handler=handler,
            status=str(entry.get("status") or PENDING),
            attempts=int(entry.get("attempts") or 0),
            started_at=_time(entry.get("started_at")),
            finished_at=_time(entry.get("finished_at")),
            duration=entry.get("duration"),
            error=entry.get("error"),
            traceback=entry.get("traceback"),
        )


def _time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
    return utc(float(value))


@dataclass(frozen=True)
class EventRecord:
    """One published event as the event log holds it (``event_bus.get_event``)."""

    event: Event
    queue: str
    status: str
    """Derived from the handlers: pending, running, succeeded, failed, partially_failed, cancelled."""
    handlers: dict[str, HandlerRecord] = field(default_factory=dict)
    """By dotted handler name, for every handler the event reached so far."""
    published_at: dt.datetime | None = None
    due_at: dt.datetime | None = None
    """When a delayed event is (was) due; None for one published to run at once."""
    cancelled_at: dt.datetime | None = None

    @property
    def id(self) -> str:
        return self.event.id

    @property
    def name(self) -> str:
        return self.event.name

    @property
    def data(self) -> dict[str, Any]:
        return self.event.data

    @property
    def metadata(self) -> dict[str, Any]:
        return self.event.metadata or {}

    @property
    def sender(self) -> str | None:
        return self.event.sender

    @property
    def replay_of(self) -> str | None:
        """The id of the event this one replays (``event_bus.replay``), else None."""
        value = self.metadata.get("replay_of")
        return value if isinstance(value, str) else None

    @classmethod
    def build(
        cls,
        event: Event,
        queue: str,
        handlers: Mapping[str, Mapping[str, Any]],
        *,
        published_at: Any = None,
        due_at: Any = None,
        cancelled_at: Any = None,
        dispatched_at: Any = None,
        completed: Mapping[str, Any] | None = None,
    ) -> EventRecord:
        """From a store's fields (times as datetimes or unix seconds); ``completed``: the
        handlers found completed by a later delivery (:class:`Completed`), with when."""
        records = {name: HandlerRecord.from_entry(name, entry) for name, entry in sorted(handlers.items())}
        for name, at in (completed or {}).items():
            known = records.get(name)
            if known is None:
                records[name] = HandlerRecord(name, SUCCEEDED, attempts=1, finished_at=_time(at))
            elif known.status != SUCCEEDED:
                records[name] = replace(known, status=SUCCEEDED, error=None, traceback=None)
        records = dict(sorted(records.items()))
        status = derive_status(
            (r.status for r in records.values()), cancelled_at is not None, dispatched_at is not None
        )
        return cls(
            event=event,
            queue=queue,
            status=status,
            handlers=records,
            published_at=_time(published_at) or event.timestamp,
            due_at=_time(due_at),
            cancelled_at=_time(cancelled_at),
        )


# --- changes: what publishers and workers write ------------------------------------------


@dataclass(frozen=True)
class Published:
    """An event was published (now, or due at ``due_at`` unix seconds)."""

    event: Event
    queue: str
    published_at: float
    due_at: float | None = None


@dataclass(frozen=True)
class HandlerChange:
    """A handler's entry in an event's record is now ``entry`` (:meth:`HandlerRecord.to_entry`).

    ``event`` (the whole event) lets the store fill in the event's own fields when the
    publisher's record is not there (yet): only where missing.
    """

    event_id: str
    queue: str
    handler: str
    entry: dict[str, Any]
    event: Event | None = None


@dataclass(frozen=True)
class Marked:
    """The event was cancelled (``cancelled_at``) or taken by a worker with no handler
    subscribed (``dispatched_at``): ``field`` is set to ``at`` (unix seconds)."""

    event_id: str
    field: str
    at: float
    event: Event | None = None
    queue: str = ""


@dataclass(frozen=True)
class Completed:
    """A worker found the handler's job completed by an earlier delivery (the dedup record
    says it succeeded) and skipped it: the record shows it succeeded, whatever entry an
    earlier worker did or did not manage to write before it died. A marker of its own
    (never a rewrite of the entry), so a complete entry keeps its times."""

    event_id: str
    queue: str
    handler: str
    at: float
    event: Event | None = None


Change = Published | HandlerChange | Marked | Completed
