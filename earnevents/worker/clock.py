"""Redis' clock, for the visibility stamps of unacknowledged messages.

kombu stamps a delivered message with the worker machine's ``time.time()`` and
gives it back to the queue once ``time.time()`` of whichever worker sweeps is
``visibility_timeout`` later; with skewed clocks a worker ahead of the others gives
back their messages early (run twice), one behind gives back dead workers' late.
Every stamp and every comparison uses Redis' clock (TIME) instead, as the delay
schedule and the fetch script do. It is read once a minute and carried forward
with the local monotonic clock, which no skew or step of the wall clock affects,
so a stamp costs no round trip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

RESYNC = 60.0
"""Seconds between two reads of Redis' clock."""


class RedisClock:
    """Redis' time in seconds, from ``read_time`` (redis-py's ``Redis.time``) now and then."""

    def __init__(self, read_time: Callable[[], tuple[int, int]]) -> None:
        self._read_time = read_time
        self._lock = threading.Lock()
        self._anchor: tuple[float, float] | None = None  # (Redis time, monotonic) read together

    def now(self) -> float:
        """Redis' current time (unix seconds); raises what ``read_time`` raises when it must read."""
        with self._lock:
            anchor = self._anchor
            if anchor is None or time.monotonic() - anchor[1] > RESYNC:
                anchor = self._anchor = self._read()
            return anchor[0] + (time.monotonic() - anchor[1])

    def _read(self) -> tuple[float, float]:
        before = time.monotonic()
        seconds, microseconds = self._read_time()
        after = time.monotonic()
        # Redis read its clock somewhere in the round trip: assume the middle.
        return int(seconds) + int(microseconds) / 1_000_000, (before + after) / 2
