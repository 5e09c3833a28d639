"""The Dramatiq side of the benchmarks: same Redis, same work as bench/handlers.py.

The worker is Dramatiq's own CLI on this module, as its docs run it, with its Redis broker:
``dramatiq bench.peer_dramatiq --processes 2 --threads 8`` (the same process count as the
earnevents and Celery workers; 8 threads is Dramatiq's default per process). Everything else
is Dramatiq's defaults: its default middleware (retries, time limit, age limit, ...), no
result backend, prefetch of twice the threads, acknowledgement after the actor returns.

The publisher functions run in the bench process: ``Actor.send`` is synchronous, so the
concurrent figure runs it in the default thread pool, as Celery's side does.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from .workload import StallTicker, payload

WARMUP = 50
Metrics = dict[str, float]

_redis: redis.Redis | None = None


def client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URI", "redis://localhost:6379/0"))
    return _redis


def noop(payload: dict[str, Any]) -> None:
    """One Redis round trip: count the message (same as bench.handlers.noop)."""
    client().incr(payload["key"])


def io(payload: dict[str, Any]) -> None:
    """10 ms of I/O wait, then count (same as bench.handlers.io)."""
    time.sleep(0.01)
    client().incr(payload["key"])


def latency(payload: dict[str, Any]) -> None:
    """Record how long after publishing the message started (same as bench.handlers.latency)."""
    client().rpush(payload["key"], time.time() - payload["published_at"])


def tick(payload: dict[str, Any]) -> None:
    """Does nothing: what delayed messages run in the memory figure (never, within it)."""


def declare(broker: RedisBroker, queue: str) -> dict[str, dramatiq.Actor[Any, Any]]:
    """The benchmark's actors on ``queue`` of ``broker``, by name."""
    return {
        fn.__name__: dramatiq.actor(fn, actor_name=f"bench_{fn.__name__}", queue_name=queue, broker=broker)
        for fn in (noop, io, latency, tick)
    }


def queue_keys(queue: str) -> list[str]:
    """The Redis keys Dramatiq's broker keeps a queue in (namespace ``dramatiq``), delayed queue too."""
    return [f"dramatiq:{name}{suffix}" for name in (queue, f"{queue}.DQ") for suffix in ("", ".msgs")]


# The worker's broker: `dramatiq bench.peer_dramatiq` finds it as this module's global broker.
broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URI", "redis://localhost:6379/0"))
dramatiq.set_broker(broker)
actors = declare(broker, os.environ.get("BENCH_QUEUE", "default"))


# --- publisher side (runs in the bench process) --------------------------------------------


def publisher(redis_url: str, queue: str) -> tuple[RedisBroker, dict[str, dramatiq.Actor[Any, Any]]]:
    pub = RedisBroker(url=redis_url)
    return pub, declare(pub, queue)


async def _publish(redis_url: str, queue: str, n: int, mode: str) -> Metrics:
    pub, acts = publisher(redis_url, queue)
    send = acts["noop"].send
    try:
        for _ in range(WARMUP):
            send(payload("k"))
        loop = asyncio.get_running_loop()
        async with StallTicker() as ticker:
            t0 = time.perf_counter()
            if mode == "gather":
                for _ in range(n // 100):
                    await asyncio.gather(*(loop.run_in_executor(None, send, payload("k")) for _ in range(100)))
            else:
                for _ in range(n):
                    send(payload("k"))
            elapsed = time.perf_counter() - t0
    finally:
        pub.client.delete(*queue_keys(queue))
        pub.close()
    return {"rate": n / elapsed, "stall_ms": ticker.worst * 1000}


def publish(redis_url: str, queue: str, n: int, mode: str) -> Metrics:
    """Figures 1 and 2: ``n`` sends of the payload, one after another or 100 at a time in threads."""
    return asyncio.run(_publish(redis_url, queue, n, mode))


def prepublish(redis_url: str, queue: str, name: str, key: str, n: int, delay_ms: int | None = None) -> None:
    """``n`` messages for actor ``name`` (``delay_ms``: each delayed by that long), untimed."""
    pub, acts = publisher(redis_url, queue)
    try:
        for _ in range(n):
            acts[name].send_with_options(args=(payload(key),), delay=delay_ms)
    finally:
        pub.close()


def publish_paced(redis_url: str, queue: str, key: str, rate: float, total: int) -> None:
    """Figure 6: ``total`` latency messages at ``rate`` per second, each stamped with its send time."""
    pub, acts = publisher(redis_url, queue)
    try:
        t0 = time.perf_counter()
        for i in range(total):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            acts["latency"].send(payload(key, published_at=time.time()))
    finally:
        pub.close()
