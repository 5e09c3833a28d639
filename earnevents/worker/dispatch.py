"""Running one message's handlers and deciding what happens to each failure.

Free of Celery: the Celery task in ``worker.app`` only decodes the message and
calls :func:`handle`. A job is one (event, handler) pair: every handler runs, a
failure never re-runs or blocks another handler; a failed handler is retried on
its own (through the delay schedule) until its policy is spent, then recorded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .. import message
from ..bus import EventBus
from ..context import JobContext
from ..context import _current as _current_job
from ..errors import HandlerNotFoundError, HandlerTimeoutError
from ..event import Event
from ..failures import FailedJob, FailureStore
from ..failures.record import describe
from ..handlers import Handler, HandlerRegistry
from ..retry import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")


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

    @classmethod
    def from_message(
        cls,
        event: Mapping[str, Any],
        kwargs: Mapping[str, Any],
        queue: str,
        registry: HandlerRegistry | None = None,
        handler_timeout: float | None = None,
    ) -> Job:
        """Decode the task's arguments; ValueError/TypeError when they are malformed.

        With ``registry``, a retry naming a handler registered for another event
        than the message's is malformed too (it must not run on this event).
        """
        handler = kwargs.get("handler")
        attempt = kwargs.get("attempt", 0)
        if handler is not None and not isinstance(handler, str):
            raise TypeError(f"handler must be a str, got {type(handler).__name__}")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ValueError(f"attempt must be an int >= 0, got {attempt!r}")
        if not isinstance(event, Mapping):
            raise TypeError(f"event must be a dict, got {type(event).__name__}")
        decoded = Event.from_wire(event)
        if handler is not None and registry is not None:
            subscribed = registry.event_of(handler)
            if subscribed is not None and subscribed != decoded.name:
                raise ValueError(f"handler {handler} is subscribed to {subscribed!r}, not to {decoded.name!r}")
        return cls(
            event=decoded,
            handler=handler,
            attempt=attempt,
            retry_policy=RetryPolicy.coerce(kwargs.get("retry_policy")),
            queue=queue,
            handler_timeout=handler_timeout,
        )


def select_handlers(registry: HandlerRegistry, job: Job) -> list[Handler]:
    """The handlers this message runs (HandlerNotFoundError for an unknown retry target)."""
    if job.handler is not None:
        return [registry.get(job.handler)]
    return registry.for_event(job.event.name)


def choose_policy(handler: Handler | None, job: Job, worker_policy: RetryPolicy | None) -> RetryPolicy:
    """The handler's own policy, else the publisher's, else the worker's, else the default."""
    if handler is not None and handler.retry_policy is not None:
        return handler.retry_policy
    return job.retry_policy or worker_policy or RetryPolicy()


def retry_delay(policy: RetryPolicy, attempt: int) -> float | None:
    """Seconds until the next try after try number ``attempt`` (0-based) failed; None: give up."""
    next_retry = attempt + 1
    if next_retry > policy.max_retries:
        return None
    return policy.delay_for(next_retry)


def job_context(job: Job, handler: str) -> JobContext:
    """What ``earnevents.current_job()`` returns inside ``handler`` for this message."""
    return JobContext(
        job_id=message.derived_id("job", job.event.id, handler, 0),
        event_id=job.event.id,
        handler=handler,
        attempt=job.attempt + 1,
        queue=job.queue,
    )


async def _record(books: Bookkeeper, job: Job, handler: str) -> Outcome:
    # Remembered right away, to keep the crash window between "done" and "remembered"
    # small; if Redis fails here, settle() remembers it (recorded=False).
    try:
        await books.completed(job, handler)
    except Exception:
        log.debug("could not record %s as completed yet", handler, exc_info=True)
        return Outcome(handler)
    return Outcome(handler, recorded=True)


def _never() -> bool:
    return False


_terminating: Callable[[], bool] = _never


def on_termination(check: Callable[[], bool]) -> None:
    """Tell how to recognise this process' own termination while a handler runs.

    A pool process told to exit (a hard time limit's SIGTERM, a cold shutdown) gets
    SystemExit raised wherever it is, often inside a sync handler: when ``check()``
    says so, that SystemExit/KeyboardInterrupt is not the handler's failure and
    passes through, so the process exits and the message is redelivered.
    """
    global _terminating
    _terminating = check


def _is_termination(exc: BaseException) -> bool:
    return isinstance(exc, (SystemExit, KeyboardInterrupt)) and _terminating()


