"""Per-minute handler outcomes: what workers count and write, and the last hour as read back."""

from __future__ import annotations

import time
from typing import Any

import pytest

from earnevents import Event, keys, runtime, stats
from earnevents.worker import stats as worker_stats
from earnevents.worker.jobs import Job, Outcome


def job(queue: str) -> Job:
    return Job(event=Event("a.b", {}), handler=None, attempt=0, retry_policy=None, queue=queue)


@pytest.fixture(autouse=True)
def empty_counts() -> None:
    worker_stats._take()  # what an earlier test left


async def test_outcomes_are_counted_per_minute_and_read_back_as_the_last_hour(bus, queue):
    # Given outcomes in this minute and three minutes ago, for two queues
    now = time.time()
    earlier = now - 180
    worker_stats.finished(job(queue), [Outcome("m.h", at=now), Outcome("m.g", at=now), Outcome("m.f", ValueError())])
    worker_stats.settled(job(queue), Outcome("m.f", ValueError(), at=now), retrying=True)
    worker_stats.settled(job(queue), Outcome("m.f", ValueError(), at=earlier), retrying=False)
    worker_stats.finished(job("other"), [Outcome("m.h", at=now)])
    # When they are flushed
    await worker_stats.flush(lambda: runtime.current().redis)
    # Then the hour reads sixty minutes, the current one last, zeros where nothing happened
    hour = await stats.per_minute(runtime.current().redis, queue, now=now)
    assert len(hour) == 60 and hour[-1].minute == stats.minute_of(now)
    assert (hour[-1].succeeded, hour[-1].retried, hour[-1].failed) == (2, 1, 0)
    assert (hour[-4].succeeded, hour[-4].retried, hour[-4].failed) == (0, 0, 1)
    assert sum(m.succeeded + m.retried + m.failed for m in hour) == 4
    # And each minute's hash expires
    ttl = await runtime.current().redis.ttl(keys.stats_minute(queue, stats.minute_of(now)))
    assert 0 < ttl <= stats.KEEP
    # And a second flush adds to what is there
    worker_stats.finished(job(queue), [Outcome("m.h", at=now)])
    await worker_stats.flush(lambda: runtime.current().redis)
    assert (await stats.per_minute(runtime.current().redis, queue, minutes=1, now=now))[0].succeeded == 3


async def test_counts_a_flush_could_not_write_are_kept_for_the_next(bus, queue):
    class Down:
        def pipeline(self, **kwargs: Any) -> Any:
            raise ConnectionError("Redis went away")

    now = time.time()
    worker_stats.settled(job(queue), Outcome("m.f", ValueError(), at=now), retrying=False)
    with pytest.raises(ConnectionError):
        await worker_stats.flush(lambda: Down())
    await worker_stats.flush(lambda: runtime.current().redis)
    [minute] = await stats.per_minute(runtime.current().redis, queue, minutes=1, now=now)
    assert minute.failed == 1


def test_counts_kept_through_a_long_outage_are_bounded_to_the_minutes_redis_would_keep(queue):
    now = time.time()
    for minutes_ago in range(0, worker_stats.MAX_MINUTES + 30, 10):
        worker_stats.finished(job(queue), [Outcome("m.h", at=now - 60 * minutes_ago)])
    worker_stats._give_back(worker_stats._take())
    kept = worker_stats._take()
    oldest = min(minute for _, minute, _ in kept)
    assert stats.minute_of(now) - oldest < worker_stats.MAX_MINUTES


async def test_nothing_to_write_costs_no_round_trip(bus):
    calls = []
    await worker_stats.flush(lambda: calls.append(1))
    assert calls == []
