"""The worker's side of the event log: handler statuses, written by a background thread.

``dispatch`` calls the hooks below (:func:`started`, :func:`finished`, :func:`settled`,
:func:`no_handlers`); each only appends to an in-memory buffer and returns, so a handler
never waits for the log and never fails because of it. One writer thread per worker
process (started in the process that runs handlers: a prefork child, after fork) takes
what gathered every :data:`FLUSH_INTERVAL` seconds, keeps the last change of each
(event, handler), and writes the lot in one round trip (a Redis pipeline, a MongoDB
``bulk_write``) with blocking clients of its own, off the process' event loop.

When the store is down, changes wait in the buffer (at most :data:`MAX_BUFFER`; beyond,
the oldest are dropped) and the log catches up once it is back; every outage and every
drop is logged as a warning, so a gap in the log is a line in the worker's log.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from .. import keys, redisurl
from ..config import Settings
from ..eventlog import redis_store
from ..eventlog.record import FAILED, RETRYING, RUNNING, SUCCEEDED, Change, Completed, HandlerChange, Marked, error_text
from ..logtext import get_logger
from .jobs import Job, Outcome

log = get_logger(__name__)

FLUSH_INTERVAL = 0.005
"""Seconds the writer lets changes gather after the first one arrives."""

BATCH = 1000
"""Changes written in one round trip at most."""

MAX_BUFFER = 100_000
"""Changes a process holds while the store is unreachable; beyond, the oldest are dropped."""

RETRY_MAX = 5.0
"""Longest wait, in seconds, between tries of an unreachable store."""

FLUSH_WAIT = 0.5
"""Seconds a message's acknowledgement waits at most for its log changes to be written
(not at all while the store is failing: handlers never wait on a store that is down)."""

CLIENT_TIMEOUT = 5.0
"""Seconds one write may take before it counts as failed."""


def _writer_for(settings: Settings) -> Callable[[Sequence[Change]], None]:
    """A blocking ``write(changes)`` for the configured store (made in the writer thread)."""
    ttl = settings.event_log_ttl
    if settings.mongo_uri is not None:
        from pymongo import MongoClient

        from ..eventlog import mongo_store

        timeouts: dict[str, Any] = {
            "serverSelectionTimeoutMS": int(CLIENT_TIMEOUT * 1000),
            "socketTimeoutMS": int(CLIENT_TIMEOUT * 1000),
        }
        given = settings.mongo_uri.lower()
        client: MongoClient[Any] = MongoClient(
            settings.mongo_uri,
            tz_aware=True,
            **{k: v for k, v in timeouts.items() if k.lower() not in given},  # the URI's own win
        )
        col = client[settings.database][keys.MONGO_EVENTLOG_COLLECTION]
        indexed = False

        def write_mongo(changes: Sequence[Change]) -> None:
            nonlocal indexed
            if not indexed:
                for spec, options in mongo_store.INDEXES:
                    col.create_index(spec, **options)
                indexed = True
            col.bulk_write(mongo_store.requests(changes, ttl), ordered=True)

        return write_mongo
    redis = redisurl.sync_client(
        settings.redis_uri, socket_timeout=CLIENT_TIMEOUT, socket_connect_timeout=CLIENT_TIMEOUT
    )

    def write_redis(changes: Sequence[Change]) -> None:
        pipe = redis.pipeline(transaction=False)
        for name, args, kwargs in redis_store.commands(changes, ttl):
            getattr(pipe, name)(*args, **kwargs)
        pipe.execute()

    return write_redis


def coalesce(changes: Iterable[Change]) -> list[Change]:
    """The last change of each (event, handler) or (event, field), in order of those last
    changes; one that replaces an earlier one keeps the event the earlier one carried."""
    last: dict[tuple[str, str], Change] = {}
    for change in changes:
        if isinstance(change, HandlerChange):
            key = (change.event_id, "h:" + change.handler)
        elif isinstance(change, Completed):
            key = (change.event_id, "c:" + change.handler)
        elif isinstance(change, Marked):
            key = (change.event_id, change.field)
        else:
            key = (change.event.id, "published")
        before = last.pop(key, None)
        if (
            isinstance(change, (HandlerChange, Marked, Completed))
            and isinstance(before, (HandlerChange, Marked, Completed))
            and change.event is None
            and before.event is not None
        ):
            change = replace(change, event=before.event)
        last[key] = change
    return list(last.values())


class LogWriter:
    """The buffer and the thread writing it, for one process."""

    def __init__(self, write: Callable[[], Callable[[Sequence[Change]], None]]) -> None:
        self._make_write = write
        self._buffer: deque[Change] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._stop_requested = threading.Event()
        self.dropped = 0
        self._reported = 0
        self._put = 0  # changes ever buffered
        self._done = 0  # of those, written or dropped: never waited for again
        self._progress = threading.Condition(self._lock)
        self._hurry = threading.Event()  # a flush waits: cut the gathering pause short
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="earnevents-eventlog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, changes: Iterable[Change], hurry: bool = False) -> None:
        """Buffer ``changes`` (cheap; any thread); the oldest go when the buffer is full.
        ``hurry``: write them now, without the gathering pause (a message's final changes:
        written while the worker settles the message, so its flush seldom waits)."""
        with self._lock:
            before = len(self._buffer)
            self._buffer.extend(changes)
            self._put += len(self._buffer) - before
            excess = len(self._buffer) - MAX_BUFFER
            for _ in range(max(excess, 0)):
                self._buffer.popleft()
            self.dropped += max(excess, 0)
            self._done += max(excess, 0)
        if hurry:
            self._hurry.set()
        self._wake.set()

    def flush(self, timeout: float = FLUSH_WAIT) -> bool:
        """Wait (at most ``timeout`` s) until what was buffered so far is written; at once
        False while the store is failing. The worker calls it before a message is
        acknowledged, so a process killed after the acknowledgement has nothing of that
        message left unwritten (a message not acknowledged is redelivered and logged again)."""
        with self._lock:
            if self._failing:
                return False
            target = self._put
            if self._done >= target:
                return True
        self._hurry.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._done < target and not self._failing:
                left = deadline - time.monotonic()
                if left <= 0:
                    # A store this slow counts as failing: later acknowledgements do not wait
                    # until a write succeeds again (a hung store costs one wait, not one per message).
                    self._failing = True
                    return False
                self._progress.wait(left)
            return self._done >= target

    def _take(self) -> list[Change]:
        with self._lock:
            return [self._buffer.popleft() for _ in range(min(BATCH, len(self._buffer)))]

    def _give_back(self, batch: list[Change]) -> None:
        with self._lock:
            self._buffer.extendleft(reversed(batch))
            excess = len(self._buffer) - MAX_BUFFER
            for _ in range(max(excess, 0)):
                self._buffer.pop()  # the newest of the oldest: what was given back last
            self.dropped += max(excess, 0)
            self._done += max(excess, 0)

    def _written(self, count: int, failing: bool) -> None:
        with self._lock:
            self._done += count
            self._failing = failing
            self._progress.notify_all()

    def _run(self) -> None:
        write: Callable[[Sequence[Change]], None] | None = None
        failing = 0
        while True:
            if not failing:
                self._wake.wait()
                if not self._stopping:
                    self._hurry.wait(FLUSH_INTERVAL)  # let a message's changes gather, unless one waits
            self._wake.clear()
            self._hurry.clear()
            while batch := self._take():
                try:
                    if write is None:
                        write = self._make_write()
                    write(coalesce(batch))
                except Exception as exc:
                    self._give_back(batch)
                    self._written(0, failing=True)  # waiting flushes return now
                    if not failing:
                        log.warning(
                            "event log: cannot write to its store (%r); handlers go on, changes wait "
                            "here (up to %d) until it is back",
                            exc,
                            MAX_BUFFER,
                        )
                    failing += 1
                    break
                self._written(len(batch), failing=False)
                if failing:
                    log.info("event log: its store works again; caught up on the changes kept meanwhile")
                    failing = 0
            if self.dropped > self._reported:
                log.warning(
                    "event log: %d change(s) of handler statuses dropped (buffer of %d full while the store "
                    "was unreachable): the log has a gap",
                    self.dropped - self._reported,
                    MAX_BUFFER,
                )
                self._reported = self.dropped
            if self._stopping:
                return
            if failing:  # try again after a pause (cut short by stop)
                self._stop_requested.wait(min(RETRY_MAX, 0.05 * 2 ** min(failing, 7)))

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is buffered (for at most ``timeout`` s), then end the thread."""
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            left = len(self._buffer)
        if left:
            log.warning("event log: %d change(s) of handler statuses not written at exit: the log has a gap", left)