def _timeout_of(handler: Handler, job: Job) -> float | None:
    return handler.timeout if handler.timeout is not None else job.handler_timeout


def _being_cancelled() -> bool:
    """Whether the running task itself is being cancelled (not a CancelledError a handler raised)."""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)  # Python 3.11+
    return cancelling is not None and bool(cancelling())


def _timed_out(name: str, timeout: float) -> HandlerTimeoutError:
    return HandlerTimeoutError(f"handler {name} did not finish within {timeout:g}s")


async def _within(awaitable: Awaitable[Any], timeout: float | None, name: str) -> None:
    """Await ``awaitable``, cancelling it after ``timeout`` seconds (HandlerTimeoutError).

    A handler that swallows the cancellation and goes on cannot be stopped here.
    """
    if timeout is None:
        await awaitable
        return
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        await awaitable
    except asyncio.CancelledError:
        if expired:
            expired = False  # our own cancellation, accounted for here
            if _uncancel(task) == 0:  # not also cancelled from outside
                raise _timed_out(name, timeout) from None
        raise
    finally:
        timer.cancel()
        if expired:  # the handler swallowed our cancellation and went on: take it back
            _uncancel(task)


def _uncancel(task: asyncio.Task[Any]) -> int:
    """Undo one cancel() of ``task``; the cancellations left (always 0 before Python 3.11)."""
    uncancel = getattr(task, "uncancel", None)
    return int(uncancel()) if uncancel is not None else 0


async def _guarded(awaitable: Awaitable[Any], timeout: float | None, name: str) -> BaseException | None:
    """Await a handler's awaitable on the loop; whatever it raises is returned as data."""
    try:
        await _within(awaitable, timeout, name)
    except BaseException as exc:  # SystemExit too: it must not stop the loop thread
        if isinstance(exc, asyncio.CancelledError) and _being_cancelled():
            raise
        return exc
    return None


