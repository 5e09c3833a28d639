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
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from .. import message
from ..bus import EventBus
from ..context import JobContext
from ..context import _current as _current_job
from ..errors import HandlerNotFoundError, HandlerTimeoutError, WorkerLostError
from ..event import Event
from ..failures import FailedJob, FailureStore
from ..failures.record import describe
from ..handlers import Handler, HandlerRegistry
from ..retry import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

COMPLETED = 0
"""A claim result (see :meth:`Bookkeeper.claim`): the job completed before; skip it."""

HELD = -1
"""A claim result: another copy of the message runs the job right now; skip it."""

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
            copy_id=copy_id,
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
        deliveries=job.deliveries.get(handler, 1),
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
        err = outcome.error
        # A job whose process died max-deliveries times is final: retrying would kill more.
        delay = None if handler is None or isinstance(err, WorkerLostError) else retry_delay(policy, job.attempt)
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

    max_deliveries: int
    """Deliveries a job may die in before it is recorded as failed instead of run."""

    async def claim(self, jobs: list[tuple[Job, list[str]]]) -> list[dict[str, int]]:
        """Atomically claim the jobs (event, handler) of one message before running any.

        One entry per job, mapping each handler to :data:`COMPLETED`, :data:`HELD`,
        :data:`FRESH`, or (the same message back after its worker died) the number
        its next start would be: the claimed jobs run, the others are skipped.
        """

    async def started(self, job: Job, handler: str, starts: int) -> None:
        """Record that a taken-over job starts for the ``starts``-th time, before it runs."""

    async def completed(self, job: Job, handler: str) -> None:
        """Remember that ``handler`` completed for this event, ending its claim (may raise; settle retries)."""

    async def settle(self, job: Job, outcomes: list[Outcome]) -> None:
        """Remember unrecorded successes; end the failures' claims, schedule retries for or record them."""


def died(starts: int) -> WorkerLostError:
    """The failure recorded for a job whose worker process died each time it started."""
    return WorkerLostError(
        f"the worker process died while running this handler, each of the {starts} times it started"
        " (killed, crashed or out of memory); not run again"
    )


@dataclass(frozen=True)
class Claimed:
    """One event's jobs sorted by their claim: what runs, and what is settled unrun."""

    job: Job
    fresh: list[Handler]
    """Claimed now: they run together, as usual."""
    again: list[Handler]
    """Taken over from a delivery whose worker died: they run one at a time, fewest starts
    first, each start recorded before it runs, so a job that kills the process again is
    the only one that counts the delivery."""
    dead: list[Outcome]
    """Jobs whose worker died in ``max_deliveries`` starts: recorded as failed, not run."""


def _claimed(job: Job, handlers: list[Handler], states: Mapping[str, int], most: int) -> Claimed:
    fresh: list[Handler] = []
    again: list[Handler] = []
    dead: list[Outcome] = []
    done: list[str] = []
    held: list[str] = []
    for h in handlers:
        n = states.get(h.name, COMPLETED)
        if n == COMPLETED:
            done.append(h.name)
        elif n < 0:
            held.append(h.name)
        elif n > most:
            dead.append(Outcome(h.name, died(n - 1)))
        elif n == FRESH:
            fresh.append(h)
        else:
            again.append(h)
    if done:
        log.info("event %s: skipping %s, completed before", job.event.id, ", ".join(sorted(done)))
    if held:
        log.info("event %s: skipping %s, another copy of the message runs it", job.event.id, ", ".join(sorted(held)))
    if again:
        log.warning(
            "event %s: running %s again, one at a time: a worker died while running them",
            job.event.id,
            ", ".join(h.name for h in again),
        )
    again.sort(key=lambda h: states[h.name])
    job = replace(job, deliveries={h.name: states[h.name] for h in fresh + again})
    return Claimed(job, fresh, again, dead)


async def _claim(books: Bookkeeper, pairs: list[tuple[Job, list[Handler]]]) -> list[Claimed]:
    states = await books.claim([(job, [h.name for h in handlers]) for job, handlers in pairs])
    return [_claimed(job, handlers, s, books.max_deliveries) for (job, handlers), s in zip(pairs, states, strict=True)]