_current: tuple[int, LogWriter, str] | None = None
_lock = threading.Lock()


def configure(settings: Settings) -> None:
    """Start this process' writer when the event log is on (called once per process,
    in the process that runs handlers, so the thread exists after fork)."""
    global _current
    with _lock:
        if _current is not None and _current[0] == os.getpid():
            return
        _current = None
        if settings.event_log:
            writer = LogWriter(lambda: _writer_for(settings))
            writer.start()
            _current = (os.getpid(), writer, settings.queue_name)


def stop() -> None:
    global _current
    with _lock:
        entry, _current = _current, None
    if entry is not None and entry[0] == os.getpid():
        entry[1].stop()


UNLOGGED = frozenset({keys.OCCURRENCE_HANDLER, keys.WORKFLOW_HANDLER})
"""earnevents' own handlers, whose jobs the event log leaves out."""


def _writer(job: Job | None = None) -> LogWriter | None:
    """This process' writer, if the log is on; None for ``job`` when it is one of earnevents' own
    (:data:`UNLOGGED`): a model occurrence's check (the log records the event it publishes) or a
    workflow run's step (the run keeps its own history)."""
    entry = _current
    if entry is None or entry[0] != os.getpid():
        return None
    if job is not None and job.handler in UNLOGGED:
        return None
    return entry[1]


