"""The publisher's side of the event log: records written in the background, group-committed.

``publish`` hands its records to :meth:`Recorder.add` and returns without waiting: a
background task on the caller's loop writes what has gathered in one round trip
(one Redis pipeline, one MongoDB ``bulk_write``), and while that write is in flight the
next records gather for the one after. A caller never waits for the log, and a log
store that is down never fails a publish: the records that could not be written are
counted in a warning (workers fill in the event's fields when they record its handlers).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence

from ..logtext import get_logger
from .base import EventLogStore
from .record import Change

log = get_logger(__name__)

MAX_PENDING = 100_000
"""Changes a loop holds while the store is slow; beyond, new ones are dropped (and counted)."""

BATCH = 1000
"""Changes written in one round trip at most."""


class Recorder:
    """Background writer of one store, one buffer and one writing task per event loop."""

    def __init__(self, store: EventLogStore) -> None:
        self.store = store
        self._pending: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Change]] = weakref.WeakKeyDictionary()
        self._tasks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
            weakref.WeakKeyDictionary()
        )
        self.dropped = 0

    def add(self, changes: Sequence[Change]) -> None:
        """Queue ``changes`` for writing; returns at once (call from the loop's thread)."""
        loop = asyncio.get_running_loop()
        pending = self._pending.setdefault(loop, [])
        room = MAX_PENDING - len(pending)
        if room < len(changes):
            self.dropped += len(changes) - max(room, 0)
            changes = changes[: max(room, 0)]
        pending.extend(changes)
        task = self._tasks.get(loop)
        if task is None or task.done():
            self._tasks[loop] = loop.create_task(self._drain(pending))

    async def _drain(self, pending: list[Change]) -> None:
        while pending:
            batch = pending[:BATCH]
            del pending[:BATCH]
            try:
                await self.store.write(batch)
            except Exception as exc:  # never the publisher's problem
                self.dropped += len(batch)
                log.warning(
                    "event log: could not record %d change(s) of published events (%r); %d lost so far",
                    len(batch),
                    exc,
                    self.dropped,
                )

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait (at most ``timeout`` s) until what this loop queued is written or given up."""
        task = self._tasks.get(asyncio.get_running_loop())
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except asyncio.TimeoutError:
                log.warning("event log: records of published events still unwritten after %gs", timeout)
