"""One persistent asyncio event loop per worker process, in a thread of its own.

Async handlers and the worker's Redis/MongoDB clients all live on this loop, so
connections are reused across messages (no ``asyncio.run`` per message). Task
threads submit coroutines to it: with the prefork pool that is one thread per
child, with ``-P threads -c N`` it is N threads sharing the loop, so one process
runs many async handlers at once. The loop is created lazily in the process
that uses it, which with prefork is the child, after fork.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from ..logtext import get_logger

T = TypeVar("T")

log = get_logger(__name__)


class LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="earnevents-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        while True:
            try:
                self.loop.run_forever()
            except BaseException:  # SystemExit/KeyboardInterrupt out of a task: the loop must go on
                log.exception("the earnevents loop stopped on an exception; running it again")
                continue
            if self._stopping:
                return
            log.error("something other than the worker stopped the earnevents loop; running it again")

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the loop; the future resolves in any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result in the calling thread.

        If the wait ends early (``timeout``, or an exception raised in this thread such
        as Celery's SoftTimeLimitExceeded), ``coro`` is cancelled: nothing runs on
        unseen.
        """
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


_lock = threading.Lock()
_current: tuple[int, LoopThread] | None = None


def process_loop() -> LoopThread:
    """This process' loop thread, created on first use (after fork, in a child)."""
    global _current
    with _lock:
        if _current is None or _current[0] != os.getpid():
            _current = (os.getpid(), LoopThread())
        return _current[1]


def stop_process_loop() -> None:
    global _current
    with _lock:
        entry, _current = _current, None
    if entry is not None and entry[0] == os.getpid():
        entry[1].stop()
