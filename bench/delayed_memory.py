"""Worker memory with 100,000 pending delayed events: earnevents vs plain Celery, Dramatiq, arq.

earnevents parks delayed events in Redis (a sorted set), so its worker's memory
should not grow; a plain Celery worker fetches countdown tasks and holds them in
memory until due. Dramatiq's worker fetches delayed messages from its delay queue too
(up to 1,000 per thread at a time) and holds them until due; arq leaves deferred jobs in
its Redis sorted set. earnevents and Celery: prefork -c 2; Dramatiq: 2 processes x 8
threads; arq: 2 processes; all on the same private redis-server; RSS is summed over each
worker's process tree.

    python -m bench.delayed_memory [--events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import redis

import earnevents
from bench import peer_dramatiq
from bench.common import arq_worker, dramatiq_worker, unique
from bench.workload import PAYLOAD
from earnevents import Event, event_bus
from earnevents.testing import RedisServer, WorkerProcess, wait_for

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(worker: WorkerProcess) -> float:
    assert worker.proc is not None
    root = psutil.Process(worker.proc.pid)
    procs = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs) / 2**20


def settle_rss(worker: WorkerProcess, seconds: float = 3.0) -> float:
    """RSS once it stops moving (polled), at most ``seconds`` of watching."""
    last, deadline = rss_mb(worker), time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_mb(worker)
        if abs(now - last) < 0.2:
            return now
        last = now
    return last


def measure_earnevents(redis_url: str, events: int) -> tuple[float, float]:
    queue = "mem-earnevents"
    env = {
        "EARNEVENTS_REDIS_URI": redis_url,
        "EARNEVENTS_QUEUE": queue,
        "EARNEVENTS_MONGO_URI": "",
        "EARNEVENTS_HANDLER_MODULES": "bench.chaos_handlers",
        "PYTHONPATH": str(ROOT),
    }
    with WorkerProcess(env, concurrency=2, cwd=str(ROOT), log_path=str(ROOT / ".run" / "mem-ee.log")) as worker:
        before = settle_rss(worker)

        async def publish() -> None:
            await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue})
            try:
                for start in range(0, events, 1000):
                    batch = [Event("chaos.tick", dict(PAYLOAD)) for _ in range(min(1000, events - start))]
                    await event_bus.publish_batch(batch, delay=3600)
                assert await event_bus.count_scheduled() == events
            finally:
                await earnevents.close()

        asyncio.run(publish())
        time.sleep(2)  # a few scheduler polls over the full schedule
        after = settle_rss(worker)
    return before, after


def measure_celery(redis_url: str, events: int) -> tuple[float, float]:
    queue = "mem-celery"
    env = {"BENCH_REDIS_URI": redis_url, "BENCH_QUEUE": queue, "PYTHONPATH": str(ROOT)}
    worker = WorkerProcess(env, concurrency=2, cwd=str(ROOT), log_path=str(ROOT / ".run" / "mem-celery.log"))
    worker.args[worker.args.index("earnevents")] = "bench.plain_celery"
    client = redis.Redis.from_url(redis_url)
    with worker:
        before = settle_rss(worker)
        from bench.plain_celery import app, tick

        app.conf.broker_url = redis_url
        app.conf.task_default_queue = queue
        with app.producer_or_acquire() as producer:
            for _ in range(events):
                tick.apply_async(args=[PAYLOAD], countdown=3600, producer=producer)
        wait_for(lambda: client.llen(queue) == 0, 600, "the Celery worker to fetch every countdown task", 0.5)
        after = settle_rss(worker, 10)
    client.close()
    return before, after


def wait_stable(read: Callable[[], int], what: str, seconds: float = 3.0, timeout: float = 600) -> int:
    """Poll ``read()`` until it has not changed for ``seconds``; returns its last value."""
    last, since, deadline = read(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return now
    raise TimeoutError(f"{what} kept changing for {timeout} s")


def measure_dramatiq(redis_url: str, events: int) -> tuple[float, float]:
    """Messages sent with ``delay`` of an hour go to the delay queue (``<queue>.DQ``); the
    worker fetches them from there into memory until due. Measured once it stops fetching."""
    queue = unique("mem-dramatiq")
    client = redis.Redis.from_url(redis_url)
    with dramatiq_worker(redis_url, queue) as worker:
        before = settle_rss(worker)
        peer_dramatiq.prepublish(redis_url, queue, "tick", "unused", events, delay_ms=3600_000)
        delay_queue = peer_dramatiq.queue_keys(queue)[2]
        wait_stable(lambda: int(client.llen(delay_queue)), "Dramatiq's delay queue")
        after = settle_rss(worker, 10)
    client.delete(*peer_dramatiq.queue_keys(queue))
    client.close()
    return before, after


def measure_arq(redis_url: str, events: int) -> tuple[float, float]:
    """Jobs enqueued with ``_defer_by`` of an hour wait in arq's sorted set, as earnevents' do."""
    from bench.figures import arq

    queue = unique("mem-arq")
    with arq_worker(redis_url, queue) as worker:
        before = settle_rss(worker)
        arq("prepublish", redis_url, queue, "tick", "unused", events, "--defer", 3600)
        time.sleep(2)  # a few hundred polls over the full queue
        after = settle_rss(worker)
    client = redis.Redis.from_url(redis_url)
    client.delete(queue)
    for keys in _batches(client.scan_iter(match="arq:job:*", count=1000), 1000):
        client.delete(*keys)
    client.close()
    return before, after


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


MEASURE = {
    "earnevents": measure_earnevents,
    "celery": measure_celery,
    "dramatiq": measure_dramatiq,
    "arq": measure_arq,
}


def main() -> int:
    parser = argparse.ArgumentParser(description="worker RSS with pending delayed events")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--sides", default=",".join(MEASURE), help="comma-separated, of " + ", ".join(MEASURE))
    args = parser.parse_args()
    sides = [side.strip() for side in args.sides.split(",") if side.strip()]
    (ROOT / ".run").mkdir(exist_ok=True)
    rss: dict[str, tuple[float, float]] = {}
    with RedisServer() as server:
        for side in sides:
            rss[side] = MEASURE[side](server.url, args.events)
    result: dict[str, Any] = {"events": args.events}
    print(f"{args.events} pending delayed events, worker RSS (2 processes, whole process tree):")
    for side, (before, after) in rss.items():
        result[f"{side}_rss_mb"] = [round(before, 1), round(after, 1)]
        result[f"{side}_growth_mb"] = round(after - before, 1)
        print(f"  {side:<11} {before:7.1f} MB -> {after:7.1f} MB  growth {after - before:+.1f} MB")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
