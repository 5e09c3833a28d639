"""Plumbing shared by the benchmark figures: payloads, workers, counters, stall ticker."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from earnevents.testing import WorkerProcess, wait_for

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / ".run"


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


def earnevents_worker(
    redis_url: str,
    queue: str,
    pool: str = "prefork",
    concurrency: int = 2,
    event_log: bool = False,
    modules: str = "bench.handlers",
    mongo_url: str = "",
    database: str = "earnevents",
) -> WorkerProcess:
    env = {
        "EARNEVENTS_REDIS_URI": redis_url,
        "EARNEVENTS_QUEUE": queue,
        "EARNEVENTS_MONGO_URI": mongo_url,
        "EARNEVENTS_DATABASE": database,
        "EARNEVENTS_HANDLER_MODULES": modules,
        "EARNEVENTS_EVENT_LOG": "1" if event_log else "0",
        "PYTHONPATH": str(ROOT),
    }
    LOGS.mkdir(exist_ok=True)
    return WorkerProcess(
        env, pool=pool, concurrency=concurrency, cwd=str(ROOT), log_path=str(LOGS / f"bench-{queue}.log")
    )


def celery_worker(redis_url: str, queue: str, pool: str = "prefork", concurrency: int = 2) -> WorkerProcess:
    env = {"BENCH_REDIS_URI": redis_url, "BENCH_QUEUE": queue, "PYTHONPATH": str(ROOT)}
    LOGS.mkdir(exist_ok=True)
    worker = WorkerProcess(
        env, pool=pool, concurrency=concurrency, cwd=str(ROOT), log_path=str(LOGS / f"bench-{queue}.log")
    )
    worker.args[worker.args.index("earnevents")] = "bench.plain_celery"
    return worker


def wait_count(client: redis.Redis, key: str, n: int, timeout: float) -> float:
    """Poll until the counter ``key`` reaches ``n``; returns the time it did."""
    wait_for(lambda: int(client.get(key) or 0) >= n, timeout, f"{n} handled ({key})", interval=0.01)
    return time.perf_counter()


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
