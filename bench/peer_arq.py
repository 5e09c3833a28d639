"""The arq side of the benchmarks: same Redis, same work as bench/handlers.py.

arq 0.28 requires redis-py < 6 and earnevents >= 6.1, so this side runs from its own
virtualenv (``.venv-arq``, made by ``make bench``) and imports nothing but the standard
library, arq, redis-py and bench/workload.py. Every part of it is a command the bench process
runs with that interpreter; measuring commands print one JSON line of metrics:

    python -m bench.peer_arq worker --processes 2        # env BENCH_REDIS_URI, BENCH_QUEUE
    python -m bench.peer_arq publish URL QUEUE N sequential|gather
    python -m bench.peer_arq prepublish URL QUEUE NAME KEY N [--defer S]
    python -m bench.peer_arq paced URL QUEUE KEY RATE TOTAL

The worker is tuned as issue 15 asks: ``max_jobs`` 100 (jobs at once per process, default 10),
``poll_delay`` 0.01 s (default 0.5 s), ``keep_result`` 0 (no result kept), and as many
processes as the earnevents and Celery workers have (2; arq runs one process per worker).
Its per-job log lines are off (logger at WARNING), as a tuned deployment would run it.
Jobs are pickled (arq's default serializer); the handlers use the worker's own connection
(``ctx["redis"]``) as earnevents' handlers use the worker's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import run_worker

from bench.workload import StallTicker, payload

WARMUP = 50


async def noop(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    """One Redis round trip: count the job (same as bench.handlers.noop)."""
    await ctx["redis"].incr(payload["key"])


async def io(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    """10 ms of I/O wait, then count (same as bench.handlers.io)."""
    await asyncio.sleep(0.01)
    await ctx["redis"].incr(payload["key"])


async def latency(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    """Record how long after publishing the job started (same as bench.handlers.latency)."""
    await ctx["redis"].rpush(payload["key"], time.time() - payload["published_at"])


async def tick(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    """Does nothing: what deferred jobs run in the memory figure (never, within it)."""


async def _ready(ctx: dict[str, Any]) -> None:
    print(f"arq worker ready (pid {os.getpid()})", flush=True)


def settings(redis_url: str, queue: str) -> dict[str, Any]:
    """The worker's settings (arq takes a dict as well as a WorkerSettings class)."""
    return {
        "functions": [noop, io, latency, tick],
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "queue_name": queue,
        "max_jobs": 100,
        "poll_delay": 0.01,
        "keep_result": 0,
        "on_startup": _ready,
    }


def _one_worker(redis_url: str, queue: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_worker(settings(redis_url, queue))


def worker(processes: int) -> int:
    """``processes`` arq workers on BENCH_QUEUE; SIGTERM to the process group stops them all."""
    url, queue = os.environ["BENCH_REDIS_URI"], os.environ["BENCH_QUEUE"]
    children = [multiprocessing.Process(target=_one_worker, args=(url, queue)) for _ in range(processes)]
    for child in children:
        child.start()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM stops the children; wait for them
    for child in children:
        child.join()
    return max((child.exitcode or 0) for child in children)


async def publish(redis_url: str, queue: str, n: int, mode: str) -> dict[str, float]:
    """Figures 1 and 2: ``n`` awaited ``enqueue_job`` calls, one after another or 100 at a time."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=queue)
    try:
        for _ in range(WARMUP):
            await pool.enqueue_job("noop", payload("k"))
        async with StallTicker() as ticker:
            t0 = time.perf_counter()
            if mode == "gather":
                for _ in range(n // 100):
                    await asyncio.gather(*(pool.enqueue_job("noop", payload("k")) for _ in range(100)))
            else:
                for _ in range(n):
                    await pool.enqueue_job("noop", payload("k"))
            elapsed = time.perf_counter() - t0
        job_keys = [key async for key in pool.scan_iter(match="arq:job:*", count=1000)]
        for start in range(0, len(job_keys), 1000):
            await pool.delete(*job_keys[start : start + 1000])
        await pool.delete(queue)
    finally:
        await pool.aclose()
    return {"rate": n / elapsed, "stall_ms": ticker.worst * 1000}


async def prepublish(redis_url: str, queue: str, name: str, key: str, n: int, defer: float | None) -> None:
    """``n`` jobs of ``name`` (``defer``: each deferred by that many seconds), 100 awaited at a time."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=queue)
    try:
        for start in range(0, n, 100):
            await asyncio.gather(
                *(pool.enqueue_job(name, payload(key), _defer_by=defer) for _ in range(min(100, n - start)))
            )
    finally:
        await pool.aclose()


async def paced(redis_url: str, queue: str, key: str, rate: float, total: int) -> None:
    """Figure 6: ``total`` latency jobs at ``rate`` per second, each stamped with its send time."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=queue)
    try:
        t0 = time.perf_counter()
        for i in range(total):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await pool.enqueue_job("latency", payload(key, published_at=time.time()))
    finally:
        await pool.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("worker")
    p.add_argument("--processes", type=int, default=2)
    p = sub.add_parser("publish")
    p.add_argument("url")
    p.add_argument("queue")
    p.add_argument("n", type=int)
    p.add_argument("mode", choices=("sequential", "gather"))
    p = sub.add_parser("prepublish")
    for arg in ("url", "queue", "name", "key"):
        p.add_argument(arg)
    p.add_argument("n", type=int)
    p.add_argument("--defer", type=float, default=None)
    p = sub.add_parser("paced")
    for arg in ("url", "queue", "key"):
        p.add_argument(arg)
    p.add_argument("rate", type=float)
    p.add_argument("total", type=int)
    args = parser.parse_args()
    if args.command == "worker":
        return worker(args.processes)
    if args.command == "publish":
        print(json.dumps(asyncio.run(publish(args.url, args.queue, args.n, args.mode))))
    elif args.command == "prepublish":
        asyncio.run(prepublish(args.url, args.queue, args.name, args.key, args.n, args.defer))
    else:
        asyncio.run(paced(args.url, args.queue, args.key, args.rate, args.total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
