"""One try of a handler: call it, bound it by its timeout, and turn whatever it does
into an :class:`~.jobs.Outcome`.

Anything a handler raises is its failure, BaseException included (the loop thread
survives it), except this process' own termination. ``async def`` handlers run on
the process' loop (cancelled at their timeout); plain ``def`` handlers run in the
calling task thread (interrupted by SIGALRM in the main thread, else run in a thread
of their own that is abandoned at the timeout); an awaitable a plain handler returns
is awaited on the loop. Free of Celery.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from ..context import _current as _current_job
from ..errors import HandlerTimeoutError
from ..event import Event
from ..handlers import Handler
from ..logtext import get_logger
from . import tracing
from .jobs import Bookkeeper, Job, Loop, Outcome, job_context

log = get_logger(__name__)


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
        return handler.call(event)
    if _can_alarm():
        with _alarm(timeout, handler.name):
            return handler.call(event)
    future: Future[Any] = Future()
    context = contextvars.copy_context()

    def call() -> None:
        try:
            future.set_result(context.run(handler.call, event))
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
    span = tracing.enter(job, handler.name)
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
        tracing.leave(span)
        _current_job.reset(token)
    return record_here(books, loop, job, handler.name)


def records_here(books: Bookkeeper) -> bool:
    """Whether ``books`` records completions from the calling thread (a blocking client:
    :class:`~.jobs.BlockingBookkeeper`)."""
    return getattr(books, "completed_blocking", None) is not None


def record_here(books: Bookkeeper, loop: Loop, job: Job, handler: str) -> Outcome:
    """:func:`_record` from the calling thread: on the bookkeeper's blocking client where it
    has one (:func:`records_here`, no hop to the loop), else on the loop."""
    if not records_here(books):
        return loop.run(_record(books, job, handler))
    return Outcome(handler, recorded=bool(books.completed_blocking(job, handler)))  # type: ignore[attr-defined]


async def _run_one(handler: Handler, job: Job, books: Bookkeeper, record: bool = True) -> Outcome:
    timeout = _timeout_of(handler, job)
    token = _current_job.set(job_context(job, handler.name))
    span = tracing.enter(job, handler.name)
    try:
        if timeout is None:  # the usual case: no timer, no wrapper
            await handler.call(job.event)
        else:
            await _within(handler.call(job.event), timeout, handler.name)
    except BaseException as exc:  # a handler's failure is data here, SystemExit too: the loop goes on
        if isinstance(exc, asyncio.CancelledError) and _being_cancelled():
            raise
        return Outcome(handler.name, exc)
    finally:
        tracing.leave(span)
        _current_job.reset(token)
    return await _record(books, job, handler.name) if record else Outcome(handler.name)


async def run_async(handlers: list[Handler], job: Job, books: Bookkeeper, record: bool = True) -> list[Outcome]:
    """Run ``async def`` handlers concurrently; one failing does not cancel the others.

    Each success is recorded as completed on the loop right away, unless ``record`` is
    False: the caller then records it (:func:`record_here`) or leaves it to ``settle``.
    """
    if len(handlers) == 1:  # the usual case: no task to create
        try:
            return [await _run_one(handlers[0], job, books, record)]
        except asyncio.CancelledError as exc:  # the handler's own doing, unless we are cancelled
            cancelling = getattr(asyncio.current_task(), "cancelling", None)  # Python 3.11+
            if cancelling is not None and cancelling():
                raise
            return [Outcome(handlers[0].name, exc)]
    results = await asyncio.gather(*(_run_one(h, job, books, record) for h in handlers), return_exceptions=True)
    return [
        r if isinstance(r, Outcome) else Outcome(h.name, r)  # BaseException such as CancelledError
        for h, r in zip(handlers, results, strict=True)
    ]