_started: dict[tuple[str, str], float] = {}
"""When each (event, handler) of this process last started; the oldest forgotten beyond STARTS_KEPT."""

STARTS_KEPT = 10_000


def started(job: Job, handlers: Iterable[str]) -> None:
    """``handlers`` start now for ``job``'s event (status running)."""
    writer = _writer(job)
    if writer is None:
        return
    now = time.time()
    event = job.event if job.attempt == 0 else None  # the first try fills in the event if missing
    changes: list[Change] = []
    if len(_started) > STARTS_KEPT:  # jobs that never ended here (their message handed back)
        for key in list(_started)[: STARTS_KEPT // 10]:
            _started.pop(key, None)
    for handler in handlers:
        _started[(job.event.id, handler)] = now
        entry = {"status": RUNNING, "attempts": job.attempt + 1, "started_at": now}
        changes.append(HandlerChange(job.event.id, job.queue, handler, entry, event))
    writer.put(changes)


def _ended(job: Job, outcome: Outcome, status: str) -> HandlerChange:
    started_at = _started.get((job.event.id, outcome.handler))  # kept: settling may run twice
    now = outcome.at
    entry: dict[str, Any] = {
        "status": status,
        "attempts": job.attempt + 1,
        "started_at": started_at,
        "finished_at": now,
        "duration": None if started_at is None else max(0.0, now - started_at),
        "error": None,
        "traceback": None,
    }
    if outcome.error is not None:
        entry["error"], entry["traceback"] = error_text(outcome.error)
    return HandlerChange(job.event.id, job.queue, outcome.handler, entry, job.event if job.attempt == 0 else None)


def finished(job: Job, outcomes: Iterable[Outcome]) -> None:
    """The handlers of ``outcomes`` without an error succeeded."""
    writer = _writer(job)
    if writer is not None:
        writer.put([_ended(job, o, SUCCEEDED) for o in outcomes if o.error is None], hurry=True)


def settled(job: Job, outcome: Outcome, retrying: bool) -> None:
    """A failed handler was scheduled for a retry (``retrying``) or recorded as failed."""
    writer = _writer(job)
    if writer is not None:
        writer.put([_ended(job, outcome, RETRYING if retrying else FAILED)], hurry=True)


def completed_before(job: Job, handlers: Iterable[str]) -> None:
    """``handlers`` were skipped: an earlier delivery of the message completed them. Its
    worker may have died before its log writes left its buffer, so say so again."""
    writer = _writer(job)
    if writer is not None:
        now = time.time()
        writer.put([Completed(job.event.id, job.queue, h, now, job.event) for h in handlers], hurry=True)


def active() -> bool:
    """Whether this process writes the event log (else :func:`flush` has nothing to wait for)."""
    return _writer() is not None


def flush() -> None:
    """Before a message is acknowledged: wait (briefly) until its changes are written."""
    writer = _writer()
    if writer is not None:
        writer.flush()


def no_handlers(job: Job) -> None:
    """A worker took the event and no handler subscribes to it."""
    writer = _writer(job)
    if writer is not None:
        writer.put([Marked(job.event.id, "dispatched_at", time.time(), job.event, job.queue)], hurry=True)
