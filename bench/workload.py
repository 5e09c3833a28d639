"""The workload every side sends, with nothing but the standard library.

The arq side runs from its own virtualenv (arq pins redis-py below 6, earnevents needs 6.1 or
later), where earnevents is not installed: what it shares with the other sides lives here.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

PAYLOAD = {
    "user_id": 123456,
    "email": "someone@example.com",
    "plan": "pro",
    "tags": ["a", "b", "c"],
    "amount": "19.99",
    "currency": "EUR",
    "note": "x" * 60,
}
"""~200 bytes of JSON: a delayed event's data (delayed_memory), a stored record's (capacity, failed_jobs_scale)."""


def payload(key: str, **extra: Any) -> dict[str, Any]:
    """The ~200-byte JSON dict every figure sends."""
    return {
        "key": key,
        "user_id": 123456,
        "email": "someone@example.com",
        "plan": "pro",
        "tags": ["a", "b", "c"],
        "note": "x" * 64,
        **extra,
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class StallTicker:
    """Measures the event loop's worst lateness while something runs on it."""

    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, time.perf_counter() - t - self.period)

    async def __aenter__(self) -> StallTicker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
