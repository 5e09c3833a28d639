"""Group commit: concurrent callers of one asyncio loop share round trips.

Used for publishing (concurrent publishes share an LPUSH) and by workers for
completion records (the handlers of a packed message finish together).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Calls ``send`` with the items of callers that arrive while a send is in flight.

    The first caller sends its items at once, so a lone caller waits for nobody.
    Callers arriving meanwhile wait; the first caller then sends all of theirs in
    one call (in arrival order), again until none is waiting. Each caller returns
    once its own items are sent, and a failure reaches every caller it concerns.
    Use one instance per event loop.
    """

    def __init__(self, send: Callable[[list[T]], Awaitable[None]]) -> None:
        self._send = send
        self._waiting: list[tuple[list[T], asyncio.Future[None]]] | None = None

    async def __call__(self, items: list[T]) -> None:
        if self._waiting is not None:  # a send is in flight: join the next one
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append((items, future))
            await future
            return
        waiting: list[tuple[list[T], asyncio.Future[None]]] = []
        self._waiting = waiting
        interrupted: BaseException | None = None  # e.g. our cancellation: raised once all are served
        try:
            await self._send(items)
        finally:
            while waiting:
                batch = list(waiting)
                waiting.clear()
                try:
                    await self._send([item for group, _ in batch for item in group])
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    if not isinstance(exc, Exception):
                        interrupted = exc
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
            self._waiting = None
        if interrupted is not None:
            raise interrupted
