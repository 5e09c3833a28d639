"""Handler outcomes per minute, per queue: what the dashboard's overview charts.

Workers add up, per minute, the handler tries that succeeded, the failed ones scheduled
for a retry and those recorded as failed jobs (``worker.stats``), and write the sums to
one Redis hash per queue and minute, kept :data:`KEEP` seconds. Reading the last hour
is one pipeline of sixty HGETALLs. Counts are as exact as the workers' writes: a worker
killed between two flushes loses at most the last :data:`worker.stats.FLUSH_INTERVAL`
seconds of its counts (Prometheus metrics, when on, are the exact source).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from . import keys

FIELDS = ("succeeded", "retried", "failed")
"""The counts a minute holds."""

KEEP = 2 * 3600
"""Seconds a minute's hash lives after its last write."""


@dataclass(frozen=True)
class MinuteStats:
    """Handler outcomes of one queue in the minute starting at ``minute`` * 60 (unix seconds)."""

    minute: int
    succeeded: int = 0
    retried: int = 0
    failed: int = 0

    @property
    def start(self) -> float:
        return self.minute * 60.0


def minute_of(at: float) -> int:
    return int(at // 60)


async def per_minute(client: Any, queue: str, minutes: int = 60, now: float | None = None) -> list[MinuteStats]:
    """The last ``minutes`` minutes of ``queue`` (the current one last), from the asyncio Redis ``client``."""
    if minutes <= 0:
        return []
    last = minute_of(time.time() if now is None else now)
    wanted = list(range(last - minutes + 1, last + 1))
    pipe = client.pipeline(transaction=False)
    for minute in wanted:
        pipe.hgetall(keys.stats_minute(queue, minute))
    replies = await pipe.execute()
    out = []
    for minute, reply in zip(wanted, replies, strict=True):
        counts = {_text(k): _count(v) for k, v in (reply or {}).items()}
        out.append(MinuteStats(minute, *(counts.get(f, 0) for f in FIELDS)))
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _count(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0
