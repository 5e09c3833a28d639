"""A message back after its process died runs alone on the process' loop.

A process that dies counts a start against every job running in it (the claims of
``worker.completions``), and a job whose process died ``EARNEVENTS_MAX_DELIVERIES`` times is
recorded as failed rather than run again. Under ``-P threads`` a process runs many messages at
once, so a handler that keeps killing its process would take the jobs running beside it to that
count too. So a message whose claims were taken over (it came back after a death) enters the
loop's :class:`Gate` alone: it waits until the messages running there have finished, and no
other message starts until it has. If it kills the process again, only its own jobs count that
death. Under prefork and solo a process runs one message at a time, and the gate never waits.

The waits are bounded (:data:`ALONE_WAIT`): a handler hung without a timeout, on either side,
holds the others back that long at most, after which they run anyway (isolation is then lost
for that death, liveness is not).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

ALONE_WAIT = 30.0
"""Seconds a message waits at most for the gate: alone, for the ones running; any other, for
the one running alone (or waiting to)."""


class Gate:
    """Many messages at once, or one alone (see the module). One per process' loop."""

    def __init__(self) -> None:
        self._running = 0  # messages inside, not alone
        self._alone = 0  # messages inside alone (more than one only after a bounded wait ran out)
        self._queued = 0  # messages waiting to run alone
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:  # made on the loop that uses it
            self._changed = asyncio.Condition()
        return self._changed

    @asynccontextmanager
    async def enter(self, alone: bool) -> AsyncIterator[None]:
        """Run the block alone (``alone``) or beside others."""
        changed = self._condition()
        async with changed:
            if alone:
                self._queued += 1
                try:
                    await _wait(changed, lambda: self._running == 0 and self._alone == 0)
                finally:
                    self._queued -= 1
                self._alone += 1
            else:
                await _wait(changed, lambda: self._alone == 0 and self._queued == 0)
                self._running += 1
        try:
            yield
        finally:
            async with changed:
                if alone:
                    self._alone -= 1
                else:
                    self._running -= 1
                changed.notify_all()


async def _wait(changed: asyncio.Condition, ready: Callable[[], bool]) -> None:
    with suppress(asyncio.TimeoutError):
        await asyncio.wait_for(changed.wait_for(ready), ALONE_WAIT)
