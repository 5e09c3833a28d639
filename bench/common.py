"""Plumbing shared by the benchmark figures: workers of every side, counters (the payload and
stall ticker live in bench/workload.py, which the arq side imports from its own virtualenv)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import redis

from earnevents.testing import GaveUp, WorkerProcess, wait_for

from .workload import StallTicker, payload, unique

__all__ = [
    "ROOT",
    "PeerProcess",
    "StallTicker",
    "arq_python",
    "arq_worker",
    "celery_worker",
    "dramatiq_worker",
    "earnevents_worker",
    "payload",
    "unique",
    "wait_count",
]

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / ".run"
ARQ_VENV = ROOT / ".venv-arq"
"""arq's own virtualenv (`make bench` makes it): arq 0.28 requires redis-py < 6, earnevents >= 6.1."""


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


def wait_count(client: redis.Redis, key: str, n: int, timeout: float, interval: float = 0.01) -> float:
    """Poll until the counter ``key`` reaches ``n``; returns the time it did."""
    wait_for(lambda: int(client.get(key) or 0) >= n, timeout, f"{n} handled ({key})", interval=interval)
    return time.perf_counter()


class PeerProcess(WorkerProcess):
    """A peer's worker command (Dramatiq's, arq's) in its own process group, output to a log file.

    Ready once its log shows ``marker`` ``count`` times (once per worker process);
    ``stop()`` is the same warm shutdown (SIGTERM to the group, SIGKILL after a timeout).
    """

    def __init__(self, args: list[str], env: dict[str, str], marker: str, count: int, log_path: str) -> None:
        super().__init__(env, cwd=str(ROOT), log_path=log_path)
        self.args = args
        self.marker = marker
        self.count = count

    def wait_ready(self, timeout: float = 60, interval: float = 0.05) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise GaveUp(f"{self.args[2]} worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            return self.log().count(self.marker) >= self.count

        try:
            wait_for(ready, timeout, f"{self.count} {self.args[2]} worker process(es) to be ready", interval=interval)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- worker log ---\n{self.log()[-4000:]}") from None


def dramatiq_worker(redis_url: str, queue: str, processes: int = 2, threads: int = 8) -> PeerProcess:
    """``dramatiq bench.peer_dramatiq --processes 2 --threads 8`` (its Redis broker) on ``queue``."""
    env = {"BENCH_REDIS_URI": redis_url, "BENCH_QUEUE": queue, "PYTHONPATH": str(ROOT)}
    LOGS.mkdir(exist_ok=True)
    args = [sys.executable, "-m", "dramatiq", "bench.peer_dramatiq"]
    args += ["--processes", str(processes), "--threads", str(threads), "--queues", queue]
    return PeerProcess(args, env, "Worker process is ready for action.", processes, str(LOGS / f"bench-{queue}.log"))


def arq_python() -> str:
    """The interpreter of arq's virtualenv (``BENCH_ARQ_PYTHON`` overrides it)."""
    return os.environ.get("BENCH_ARQ_PYTHON", str(ARQ_VENV / "bin" / "python"))


def arq_worker(redis_url: str, queue: str, processes: int = 2) -> PeerProcess:
    """``processes`` arq workers (bench/peer_arq.py's settings: max_jobs 100, poll delay 10 ms, no results)."""
    env = {"BENCH_REDIS_URI": redis_url, "BENCH_QUEUE": queue, "PYTHONPATH": str(ROOT)}
    LOGS.mkdir(exist_ok=True)
    args = [arq_python(), "-m", "bench.peer_arq", "worker", "--processes", str(processes)]
    return PeerProcess(args, env, "arq worker ready", processes, str(LOGS / f"bench-{queue}.log"))
