"""Completed (event, handler) pairs, remembered so a redelivered message skips them.

A message comes back after a worker died between a handler finishing and the
acknowledgement, or when an event was enqueued twice. Handlers that already
completed for that event are skipped for ``window`` seconds (default 24 h);
handlers that did not complete run again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import redis.asyncio as aioredis

from .. import keys
from ..groupcommit import GroupCommit


class Completions:
    """Reads and writes ``earnevents:done:<event id>:<handler>`` keys with a TTL."""

    def __init__(self, client: Callable[[], aioredis.Redis], window: float) -> None:
        self._client = client
        self.window = window
        self._commit = GroupCommit(self._write)

    async def done(self, event_id: str, handlers: Iterable[str]) -> set[str]:
        """Which of ``handlers`` already completed for ``event_id``."""
        names = list(handlers)
        if not names or self.window <= 0:
            return set()
        flags = await self._client().mget([keys.completed(event_id, name) for name in names])
        return {name for name, flag in zip(names, flags, strict=True) if flag is not None}

    async def done_many(self, pairs: list[tuple[str, list[str]]]) -> list[set[str]]:
        """:meth:`done` for several (event id, handlers) pairs in one round trip."""
        if self.window <= 0:
            return [set() for _ in pairs]
        names = [(event_id, name) for event_id, handlers in pairs for name in handlers]
        if not names:
            return [set() for _ in pairs]
        flags = await self._client().mget([keys.completed(event_id, name) for event_id, name in names])
        found = {pair for pair, flag in zip(names, flags, strict=True) if flag is not None}
        return [{name for name in handlers if (event_id, name) in found} for event_id, handlers in pairs]

    async def mark(self, event_id: str, handlers: Iterable[str]) -> None:
        """Remember that ``handlers`` completed for ``event_id``.

        Concurrent calls share round trips (the handlers of a packed message finish
        together): the first call writes at once, calls arriving meanwhile are
        written together right after it, and each returns once its own are stored.
        """
        names = list(handlers)
        if not names or self.window <= 0:
            return
        await self._commit([keys.completed(event_id, name) for name in names])

    async def _write(self, completed: list[str], _deadline: float) -> None:
        ttl = int(self.window * 1000)
        if len(completed) == 1:  # the usual case: one command, no pipeline object
            await self._client().set(completed[0], 1, px=ttl)
            return
        pipe = self._client().pipeline(transaction=False)
        for key in completed:
            pipe.set(key, 1, px=ttl)
        await pipe.execute()
