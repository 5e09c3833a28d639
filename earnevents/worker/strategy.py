"""The earnevents task's Celery strategy: under ``-P threads``, all-async events skip the pool.

Celery builds a request for every message it takes (its default strategy: revocation,
ETA, rate limits, the "received" event) and hands it to the pool. Under ``-P threads``
a pool thread then runs the task, whose handlers, when they are all ``async def``, run
on the process' loop (``worker.loop``) while that thread only waits for them: a thread
hand-off, Celery's tracing and a wake-up each way per message, about a third of an
I/O-bound worker's CPU per event (bench figure 5a).

Here the request goes to the task's *taker* first (``worker.app`` registers it with
:func:`take_with`): for a message it can run on the loop (every event decodes and has
only ``async def`` handlers) it returns a function starting that run. The request is
then completed as the pool completes it: accepted when the run starts (``celery
inspect active`` lists it; task events are sent as usual), then succeeded and
acknowledged, or handed back to the queue (``reject(requeue=True)``) when the run
raised, exactly where the task would have raised ``Reject``. Everything else (a sync
handler, a malformed message, a retry naming an unknown handler, a revoked task) goes
to the pool as before, and so does everything under the other pools.

Celery's per-task signals (``task_prerun``, ``task_postrun``, ``task_success``) are not
sent for the messages run on the loop: they belong to the pool's tracer. A warm
shutdown waits for them as the threads pool waits for its threads (before the pool
stops); a cold one leaves them unacknowledged, to be redelivered.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_all
from typing import Any

from celery.concurrency.thread import TaskPool as ThreadsPool
from celery.worker import strategy as celery_strategy
from celery.worker.state import task_ready

from ..logtext import get_logger

log = get_logger(__name__)

Taker = Callable[[Any], "Callable[[], Future[Any]] | None"]
"""Given a Celery request: None (the pool runs it), or a function starting its run on the loop."""

_takers: dict[str, Taker] = {}

TRACE_LOGGER = "celery.app.trace"
"""Celery's logger of the pool's "succeeded in" line per task: this module writes that line
(to its own logger) when Celery's is on (EARNEVENTS_TASK_LOG)."""


def take_with(task_name: str, taker: Taker) -> None:
    """Route the requests of ``task_name`` through ``taker`` under the threads pool."""
    _takers[task_name] = taker


class _Runs:
    """The requests a threads pool's process runs on its loop; its stop waits for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[Future[Any]] = set()

    def add(self, run: Future[Any]) -> None:
        with self._lock:
            self._running.add(run)

    def discard(self, run: Future[Any]) -> None:
        with self._lock:
            self._running.discard(run)

    def wait(self) -> None:
        with self._lock:
            running = list(self._running)
        if running:
            log.info("waiting for %d event(s) running on the loop", len(running))
            wait_all(running)


def _runs_of(pool: ThreadsPool) -> _Runs:
    """The pool's :class:`_Runs`, its ``on_stop`` made to wait for them first (once per pool)."""
    runs: _Runs | None = getattr(pool, "_earnevents_runs", None)
    if runs is None:
        runs = _Runs()
        stop = pool.on_stop

        def on_stop() -> None:
            runs.wait()
            stop()

        pool._earnevents_runs = runs
        pool.on_stop = on_stop
    return runs


def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """``Task.Strategy``: Celery's default one, whose hand-off to a threads pool first
    offers each request to the task's taker."""
    taker = _takers.get(task.name)
    pool = consumer.pool
    if taker is None or not isinstance(pool, ThreadsPool):
        return celery_strategy.default(task, app, consumer, **kwargs)
    return celery_strategy.default(task, app, _HandOff(consumer, taker, _runs_of(pool)), **kwargs)


class _HandOff:
    """The consumer as Celery's default strategy sees it, with its hand-off to the pool
    (``on_task_request``, read once when the strategy is built) replaced."""

    def __init__(self, consumer: Any, taker: Taker, runs: _Runs) -> None:
        self._consumer = consumer
        self._taker = taker
        self._runs = runs
        self._to_pool = consumer.on_task_request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    def on_task_request(self, req: Any) -> None:
        start = None if req.revoked() else self._taker(req)
        if start is None:
            self._to_pool(req)  # also what discards a revoked request
            return
        began = time.monotonic()
        req.on_accepted(os.getpid(), began)
        run = start()
        self._runs.add(run)
        run.add_done_callback(lambda done: self._finish(req, done, began))

    def _finish(self, req: Any, run: Future[Any], began: float) -> None:
        """Complete ``req`` as the pool would: succeeded (acknowledged), or handed back."""
        self._runs.discard(run)
        if run.cancelled() or run.exception() is not None:
            task_ready(req)
            req.reject(requeue=True)  # the run logged why (the loop closing: the worker stops)
            return
        runtime = time.monotonic() - began
        if logging.getLogger(TRACE_LOGGER).isEnabledFor(logging.INFO):
            log.info("Task %s[%s] succeeded in %ss on the loop", req.name, req.id, round(runtime, 6))
        req.on_success((False, None, runtime))