@contextmanager
def _alarm(timeout: float, name: str) -> Iterator[None]:
    """Raise HandlerTimeoutError in this (the main) thread after ``timeout`` seconds (SIGALRM)."""
    armed = True

    def fire(signum: int, frame: object) -> None:
        nonlocal armed
        if armed:
            armed = False
            raise _timed_out(name, timeout)

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(timeout, 1e-6))  # 0 would disarm it
    try:
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _can_alarm() -> bool:
    """SIGALRM is ours to use: main thread, POSIX, and no timer or handler set by anyone else."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return False
    return signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) in (
        signal.SIG_DFL,
        signal.SIG_IGN,
        None,
    )


def _call_sync(handler: Handler, event: Event, timeout: float | None) -> Any:
    """Call a plain ``def`` handler; past ``timeout`` it fails with HandlerTimeoutError.

    In a process' main thread (prefork and solo pools) SIGALRM interrupts the
    handler where it is. Elsewhere (``-P threads``) a thread cannot be interrupted:
    the call runs in a thread of its own that is abandoned on timeout and may
    still finish later (documented in the README).
    """
    if timeout is None:
        return handler.func(event)
    if _can_alarm():
        with _alarm(timeout, handler.name):
            return handler.func(event)
    future: Future[Any] = Future()
    context = contextvars.copy_context()

    def call() -> None:
        try:
            future.set_result(context.run(handler.func, event))
        except BaseException as exc:  # handed to the waiting thread as the handler's failure
            future.set_exception(exc)

    threading.Thread(target=call, name=f"earnevents-handler-{handler.name}", daemon=True).start()
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        log.error("handler %s still running after %gs: abandoned in its thread", handler.name, timeout)
        raise _timed_out(handler.name, timeout) from None


def run_sync(handler: Handler, job: Job, loop: Loop, books: Bookkeeper) -> Outcome:
    """Call a plain ``def`` handler in the calling thread.

    Anything it raises is its failure, SystemExit and KeyboardInterrupt included.
    An awaitable it returns (a ``def`` wrapper around an async function) is awaited
    on the loop, under what is left of the same timeout.
    """
    timeout = _timeout_of(handler, job)
    started = 0.0 if timeout is None else time.monotonic()
    token = _current_job.set(job_context(job, handler.name))
    try:
        result = _call_sync(handler, job.event, timeout)
        if result is not None and inspect.isawaitable(result):  # most handlers return None
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            error = loop.run(_guarded(result, left, handler.name))
            if error is not None:
                return Outcome(handler.name, error)
    except BaseException as exc:  # a handler's failure is data here, not a crash
        if _is_termination(exc):
            raise
        return Outcome(handler.name, exc)
    finally:
        _current_job.reset(token)
    return loop.run(_record(books, job, handler.name))


async def _run_one(handler: Handler, job: Job, books: Bookkeeper) -> Outcome:
    timeout = _timeout_of(handler, job)
    token = _current_job.set(job_context(job, handler.name))
    try:
        if timeout is None:  # the usual case: no timer, no wrapper
            await handler.func(job.event)
        else:
            await _within(handler.func(job.event), timeout, handler.name)
    except BaseException as exc:  # a handler's failure is data here, SystemExit too: the loop goes on
        if isinstance(exc, asyncio.CancelledError) and _being_cancelled():
            raise
        return Outcome(handler.name, exc)
    finally:
        _current_job.reset(token)
    return await _record(books, job, handler.name)


async def run_async(handlers: list[Handler], job: Job, books: Bookkeeper) -> list[Outcome]:
    """Run ``async def`` handlers concurrently; one failing does not cancel the others."""
    if len(handlers) == 1:  # the usual case: no task to create
        try:
            return [await _run_one(handlers[0], job, books)]
        except asyncio.CancelledError as exc:  # the handler's own doing, unless we are cancelled
            cancelling = getattr(asyncio.current_task(), "cancelling", None)  # Python 3.11+
            if cancelling is not None and cancelling():
                raise
            return [Outcome(handlers[0].name, exc)]
    results = await asyncio.gather(*(_run_one(h, job, books) for h in handlers), return_exceptions=True)
    return [
        r if isinstance(r, Outcome) else Outcome(h.name, r)  # BaseException such as CancelledError
        for h, r in zip(handlers, results, strict=True)
    ]


async def settle_failures(
    job: Job,
    outcomes: list[Outcome],
    registry: HandlerRegistry,
    bus: EventBus,
    failures: FailureStore,
    worker_policy: RetryPolicy | None,
) -> None:
    """Schedule a retry for, or record, every failed outcome. Raises if Redis/Mongo fail.

    Idempotent: retry messages and failure records get ids derived from
    (event, handler, attempt), so settling twice schedules and records once.
    """
    for outcome in outcomes:
        if outcome.error is None:
            continue
        try:
            handler: Handler | None = registry.get(outcome.handler)
        except HandlerNotFoundError:
            handler = None
        policy = choose_policy(handler, job, worker_policy)
        delay = None if handler is None else retry_delay(policy, job.attempt)
        err = outcome.error
        if delay is None:
            log.error(
                "handler %s failed for %s %s after %d tries: %s; recorded as a failed job",
                outcome.handler,
                job.event.name,
                job.event.id,
                job.attempt + 1,
                describe(err),
                exc_info=(type(err), err, err.__traceback__),
            )
            record = FailedJob.from_exception(
                job.event,
                outcome.handler,
                err,
                job.attempt + 1,
                job.queue,
                job_id=message.derived_id("failed", job.event.id, outcome.handler, job.attempt + 1),
            )
            await failures.add(record)
            continue
        log.warning(
            "handler %s failed for %s %s (try %d): %s; retrying in %.3gs",
            outcome.handler,
            job.event.name,
            job.event.id,
            job.attempt + 1,
            describe(err),
            delay,
        )
        task_id = message.derived_id("retry", job.event.id, outcome.handler, job.attempt + 1)
        payload = message.build(
            job.event.to_wire(),
            queue=job.queue,
            task_id=task_id,
            handler=outcome.handler,
            attempt=job.attempt + 1,
            retry_policy=job.retry_policy.model_dump() if job.retry_policy is not None else None,
        )
        await bus.enqueue([(task_id, job.event.name, payload)], queue=job.queue, delay=delay)


class Bookkeeper(Protocol):
    """The worker's Redis/Mongo side of handling a message."""

    async def already_done(self, job: Job, handlers: list[str]) -> set[str]:
        """Which of ``handlers`` completed for this event before (a redelivery)."""

    async def already_done_many(self, jobs: list[tuple[Job, list[str]]]) -> list[set[str]]:
        """:meth:`already_done` for several events at once (a packed message)."""

    async def completed(self, job: Job, handler: str) -> None:
        """Remember that ``handler`` completed for this event (may raise; settle retries)."""

    async def settle(self, job: Job, outcomes: list[Outcome]) -> None:
        """Remember unrecorded successes; schedule retries for, or record, failures."""


