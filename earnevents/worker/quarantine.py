"""A message back after its process died runs alone in its process.

A process that dies counts a start against every job running in it (the claims of
``worker.completions``), and a job whose process died ``EARNEVENTS_MAX_DELIVERIES`` times is
recorded as failed rather than run again. Under ``-P threads`` a process runs many messages at
once, so a handler that keeps killing its process would take the jobs running beside it to that
count too. So a message whose claims were taken over (it came back after a death) enters the
process' :class:`Gate` alone: it waits until the messages running there have finished, and no
other message starts until it has. If it kills the process again, only its own jobs count that
death. Messages run on the loop (all-async events) enter it from the loop, the others from their
pool thread (sync handlers run there). Under prefork and solo a process runs one message at a
time, and the gate never waits.

The waits are bounded (:data:`ALONE_WAIT`): a handler hung without a timeout, on either side,
holds the others back that long at most, after which they run anyway (isolation is then lost
for that death, liveness is not).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager, suppress
from functools import partial
from typing import TypeVar

W = TypeVar("W")

ALONE_WAIT = 30.0
"""Seconds a message waits at most for the gate: alone, for the ones running; any other, for
the one running alone (or waiting to)."""


class Gate:
    """Many messages at once, or one alone (see the module). One per process, entered from the
    loop (:meth:`enter`) and from pool threads (:meth:`enter_here`); entering costs a lock when
    nobody waits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0  # messages inside, not alone
        self._alone = 0  # messages inside alone (more than one only after a bounded wait ran out)
        self._queued = 0  # messages waiting to run alone
        self._wakeups: list[Callable[[], object]] = []  # of those waiting, called on every exit

    @asynccontextmanager
    async def enter(self, alone: bool) -> AsyncIterator[None]:
        """Run the block alone (``alone``) or beside others, from the loop (never blocking it)."""
        loop = asyncio.get_running_loop()

        def waiter() -> tuple[asyncio.Future[None], Callable[[], object]]:
            woken: asyncio.Future[None] = loop.create_future()
            return woken, partial(loop.call_soon_threadsafe, _done, woken)

        with closing(self._waits(alone, waiter)) as waits:  # cancelled while waiting: closed
            for woken, seconds in waits:
                await asyncio.wait([woken], timeout=seconds)
        try:
            yield
        finally:
            self._leave(alone)

    @contextmanager
    def enter_here(self, alone: bool) -> Iterator[None]:
        """:meth:`enter` from a pool thread, which waits (bounded) if it must."""

        def waiter() -> tuple[threading.Event, Callable[[], object]]:
            woken = threading.Event()
            return woken, woken.set

        with closing(self._waits(alone, waiter)) as waits:  # interrupted (a soft time limit): closed
            for woken, seconds in waits:
                woken.wait(seconds)
        try:
            yield
        finally:
            self._leave(alone)

    def _waits(
        self, alone: bool, waiter: Callable[[], tuple[W, Callable[[], object]]]
    ) -> Generator[tuple[W, float], None, None]:
        """Until this message may enter (or its wait ran out), yields something to wait on (made
        by ``waiter`` with the function that wakes it) and how long at most. Closed before it
        finished (the waiting caller cancelled or interrupted), it takes the message out of the
        queue, so that the others no longer wait for it."""
        deadline = time.monotonic() + ALONE_WAIT
        self._queue(alone)
        entered = False
        try:
            while True:
                woken, wake = waiter()
                if self._try_take(alone, deadline, wake):
                    entered = True
                    return
                yield woken, max(0.0, deadline - time.monotonic())
        finally:
            if not entered:
                self._unqueue(alone)

    def _queue(self, alone: bool) -> None:
        if alone:
            with self._lock:
                self._queued += 1

    def _unqueue(self, alone: bool) -> None:
        """A message gave up waiting: the others may no longer wait for it."""
        if alone:
            with self._lock:
                self._queued -= 1
            self._leave(None)

    def _try_take(self, alone: bool, deadline: float, wakeup: Callable[[], object]) -> bool:
        """Enter if the gate lets this message in now or its wait ran out; else leave ``wakeup``
        to be called at the next exit and return False."""
        with self._lock:
            ready = (self._running == 0 and self._alone == 0) if alone else (self._alone == 0 and self._queued == 0)
            if ready or time.monotonic() >= deadline:
                if alone:
                    self._queued -= 1
                    self._alone += 1
                else:
                    self._running += 1
                return True
            self._wakeups.append(wakeup)
            return False

    def _leave(self, alone: bool | None) -> None:
        """A message left (alone or not; None: only wake the waiting, who look again)."""
        with self._lock:
            if alone:
                self._alone -= 1
            elif alone is not None:
                self._running -= 1
            wakeups, self._wakeups = self._wakeups, []
        for wake in wakeups:
            with suppress(RuntimeError):  # the waiter's loop closed meanwhile
                wake()


def _done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
