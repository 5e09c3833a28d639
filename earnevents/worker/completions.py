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


class Completions:
    """Reads and writes ``earnevents:done:<event id>:<handler>`` keys with a TTL."""

    def __init__(self, client: Callable[[], aioredis.Redis], window: float) -> None:
        self._client = client
        self.window = window

    async def done(self, event_id: str, handlers: Iterable[str]) -> set[str]:
        """Which of ``handlers`` already completed for ``event_id``."""
        names = list(handlers)
        if not names or self.window <= 0:
            return set()
        flags = await self._client().mget([keys.completed(event_id, name) for name in names])
        return {name for name, flag in zip(names, flags, strict=True) if flag is not None}

    async def mark(self, event_id: str, handlers: Iterable[str]) -> None:
        """Remember that ``handlers`` completed for ``event_id``."""
        names = list(handlers)
        if not names or self.window <= 0:
            return
        ttl = int(self.window * 1000)
        if len(names) == 1:  # the usual case: one command, no pipeline object
            await self._client().set(keys.completed(event_id, names[0]), 1, px=ttl)
            return
        pipe = self._client().pipeline(transaction=False)
        for name in names:
            pipe.set(keys.completed(event_id, name), 1, px=ttl)
        await pipe.execute()