async def _run_claimed(claimed: Claimed, books: Bookkeeper) -> list[Outcome]:
    """Run the claimed async handlers on the loop: fresh ones together, then the others one by one."""
    job = claimed.job
    outcomes = claimed.dead + await run_async(claimed.fresh, job, books)
    for h in claimed.again:
        await books.started(job, h.name, job.deliveries[h.name])
        outcomes += await run_async([h], job, books)
    return outcomes


def _run_claimed_here(claimed: Claimed, loop: Loop, books: Bookkeeper) -> list[Outcome]:
    """:func:`_run_claimed` for a mix of sync (run in this thread) and async handlers."""
    job = claimed.job
    async_handlers = [h for h in claimed.fresh if h.is_async]
    pending = loop.submit(run_async(async_handlers, job, books)) if async_handlers else None
    try:
        outcomes = [run_sync(h, job, loop, books) for h in claimed.fresh if not h.is_async]
        if pending is not None:
            outcomes = pending.result() + outcomes
    except BaseException:  # this thread was interrupted (a soft time limit, termination)
        if pending is not None:
            pending.cancel()  # the async handlers must not run on unseen
        raise
    outcomes = claimed.dead + outcomes
    for h in claimed.again:
        loop.run(books.started(job, h.name, job.deliveries[h.name]))
        outcomes += loop.run(run_async([h], job, books)) if h.is_async else [run_sync(h, job, loop, books)]
    return outcomes


def _needs_settling(outcomes: list[Outcome]) -> bool:
    return any(o.error is not None or not o.recorded for o in outcomes)


async def _handle_async(job: Job, handlers: list[Handler], books: Bookkeeper) -> list[Outcome]:
    """The whole job on the loop, for events whose handlers are all async: one thread hop."""
    [claimed] = await _claim(books, [(job, handlers)])
    outcomes = await _run_claimed(claimed, books)
    if _needs_settling(outcomes):
        await books.settle(claimed.job, outcomes)
    return outcomes


class SettleFailed(Exception):
    """Settling some jobs of a packed message failed; ``errors`` holds why."""

    def __init__(self, errors: list[BaseException]) -> None:
        super().__init__(f"{len(errors)} job(s) could not be settled: {errors[0]!r}")
        self.errors = errors


async def _handle_async_many(pairs: list[tuple[Job, list[Handler]]], books: Bookkeeper) -> list[Outcome]:
    """All jobs of a packed message on the loop at once: one claim for all."""
    claimed = await _claim(books, pairs)

    async def one(c: Claimed) -> list[Outcome]:
        outcomes = await _run_claimed(c, books)
        if _needs_settling(outcomes):
            await books.settle(c.job, outcomes)
        return outcomes

    if any(c.again for c in claimed):
        # Back after its worker died: one event after the other, those cut short
        # fewest times first, so only the job that kills the process counts again.
        claimed.sort(key=lambda c: max((c.job.deliveries[h.name] for h in c.again), default=0))
        results: list[list[Outcome] | BaseException] = []
        for c in claimed:
            try:
                results.append(await one(c))
            except Exception as exc:
                results.append(exc)
    else:
        results = await asyncio.gather(*(one(c) for c in claimed), return_exceptions=True)
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

    The handlers are claimed first (:meth:`Bookkeeper.claim`): those that completed
    for this event before, or that another copy of the message runs, are skipped;
    those whose worker died in each of ``max_deliveries`` starts are recorded as
    failed (:class:`WorkerLostError`) instead of run, and those taken over from a
    delivery that died run one at a time after the others (:class:`Claimed`). Async handlers
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
    [claimed] = loop.run(_claim(books, [(job, handlers)]))
    outcomes = _run_claimed_here(claimed, loop, books)
    if _needs_settling(outcomes):
        loop.run(books.settle(claimed.job, outcomes))
    return outcomes
