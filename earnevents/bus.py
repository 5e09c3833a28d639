"""The event bus: publish events, and inspect, retry or remove failed jobs and logged events.

Publishing puts a Celery task message for ``earnevents.dispatch`` on the Redis
list named after the queue (or, with a delay, in the Redis delay schedule) with
an asyncio Redis client: nothing blocks the caller's event loop, and a batch is a
single round trip. The bus knows the worker's task by name only and never
imports the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import math
import sys
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis.exceptions as redis_errors

from . import deadletters, definitions, keys, lazy, message, metrics, names, outbox, schedule, tracing
from .config import Settings
from .connections import Connections
from .deadletters import DeadItem
from .errors import (
    DeadItemNotFoundError,
    EventNotFoundError,
    EventTooLargeError,
    JobNotFoundError,
    NotInitializedError,
    OutboxFullError,
    PublishError,
)
from .event import Event
from .eventlog import EventLogStore, EventRecord
from .eventlog.record import FAILED, PENDING, RETRYING, HandlerChange, HandlerRecord, Marked, Published
from .eventlog.recorder import Recorder
from .failures import FailedJob, FailureStore
from .failures.selection import JobSelection
from .groupcommit import GroupCommit
from .logtext import get_logger
from .redact import redact_uri
from .schedule import ScheduledEvent

if TYPE_CHECKING:
    import tenacity
else:
    tenacity = lazy.module("tenacity")  # only when a publish is retried

log = get_logger(__name__)

_TRANSIENT = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)

MIN_ATTEMPT = 0.01
"""Seconds of its deadline a send needs left to be tried at all (see ``enqueue``)."""

RETRY_HEADROOM = 1024
"""Bytes of ``max_message_size`` a published message leaves free: a retry message of the
same event also names its handler, and workers refuse items over the limit."""


@dataclass(frozen=True)
class _Bound:
    settings: Settings
    connections: Connections
    failures: FailureStore
    eventlog: EventLogStore | None = None
    recorder: Recorder | None = None
    """Set when this process records events (``event_config["event_log"]``)."""
    metrics: bool = False
    """Whether this process counts the events it publishes (``earnevents.metrics``)."""


class EventBus:
    """Publishes events and manages failed jobs; usable once ``init()`` has run."""

    def __init__(self) -> None:
        self._bound: _Bound | None = None
        # Group commit per (event loop, queue).
        self._committers: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, GroupCommit[tuple[str, str, str], None]]
        ] = weakref.WeakKeyDictionary()

    # --- wiring (called by earnevents.runtime) ----------------------------------

    def bind(
        self,
        settings: Settings,
        connections: Connections,
        failures: FailureStore,
        eventlog: EventLogStore | None = None,
    ) -> None:
        recorder = Recorder(eventlog) if eventlog is not None and settings.event_log else None
        counting = settings.event.metrics or settings.metrics_port is not None
        self._bound = _Bound(settings, connections, failures, eventlog, recorder, counting)

    def unbind(self) -> None:
        self._bound = None

    def _state(self) -> _Bound:
        if self._bound is None:
            raise NotInitializedError(
                "earnevents is not initialized: call `await earnevents.init(redis_uri=...)` "
                "before publishing or managing failed jobs"
            )
        return self._bound

    # --- publishing ---------------------------------------------------------------

    async def publish(
        self,
        event: Event,
        delay: float | None = None,
        at: dt.datetime | None = None,
        *,
        sender: type | str | None = None,
    ) -> str:
        """Send ``event`` to every handler subscribed to its name; return its id.

        ``sender`` (a class, standing for its ``__qualname__``, or a str) travels in
        ``metadata["sender"]``: receivers get it first, and handlers filtered by sender
        run only for their own. The caller's ``event`` is left as it is; the one sent
        is a copy with the same id. An event whose metadata names another sender
        already is a ValueError. With ``earnevents[otel]`` installed and a span current,
        the current trace context travels in ``metadata["trace"]`` (``earnevents.tracing``).

        With ``delay`` (seconds) or ``at`` (an aware datetime), no handler starts
        before then; the event waits in Redis, and ``cancel(event.id)`` can still
        withdraw it. Either is at most 10 years ahead (``schedule.MAX_DELAY``); an
        ``at`` in the past is due at once. Raises TypeError/ValueError on bad input (nothing is sent), among
        them EventTooLargeError when its message is larger than workers take
        (``max_message_size``), and PublishError when Redis cannot take the event
        within ``publish_timeout`` s.
        """
        return (await self.publish_batch([event], delay=delay, at=at, sender=sender))[0]

    async def publish_batch(
        self,
        events: Iterable[Event],
        delay: float | None = None,
        at: dt.datetime | None = None,
        *,
        events_per_message: int = 1,
        sender: type | str | None = None,
    ) -> list[str]:
        """Publish many events in one Redis round trip; return their ids in order.

        Every event is checked and encoded before anything is sent: one bad event
        rejects the whole batch. An event whose name was defined with a schema
        (``define_event``) is validated (EventValidationError) and sent with the data
        as validated; in strict mode an undefined name is an UndefinedEventError.
        ``sender`` is every event's sender (see :meth:`publish`).

        ``events_per_message`` > 1 packs up to that many events into each queue
        message (immediate publishing only). A worker process takes a packed
        message whole and runs the async handlers of all its events at once, which
        spares the per-message cost of Celery for many small events; each (event,
        handler) pair is still a job of its own (completion record, retries,
        failed-job record). The price: a packed message is not spread over workers.
        """
        state = self._state()
        if isinstance(events, Event):
            raise TypeError("publish_batch takes a list of Events; use publish() for one")
        events = list(events)
        delay = _check_delay(delay)
        due_at = _check_at(at)
        if due_at is not None and delay:
            raise ValueError("give delay or at, not both")
        if isinstance(events_per_message, bool) or not isinstance(events_per_message, int):
            raise TypeError(f"events_per_message must be an int, got {type(events_per_message).__name__}")
        if events_per_message < 1:
            raise ValueError(f"events_per_message must be >= 1, got {events_per_message}")
        if events_per_message > 1 and (delay or due_at is not None):
            raise ValueError(
                "events_per_message applies to immediate publishing; delayed events are scheduled one by one"
            )
        settings = state.settings
        policy = settings.event.retry_policy
        policy_dict = policy.to_dict() if policy is not None else None
        for event in events:
            if not isinstance(event, Event):
                raise TypeError(f"publish takes earnevents.Event objects, got {type(event).__name__}")
        # Defined schemas validate (and shape) the data; strict mode refuses undefined names.
        events = definitions.registry.prepare(events, settings.event.strict)
        sender_name = names.check_sender(sender)
        events = [_with_sender(event, sender_name) for event in events]
        events = tracing.traced(events)  # the caller's trace context, when earnevents[otel] has one
        wires = [event.to_wire() for event in events]
        messages = []
        if events_per_message == 1:
            for event, wire in zip(events, wires, strict=True):
                payload = message.build(wire, queue=settings.queue_name, task_id=event.id, retry_policy=policy_dict)
                messages.append((event.id, event.name, payload))
        else:
            for start in range(0, len(events), events_per_message):
                pack = events[start : start + events_per_message]
                task_id = message.packed_id([event.id for event in pack])
                payload = message.build_packed(
                    wires[start : start + events_per_message],
                    queue=settings.queue_name,
                    task_id=task_id,
                    retry_policy=policy_dict,
                )
                messages.append((task_id, pack[0].name, payload))
        _check_sizes(messages, settings.max_message_size)
        if messages:
            if delay or due_at is not None:
                await self.enqueue(messages, queue=settings.queue_name, delay=delay or None, at=due_at)
            else:
                await self._push_now(messages, settings.queue_name)
            if state.recorder is not None:  # in the background: never a round trip of the caller's
                now = time.time()
                due = due_at if due_at is not None else (now + delay if delay else None)
                state.recorder.add([Published(event, settings.queue_name, now, due) for event in events])
            if state.metrics:
                metrics.count_published(settings.queue_name, events)
        return [event.id for event in events]

    async def _push_now(self, messages: list[tuple[str, str, str]], queue: str) -> None:
        """Push to ``queue`` now; concurrent pushes share one LPUSH (group commit), so
        sequential publishing gets no added latency and concurrent publishing far
        fewer round trips. Each caller's ``publish_timeout`` counts from its own call."""
        loop = asyncio.get_running_loop()
        by_queue = self._committers.setdefault(loop, {})
        commit = by_queue.get(queue)
        if commit is None:

            async def send(batch: list[tuple[str, str, str]], deadline: float) -> None:
                await self.enqueue(batch, queue=queue, deadline=deadline)

            commit = by_queue[queue] = GroupCommit(send)
        await commit(messages, loop.time() + self._state().settings.event.publish_timeout)

    async def enqueue(
        self,
        messages: Sequence[tuple[str, str, str]],
        *,
        queue: str,
        delay: float | None = None,
        at: float | None = None,
        deadline: float | None = None,
    ) -> None:
        """Put built ``(id, event name, message)`` triples on ``queue`` now, or in the
        delay schedule: due ``delay`` seconds from now by Redis' clock, or at unix
        time ``at``. Scheduling the same id twice keeps one message.

        When Redis stays unreachable: with an outbox (MongoDB configured) the
        messages are stored there for workers to relay; otherwise PublishError.

        Retries transient Redis errors, bounded by ``publish_timeout`` seconds in all,
        or until ``deadline`` (``loop.time()`` based) when that comes first.
        Used by publish and by workers scheduling retries.
        """
        state = self._state()
        settings = state.settings
        limit = settings.event.publish_timeout
        timeout = limit
        if deadline is not None:
            left = deadline - asyncio.get_running_loop().time()
            if left < MIN_ATTEMPT:
                # Its callers' time went on waiting for an earlier send (group commit) to a Redis
                # that does not answer. Not tried at all: an attempt cut off at once can leave
                # redis-py tearing down the previous connection, which does not stop on time.
                raise PublishError(
                    f"could not publish {len(messages)} message(s) to queue {queue!r} at "
                    f"{redact_uri(settings.redis_uri)} within {limit:g}s: the time went on waiting for an "
                    "earlier send to Redis that did not answer. Is Redis running? (publish_timeout sets how "
                    "long to keep trying)"
                )
            timeout = min(timeout, left)
        # With an outbox, stop trying Redis early and keep the rest of the time for MongoDB.
        redis_budget = min(timeout / 2, outbox.REDIS_BUDGET) if settings.outbox else timeout

        async def send_once(again: bool = False) -> None:
            # Every send here runs under a deadline of its own (_deadline, wait_for below).
            client = state.connections.bounded_redis()
            if delay is not None or at is not None:  # idempotent: the schedule keeps one per id
                script_keys, argv = schedule.add_args(queue, messages, delay=delay, at=at)
                await client.eval(schedule.ADD_SCRIPT, len(script_keys), *script_keys, *argv)
            else:
                # LPUSH + the worker's BRPOP keep the batch in publish order. Pushed again after
                # an attempt whose reply was lost (it may have landed), each message goes as a
                # copy of its own, so that workers run its handlers once even if both copies run.
                await _lpush(client, queue, [message.new_copy(p) if again else p for _, _, p in messages])

        started = time.monotonic()
        try:
            # Fast path: one attempt under a deadline (asyncio.timeout creates no task, unlike
            # wait_for); the retry machinery only runs when Redis misbehaves.
            async with _deadline(redis_budget):
                await send_once()
            return
        except (asyncio.TimeoutError, *_TRANSIENT) as exc:
            redis_error: BaseException = exc
        remaining = redis_budget - (time.monotonic() - started)
        if remaining > 0:
            retrying = tenacity.AsyncRetrying(
                stop=tenacity.stop_after_delay(remaining),
                wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
                retry=tenacity.retry_if_exception_type(_TRANSIENT),
                reraise=True,
            )
            try:
                # wait_for is the hard bound: an attempt stuck inside a socket call is cut off too.
                await asyncio.wait_for(retrying(send_once, again=True), timeout=remaining)
                return
            except (asyncio.TimeoutError, *_TRANSIENT) as exc:
                redis_error = exc
        where = f"queue {queue!r} at {redact_uri(settings.redis_uri)}"
        if not settings.outbox:
            raise PublishError(
                f"could not publish {len(messages)} message(s) to {where} within {limit:g}s: {redis_error!r}. "
                "Is Redis running? (publish_timeout sets how long to keep trying)"
            ) from redis_error
        due = at if at is not None else (time.time() + delay if delay is not None else None)
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            raise PublishError(
                f"could not publish {len(messages)} message(s) to {where} within {limit:g}s: {redis_error!r}; "
                "no time was left for the MongoDB outbox"
            ) from redis_error
        try:
            copies = [(message_id, name, message.new_copy(payload)) for message_id, name, payload in messages]
            await asyncio.wait_for(
                outbox.store(state.connections.db(), copies, queue, due, settings.outbox_max), timeout=remaining
            )
        except OutboxFullError as exc:
            raise OutboxFullError(f"{exc} (Redis: {where}, {redis_error!r})") from redis_error
        except Exception as exc:
            raise PublishError(
                f"could not publish {len(messages)} message(s): Redis ({where}) failed with {redis_error!r} "
                f"and the MongoDB outbox with {exc!r}"
            ) from exc
        log.warning(
            "Redis unreachable (%r): %d message(s) for %s kept in the MongoDB outbox until a worker relays them",
            redis_error,
            len(messages),
            queue,
        )

    # --- the delay schedule -------------------------------------------------------

    async def cancel(self, event_id: str) -> bool:
        """Withdraw a delayed event that is still waiting: True if it was pending.

        ``event_id`` is a str (TypeError otherwise), compared as it is.
        """
        if not isinstance(event_id, str):
            raise TypeError(f"event_id must be a str, got {type(event_id).__name__}")
        state = self._state()
        queue = state.settings.queue_name
        script_keys, argv = schedule.cancel_args(queue, event_id)
        client = state.connections.redis()
        # The event log marks a cancelled event, not a cancelled handler retry or model occurrence
        # (their ids name no logged event): read which it is first, only when logging.
        payload = await client.hget(keys.scheduled_payloads(queue), event_id) if state.recorder is not None else None
        cancelled = bool(await client.eval(schedule.CANCEL_SCRIPT, len(script_keys), *script_keys, *argv))
        if cancelled and payload is not None and _is_event_message(payload, event_id):
            await self._log_now(state, [Marked(event_id, "cancelled_at", time.time())], f"cancel of {event_id}")
        return cancelled

    async def _log_now(self, state: _Bound, changes: list[Any], what: str) -> None:
        """Record ``changes`` of an admin call (cancel, retry_job) now; a failure is only logged."""
        if state.recorder is None:
            return
        try:
            await state.recorder.store.write(changes)
        except Exception as exc:  # the call itself succeeded: the log must not fail it
            log.warning("event log: could not record the %s: %r", what, exc)

    async def get_scheduled(
        self, limit: int = 100, offset: int = 0, event_name: str | None = None
    ) -> list[ScheduledEvent]:
        """Pending delayed events and handler retries of this queue, soonest first.

        ``event_name`` (a str, compared as it is) shows only that event's.
        """
        names.check_filter(event_name, "event_name")
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        if limit == 0:
            return []
        state = self._state()
        queue = state.settings.queue_name
        index = keys.scheduled_zset(queue) if event_name is None else keys.scheduled_by_event(queue, event_name)
        client = state.connections.redis()
        entries = cast(
            "list[tuple[bytes, float]]", await client.zrange(index, offset, offset + limit - 1, withscores=True)
        )
        if not entries:
            return []
        ids = [member.decode() for member, _ in entries]
        payloads = await client.hmget(keys.scheduled_payloads(queue), ids)
        return [
            ScheduledEvent.from_message(message_id, payload, score)
            for message_id, (_, score), payload in zip(ids, entries, payloads, strict=True)
            if payload is not None  # moved to the queue between the two reads
        ]

    async def count_scheduled(self, event_name: str | None = None) -> int:
        """How many messages :meth:`get_scheduled` pages through."""
        names.check_filter(event_name, "event_name")
        state = self._state()
        queue = state.settings.queue_name
        index = keys.scheduled_zset(queue) if event_name is None else keys.scheduled_by_event(queue, event_name)
        return int(await state.connections.redis().zcard(index))

    # --- failed jobs --------------------------------------------------------------

    async def get_failed_jobs(
        self,
        limit: int = 100,
        offset: int = 0,
        event_name: str | None = None,
        handler: str | None = None,
        *,
        error: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> list[FailedJob]:
        """Failed jobs, newest first, optionally only those of one event name and/or
        handler, whose error text contains ``error``, that failed from ``since`` to
        ``until`` (timezone-aware datetimes, both inclusive).

        The filters are str (TypeError otherwise) compared as they are: never a pattern
        or a query operator. The store applies all of them (one query in MongoDB; index
        ranges and, for the error text, a script reading the records in Redis).
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        selection = _job_selection(event_name, handler, error, since, until)
        return await self._state().failures.list(limit, offset, selection)

    async def count_failed_jobs(
        self,
        event_name: str | None = None,
        handler: str | None = None,
        *,
        error: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> int:
        """How many failed jobs :meth:`get_failed_jobs` pages through with these filters."""
        return await self._state().failures.count(_job_selection(event_name, handler, error, since, until))

    async def get_failed_job(self, job_id: str) -> FailedJob:
        """One failed job; JobNotFoundError when there is none with that id.

        Ids are str (TypeError otherwise); one that is not 32 lowercase hex digits, the
        form of the ids earnevents makes, is not found without asking the store.
        """
        job = await self._state().failures.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no failed job with id {job_id!r}{_id_hint(job_id)}")
        return job

    async def retry_job(self, job_id: str) -> str:
        """Re-run that job's handler for its event now and take it off the failed list.

        The handler gets a fresh round of retries under this process' retry policy.
        Returns the id of the message sent. JobNotFoundError for an unknown id
        (ids as for :meth:`get_failed_job`).
        """
        state = self._state()
        job = await state.failures.take(job_id)
        if job is None:
            raise JobNotFoundError(
                f"no failed job with id {job_id!r}{_id_hint(job_id) or ' (already retried or removed?)'}"
            )
        task_id, _, payload = _handler_message(job.event.to_wire(), job.queue, job.handler, state.settings)
        what = f"retry of {job.handler} for event {job.event.id}"
        # Recorded before it is sent: once sent, a worker may write "running"/"succeeded"
        # before this call could, and a later "retrying" would hide what it wrote.
        retrying = HandlerRecord(job.handler, RETRYING, job.attempts, error=job.error)
        await self._log_now(
            state, [HandlerChange(job.event.id, job.queue, job.handler, retrying.to_entry(), job.event)], what
        )
        try:
            await self.enqueue([(task_id, job.event.name, payload)], queue=job.queue)
        except BaseException:
            await state.failures.add(job)  # not sent: keep it on the list, and the log says failed again
            failed = HandlerRecord(job.handler, FAILED, job.attempts, error=job.error, traceback=job.traceback)
            await self._log_now(state, [HandlerChange(job.event.id, job.queue, job.handler, failed.to_entry())], what)
            raise
        return task_id

    async def remove_job(self, job_id: str) -> None:
        """Delete a failed job for good. JobNotFoundError for an unknown id (ids as for
        :meth:`get_failed_job`)."""
        if not await self._state().failures.remove(job_id):
            raise JobNotFoundError(f"no failed job with id {job_id!r}{_id_hint(job_id)}")

    async def purge_failed_jobs(
        self,
        older_than: float | dt.timedelta | None = None,
        event_name: str | None = None,
        handler: str | None = None,
    ) -> int:
        """Delete this queue's failed jobs for good, only those that failed more than
        ``older_than`` (seconds or a timedelta) ago and/or of one event name and/or handler;
        with no argument, all of them. Returns how many were deleted."""
        names.check_filter(event_name, "event_name")
        names.check_filter(handler, "handler")
        seconds: float | None = None
        if older_than is not None:
            if isinstance(older_than, dt.timedelta):
                seconds = older_than.total_seconds()
            elif isinstance(older_than, bool) or not isinstance(older_than, (int, float)):
                raise TypeError(f"older_than must be seconds or a timedelta, got {type(older_than).__name__}")
            else:
                seconds = float(older_than)
            if not math.isfinite(seconds) or seconds < 0:
                raise ValueError(f"older_than must be a finite duration >= 0, got {older_than!r}")
            seconds = min(seconds, time.time())  # before 1970: nothing is that old
        return await self._state().failures.purge(seconds, event_name, handler)

    # --- the event log -------------------------------------------------------------

    def _eventlog(self) -> EventLogStore:
        store = self._state().eventlog
        if store is None:  # pragma: no cover - runtime.init always gives one
            raise NotInitializedError("earnevents was initialized without an event log store")
        return store

    async def get_event(self, event_id: str) -> EventRecord:
        """The event log's record of one event: the event, its times, its derived status and
        each handler's status, attempts, times and last error.

        EventNotFoundError when there is none (not published with the event log on, or
        older than EARNEVENTS_EVENT_LOG_TTL). Ids are str (TypeError otherwise); one that
        is not of the form event ids take is not found without asking the store.
        """
        record = await self._eventlog().get(event_id)
        if record is None:
            hint = "" if self._state().settings.event_log else " (the event log is off here: EARNEVENTS_EVENT_LOG=1)"
            raise EventNotFoundError(f"no logged event with id {event_id!r}{hint}")
        return record

    async def find_events(
        self,
        name: str | None = None,
        status: str | None = None,
        sender: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[EventRecord]:
        """Logged events of this queue, newest first (by publish time), filtered by exact
        name, sender (str, never patterns or query operators), derived status (one of
        ``eventlog.EVENT_STATUSES``) and publish time (aware datetimes: ``since`` inclusive,
        ``until`` exclusive). A status filter reads the records the other filters select."""
        return await self._eventlog().find(name, status, sender, since, until, limit, offset)

    async def replay(self, event_id: str, handlers: Sequence[str] | None = None) -> str:
        """Publish a copy of a logged event now: a new id, the same name and data, and
        ``metadata["replay_of"]`` = ``event_id``; returns the new id. The copy carries the
        caller's trace context (``earnevents.tracing``), not the one the original carried.

        ``handlers`` (dotted names): run only those, as ``retry_job`` targets one handler
        (one message each); None: every handler of the event. EventNotFoundError for an
        unknown id. A replay to chosen handlers is logged with them pending before it is
        sent; one that cannot be sent shows cancelled.
        """
        if handlers is not None:
            if isinstance(handlers, str) or not isinstance(handlers, Sequence):
                raise TypeError(f"handlers must be a list of handler names or None, got {type(handlers).__name__}")
            handlers = [names.check_handler_name(h, "handler") for h in handlers]
            if not handlers:
                raise ValueError("handlers must name at least one handler (None: all of them)")
        record = await self.get_event(event_id)
        # A new publication: in the replaying caller's trace (if any), not in the original's.
        metadata = {key: value for key, value in record.metadata.items() if key != tracing.METADATA_KEY}
        event = Event(name=record.name, data=record.data, metadata={**metadata, "replay_of": record.id})
        if handlers is None:
            return await self.publish(event)
        [event] = tracing.traced([event])
        state = self._state()
        settings = state.settings
        wire = event.to_wire()
        messages = [_handler_message(wire, settings.queue_name, h, settings) for h in dict.fromkeys(handlers)]
        _check_sizes(messages, settings.max_message_size)
        what = f"replay of event {record.id}"
        # Recorded before it is sent, not after: a worker could otherwise write its
        # handlers' "running"/"succeeded" first, and these "pending" entries hide them.
        pending = HandlerRecord("", PENDING).to_entry()
        await self._log_now(
            state,
            [Published(event, settings.queue_name, time.time())]
            + [HandlerChange(event.id, settings.queue_name, h, pending) for h in dict.fromkeys(handlers)],
            what,
        )
        try:
            await self._push_now(messages, settings.queue_name)
        except BaseException:  # never sent: its record says so rather than pending forever
            await self._log_now(state, [Marked(event.id, "cancelled_at", time.time())], what)
            raise
        return event.id

    async def flush_event_log(self, timeout: float = 5.0) -> None:
        """Wait until the records this loop's publishes queued are written (at most ``timeout`` s)."""
        state = self._bound
        if state is not None and state.recorder is not None:
            await state.recorder.flush(timeout)

    # --- dead letters: queue items workers refused --------------------------------

    async def get_dead_items(self, limit: int = 100, offset: int = 0) -> list[DeadItem]:
        """Items workers refused from this queue (not valid messages), newest first."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        state = self._state()
        return await deadletters.list_items(state.connections.redis(), state.settings.queue_name, limit, offset)

    async def count_dead_items(self) -> int:
        """How many items :meth:`get_dead_items` pages through."""
        state = self._state()
        return await deadletters.count(state.connections.redis(), state.settings.queue_name)

    async def get_dead_item(self, item_id: str) -> DeadItem:
        """One refused item; DeadItemNotFoundError when there is none with that id.

        Ids are str (TypeError otherwise); one not of the form earnevents makes (32
        lowercase hex digits) is not found without asking Redis.
        """
        state = self._state()
        item = await deadletters.get(state.connections.redis(), state.settings.queue_name, item_id)
        if item is None:
            raise DeadItemNotFoundError(
                f"no dead item with id {item_id!r} on queue {state.settings.queue_name!r}{_id_hint(item_id)}"
            )
        return item

    async def remove_dead_item(self, item_id: str) -> None:
        """Delete a refused item's record. DeadItemNotFoundError for an unknown id (ids as
        for :meth:`get_dead_item`)."""
        state = self._state()
        if not await deadletters.remove(state.connections.redis(), state.settings.queue_name, item_id):
            raise DeadItemNotFoundError(
                f"no dead item with id {item_id!r} on queue {state.settings.queue_name!r}{_id_hint(item_id)}"
            )


if sys.version_info >= (3, 11):
    _deadline = asyncio.timeout
else:  # pragma: no cover - Python 3.10

    @contextlib.asynccontextmanager
    async def _deadline(seconds: float) -> AsyncIterator[None]:
        task = asyncio.current_task()
        assert task is not None
        handle = asyncio.get_running_loop().call_later(seconds, task.cancel)
        try:
            yield
        except asyncio.CancelledError as exc:
            raise asyncio.TimeoutError from exc
        finally:
            handle.cancel()


async def _lpush(client: Any, queue: str, payloads: list[str]) -> None:
    """``client.lpush(queue, *payloads)`` on a connection of the client's pool, without the
    client's per-command layers (its retry wrapper, which has no retries here, observability
    hooks, response callbacks): a publish's one command costs ~6 us less CPU. A connection
    that failed (or was cut off) mid-command is closed before it goes back to the pool, as
    the client does; a Redis error reply (the connection is fine) is raised as it is."""
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(conn.pack_command("LPUSH", queue, *payloads))
        await conn.read_response()
    except redis_errors.ResponseError:
        raise
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


def _with_sender(event: Event, sender: str | None) -> Event:
    """``event`` carrying ``sender`` in its metadata (a copy, same id); checks a sender it carries already."""
    metadata = event.metadata or {}
    if "sender" in metadata:
        carried = metadata["sender"]
        if not isinstance(carried, str):
            raise TypeError(
                f"Event metadata['sender'] must be a str, got {type(carried).__name__}; "
                "to send a class's name, use publish(..., sender=TheClass)"
            )
        names.check_sender(carried, "Event metadata['sender']")
        if sender is not None and carried != sender:
            raise ValueError(f"event {event.id} already names sender {carried!r} in its metadata, not {sender!r}")
        return event
    if sender is None:
        return event
    return dataclasses.replace(event, metadata={**metadata, "sender": sender})


def _is_event_message(payload: bytes | str, event_id: str) -> bool:
    """Whether a scheduled message is the event ``event_id`` for all its handlers (a delayed
    publish), rather than a handler's retry or a model occurrence's check."""
    try:
        wire, kwargs = message.parse(payload)
    except (ValueError, TypeError, KeyError):
        return False
    return kwargs.get("handler") is None and wire.get("id") == event_id


def _handler_message(wire: dict[str, Any], queue: str, handler: str, settings: Settings) -> tuple[str, str, str]:
    """``(task_id, event name, payload)`` of a message running one handler for an event
    (``retry_job``, ``replay``), under this process' retry policy."""
    policy = settings.event.retry_policy
    task_id = message.new_task_id()
    payload = message.build(
        wire,
        queue=queue,
        task_id=task_id,
        handler=handler,
        retry_policy=policy.to_dict() if policy is not None else None,
    )
    return task_id, wire["name"], payload


