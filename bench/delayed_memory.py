"""Worker memory with 100,000 pending delayed events: earnevents vs plain Celery.

earnevents parks delayed events in Redis (a sorted set), so its worker's memory
should not grow; a plain Celery worker fetches countdown tasks and holds them in
memory until due. Both workers: prefork -c 2 on the same private redis-server;
RSS is summed over each worker's process tree.

    python -m bench.delayed_memory [--events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import psutil
import redis

import earnevents
from earnevents import Event, event_bus
from earnevents.testing import RedisServer, WorkerProcess, wait_for

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = {
    "user_id": 123456,
    "email": "someone@example.com",
    "plan": "pro",
    "tags": ["a", "b", "c"],
    "amount": "19.99",
    "currency": "EUR",
    "note": "x" * 60,
}  # ~200 bytes of JSON


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


def main() -> int:
    parser = argparse.ArgumentParser(description="worker RSS with pending delayed events")
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    (ROOT / ".run").mkdir(exist_ok=True)
    with RedisServer() as server:
        ee_before, ee_after = measure_earnevents(server.url, args.events)
        ce_before, ce_after = measure_celery(server.url, args.events)
    result = {
        "events": args.events,
        "earnevents_rss_mb": [round(ee_before, 1), round(ee_after, 1)],
        "celery_rss_mb": [round(ce_before, 1), round(ce_after, 1)],
        "earnevents_growth_mb": round(ee_after - ee_before, 1),
        "celery_growth_mb": round(ce_after - ce_before, 1),
    }
    print(f"{args.events} pending delayed events, worker RSS (prefork -c 2, whole process tree):")
    print(
        f"  earnevents (delay=3600):   {ee_before:7.1f} MB -> {ee_after:7.1f} MB  growth {ee_after - ee_before:+.1f} MB"
    )
    print(
        f"  Celery (countdown=3600):   {ce_before:7.1f} MB -> {ce_after:7.1f} MB  growth {ce_after - ce_before:+.1f} MB"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
