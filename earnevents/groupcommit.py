"""Group commit: concurrent callers of one asyncio loop share round trips.

Used for publishing (concurrent publishes share an LPUSH) and by workers for job
claims and completion records (the messages a threads pool runs at once, the handlers
of a packed message finishing together).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Waiter(Generic[T, R]):
    items: list[T]
    deadline: float
    future: asyncio.Future[list[R]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit(Generic[T, R]):
    """Calls ``send(items, deadline)`` with the items of callers that arrive while a send is in flight.

    A caller finding no send in flight sends its own items at once (a lone caller
    waits for nobody) and returns when they are sent. Callers arriving meanwhile
    wait; when the send in flight ends, all of theirs go out in one call (in
    arrival order), sent by a background task so that no caller waits for more
    than the send in flight plus its own. ``deadline`` (``loop.time()`` based,
    ``inf`` for none) is the earliest of the callers' in that call, so a send
    bounded by it never outlasts any of its callers' own deadlines.

    ``send`` returns None, or one result per item (in their order): each caller then gets
    the results of its own items.

    A caller cancelled (or timed out) while waiting withdraws its items if their
    send has not started; a failure reaches every caller whose items it carried.
    Use one instance per event loop.
    """

    def __init__(self, send: Callable[[list[T], float], Awaitable[Sequence[R] | None]]) -> None:
        self._send = send
        self._busy = False
        self._waiting: list[_Waiter[T, R]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def __call__(self, items: list[T], deadline: float = math.inf) -> list[R]:
        """Send ``items`` (now, or with the next send); their results (``[]`` when ``send`` gives none)."""
        if self._busy:  # a send is in flight: join the next one
            waiter: _Waiter[T, R] = _Waiter(items, deadline)
            self._waiting.append(waiter)
            try:
                return await waiter.future
            except asyncio.CancelledError:
                if waiter in self._waiting:  # not sent yet, and now never will be
                    self._waiting.remove(waiter)
                raise
        self._busy = True
        try:
            return list(await self._send(items, deadline) or ())
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        """The send in flight ended: serve whoever waits, in the background."""
        if self._waiting:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        else:
            self._busy = False

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    results = await self._send(
                        [item for waiter in batch for item in waiter.items], min(w.deadline for w in batch)
                    )
                except BaseException as exc:
                    if not isinstance(exc, Exception):  # cancelled (the loop is closing): the rest too
                        batch, self._waiting = batch + self._waiting, []
                    for waiter in batch:
                        _fail(waiter.future, exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    at = 0
                    for waiter in batch:
                        mine = list(results[at : at + len(waiter.items)]) if results is not None else []
                        at += len(waiter.items)
                        if not waiter.future.done():
                            waiter.future.set_result(mine)
        finally:
            self._busy = False
            self._drainer = None


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)
