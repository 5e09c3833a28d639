"""Redis' clock as the worker reads it: once a minute, carried forward on the monotonic clock."""

from __future__ import annotations

import pytest

from earnevents.worker import clock
from earnevents.worker.clock import RedisClock


class Fake:
    """A monotonic clock the test moves, and a Redis TIME that counts its reads."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.redis = 5_000_000.25
        self.reads = 0

    def time(self) -> tuple[int, int]:
        self.reads += 1
        return int(self.redis), round((self.redis % 1) * 1_000_000)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Fake:
    f = Fake()
    monkeypatch.setattr(clock.time, "monotonic", lambda: f.mono)
    return f


def test_reads_redis_once_and_then_carries_its_time_forward(fake):
    # Given a clock that read Redis' time
    c = RedisClock(fake.time)
    assert c.now() == pytest.approx(5_000_000.25)
    # When 30 s pass on the monotonic clock (Redis' clock moving alike)
    fake.mono += 30
    fake.redis += 30
    # Then its time moved 30 s without reading Redis again
    assert c.now() == pytest.approx(5_000_030.25) and fake.reads == 1


def test_reads_redis_again_after_a_minute(fake):
    # Given a clock that read Redis' time, and Redis' clock that was then set 5 s ahead
    c = RedisClock(fake.time)
    c.now()
    fake.redis += 5
    # When more than a minute passes
    fake.mono += clock.RESYNC + 1
    fake.redis += clock.RESYNC + 1
    # Then it reads Redis again and follows it
    assert c.now() == pytest.approx(fake.redis) and fake.reads == 2
