"""Counting handler outcomes per minute for :mod:`earnevents.stats` (the dashboard's chart).

``dispatch`` tells it about every job, as it tells the event log, the metrics and
tracing; :func:`finished` and :func:`settled` add to an in-memory count (one dict
update). A task on the process' event loop (:func:`flush_every`, started by the worker runtime in the process that runs
handlers, so each prefork child counts its own) writes what gathered every
:data:`FLUSH_INTERVAL` seconds in one pipeline of HINCRBYs, and nothing when nothing
happened (an idle worker costs Redis nothing). Counts that could not be written are kept
and written with the next flush.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .. import keys
from ..logtext import get_logger
from ..stats import KEEP, minute_of
from .jobs import Job, Outcome

log = get_logger(__name__)

FLUSH_INTERVAL = 1.0
"""Seconds between two writes of the counts."""

MAX_MINUTES = KEEP // 60
"""Minutes of counts kept while Redis is unreachable (older ones would have expired anyway)."""

_counts: Counter[tuple[str, int, str]] = Counter()  # (queue, minute, field) -> n
_lock = threading.Lock()


def _add(queue: str, at: float, field: str) -> None:
    with _lock:
        _counts[(queue, minute_of(at), field)] += 1


def started(job: Job, handlers: Iterable[str]) -> None:
    """Starts are not counted per minute (the metrics count them)."""


def finished(job: Job, outcomes: Iterable[Outcome]) -> None:
    """The tries of ``outcomes`` ended: count the successes (failures count when settled)."""
    for outcome in outcomes:
        if outcome.error is None:
            _add(job.queue, outcome.at, "succeeded")


def settled(job: Job, outcome: Outcome, retrying: bool) -> None:
    """A failed try was scheduled for a retry (``retrying``) or recorded as a failed job."""
    _add(job.queue, outcome.at, "retried" if retrying else "failed")


def _take() -> Counter[tuple[str, int, str]]:
    global _counts
    with _lock:
        taken, _counts = _counts, Counter()
    return taken


def _give_back(counts: Counter[tuple[str, int, str]]) -> None:
    with _lock:
        _counts.update(counts)
        newest = max((minute for _, minute, _ in _counts), default=0)
        for key in [k for k in _counts if k[1] <= newest - MAX_MINUTES]:
            del _counts[key]


async def flush(redis: Callable[[], Any]) -> None:
    """Write the counts gathered so far with the asyncio Redis client ``redis()`` gives
    (asked on the loop that awaits this); counts not written are kept."""
    counts = _take()
    if not counts:
        return
    try:
        pipe = redis().pipeline(transaction=False)
        hashes = set()
        for (queue, minute, field), n in counts.items():
            key = keys.stats_minute(queue, minute)
            pipe.hincrby(key, field, n)
            hashes.add(key)
        for key in hashes:
            pipe.expire(key, KEEP)
        await pipe.execute()
    except BaseException:
        _give_back(counts)
        raise


async def flush_every(redis: Callable[[], Any], interval: float = FLUSH_INTERVAL) -> None:
    """Flush every ``interval`` seconds until cancelled; an outage is logged once."""
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            await flush(redis)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not failing:
                log.warning("handler stats: cannot write to Redis (%r); counts are kept until it is back", exc)
            failing = True
        else:
            if failing:
                log.info("handler stats: Redis works again")
            failing = False