def _check_sizes(messages: Sequence[tuple[str, str, str]], max_size: int) -> None:
    """EventTooLargeError for a message workers would refuse (nothing is sent then)."""
    limit = max_size - RETRY_HEADROOM
    for message_id, name, payload in messages:
        size = len(payload)  # JSON with ASCII escapes: characters are bytes
        if size > limit:
            raise EventTooLargeError(
                f"the message for {name!r} ({message_id}) is {size} bytes, over the limit of {limit} bytes "
                f"(max_message_size {max_size} less {RETRY_HEADROOM} kept for retries); nothing was sent"
            )


def _check_delay(delay: Any) -> float:
    if delay is None:
        return 0.0
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise TypeError(f"delay must be a number of seconds, got {type(delay).__name__}")
    if not 0 <= delay <= schedule.MAX_DELAY:  # NaN fails too; a huge int is compared exactly
        raise ValueError(
            f"delay must be from 0 to {schedule.MAX_DELAY:.0f} seconds (10 years), got {_show(delay)}; "
            "to publish at a moment, use at="
        )
    return float(delay)


def _check_at(at: Any) -> float | None:
    """Unix time of an aware ``at``, at most MAX_DELAY ahead; one in the past is due at once."""
    if at is None:
        return None
    if not isinstance(at, dt.datetime):
        raise TypeError(f"at must be a datetime, got {type(at).__name__}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be timezone-aware (e.g. datetime.now(timezone.utc) + timedelta(hours=1))")
    due = at.timestamp()
    if due > time.time() + schedule.MAX_DELAY:
        raise ValueError(f"at must be at most 10 years ahead, got {at.isoformat()}")
    # Already due; kept from 1970 on so that get_scheduled can show it (year 1 at UTC+23 is year 0 in UTC).
    return max(due, 0.0)


def _show(number: int | float) -> str:
    """``repr`` that cannot fail: a huge int's digits are not printed."""
    if isinstance(number, int) and number.bit_length() > 64:
        return f"an integer of {number.bit_length()} bits"
    return repr(number)


def _job_selection(
    event_name: str | None,
    handler: str | None,
    error: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> JobSelection:
    """The failed jobs those filters name (TypeError / ValueError for bad ones)."""
    return JobSelection(
        names.check_filter(event_name, "event_name"),
        names.check_filter(handler, "handler"),
        names.check_filter(error, "error"),
        since,
        until,
    )


def _id_hint(record_id: str) -> str:
    """Why an id that is not of the form earnevents makes was not found."""
    return "" if names.is_record_id(record_id) else f" (ids are {names.RECORD_ID_RULE})"


event_bus = EventBus()
"""The process' event bus: ``from earnevents import event_bus``."""