def _not_done(job: Job, handlers: list[Handler], done: set[str]) -> list[Handler]:
    if done:
        log.info("event %s: skipping %s, completed before", job.event.id, ", ".join(sorted(done)))
    return [h for h in handlers if h.name not in done]


def _needs_settling(outcomes: list[Outcome]) -> bool:
    return any(o.error is not None or not o.recorded for o in outcomes)


async def _handle_async(job: Job, handlers: list[Handler], books: Bookkeeper) -> list[Outcome]:
    """The whole job on the loop, for events whose handlers are all async: one thread hop."""
    handlers = _not_done(job, handlers, await books.already_done(job, [h.name for h in handlers]))
    outcomes = await run_async(handlers, job, books)
    if _needs_settling(outcomes):
        await books.settle(job, outcomes)
    return outcomes


class SettleFailed(Exception):
    """Settling some jobs of a packed message failed; ``errors`` holds why."""

    def __init__(self, errors: list[BaseException]) -> None:
        super().__init__(f"{len(errors)} job(s) could not be settled: {errors[0]!r}")
        self.errors = errors


async def _handle_async_many(pairs: list[tuple[Job, list[Handler]]], books: Bookkeeper) -> list[Outcome]:
    """All jobs of a packed message on the loop at once: one completion check for all."""
    done = await books.already_done_many([(job, [h.name for h in handlers]) for job, handlers in pairs])

    async def one(job: Job, handlers: list[Handler], done: set[str]) -> list[Outcome]:
        outcomes = await run_async(_not_done(job, handlers, done), job, books)
        if _needs_settling(outcomes):
            await books.settle(job, outcomes)
        return outcomes

    results = await asyncio.gather(
        *(one(job, handlers, d) for (job, handlers), d in zip(pairs, done, strict=True)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:  # every other job has finished and is settled: a redelivery skips those
        raise SettleFailed(errors)
    return [o for r in results if not isinstance(r, BaseException) for o in r]


def handle_message(jobs: list[Job], registry: HandlerRegistry, loop: Loop, books: Bookkeeper) -> list[Outcome]:
    """Run every job of a message: one event (see :func:`handle`), or a packed message.

    The events of a packed message whose handlers are all ``async def`` run at once
    on ``loop``; the others one after the other, as :func:`handle` runs them.
    """
    if len(jobs) == 1:
        return handle(jobs[0], registry, loop, books)
    together: list[tuple[Job, list[Handler]]] = []
    apart: list[Job] = []
    for job in jobs:
        try:
            handlers = select_handlers(registry, job)
        except HandlerNotFoundError:
            apart.append(job)
            continue
        if handlers and all(h.is_async for h in handlers):
            together.append((job, handlers))
        else:
            apart.append(job)
    outcomes = loop.run(_handle_async_many(together, books)) if together else []
    for job in apart:
        outcomes += handle(job, registry, loop, books)
    return outcomes


def handle(job: Job, registry: HandlerRegistry, loop: Loop, books: Bookkeeper) -> list[Outcome]:
    """Run the job's handlers and settle the outcomes; returns the outcomes of those that ran.

    Handlers that already completed for this event are skipped. Async handlers
    run concurrently on ``loop`` while sync ones run here, in the calling (task)
    thread, as plain calls; then ``books.settle`` runs on ``loop``.
    """
    try:
        handlers = select_handlers(registry, job)
    except HandlerNotFoundError as exc:
        outcomes = [Outcome(job.handler or "?", exc)]
        loop.run(books.settle(job, outcomes))
        return outcomes
    if not handlers:
        log.info("no handler subscribes to %r; event %s acknowledged", job.event.name, job.event.id)
        return []
    if all(h.is_async for h in handlers):
        return loop.run(_handle_async(job, handlers, books))
    handlers = _not_done(job, handlers, loop.run(books.already_done(job, [h.name for h in handlers])))
    async_handlers = [h for h in handlers if h.is_async]
    pending = loop.submit(run_async(async_handlers, job, books)) if async_handlers else None
    try:
        outcomes = [run_sync(h, job, loop, books) for h in handlers if not h.is_async]
        if pending is not None:
            outcomes = pending.result() + outcomes
    except BaseException:  # this thread was interrupted (a soft time limit, termination)
        if pending is not None:
            pending.cancel()  # the async handlers must not run on unseen
        raise
    if _needs_settling(outcomes):
        loop.run(books.settle(job, outcomes))
    return outcomes
