"""The benchmark figures. Each takes a Redis URL and a size, and returns metrics for one side.

Sides: earnevents, plain Celery (bench/plain_celery.py), Dramatiq (bench/peer_dramatiq.py)
and arq (bench/peer_arq.py, run from its own virtualenv). Every side does the same work:
the same payload, the same Redis round trip in the handler/task, the same warm-up. Nothing
is cached between runs: every run uses fresh queue and counter names.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import statistics
import subprocess
import time
from contextlib import ExitStack
from typing import Any

import redis
from celery import Celery

import earnevents
from earnevents import Event, event_bus
from earnevents.testing import WorkerProcess

from . import cost, peer_dramatiq
from .common import (
    ROOT,
    StallTicker,
    arq_python,
    arq_worker,
    celery_worker,
    dramatiq_worker,
    earnevents_worker,
    payload,
    unique,
    wait_count,
)

WARMUP = 50
Metrics = dict[str, float]


def celery_app(redis_url: str, queue: str) -> Celery:
    app = Celery("bench-publisher", broker=redis_url)
    app.conf.update(task_default_queue=queue, task_serializer="json", broker_connection_retry_on_startup=True)
    return app


def arq(*args: object) -> dict[str, float] | None:
    """Run ``python -m bench.peer_arq ARGS`` with arq's interpreter; its JSON line of metrics, if any."""
    done = subprocess.run(
        [arq_python(), "-m", "bench.peer_arq", *map(str, args)],
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.peer_arq {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def worker_for(side: str, redis_url: str, queue: str, pool: str = "prefork", concurrency: int = 2) -> WorkerProcess:
    """One worker of ``side`` on ``queue``: earnevents and Celery with ``pool`` and ``concurrency``;
    Dramatiq (2 processes x 8 threads) and arq (2 processes, 100 jobs each) as configured for every figure."""
    if side == "earnevents":
        return earnevents_worker(redis_url, queue, pool, concurrency)
    if side == "celery":
        return celery_worker(redis_url, queue, pool, concurrency)
    if side == "dramatiq":
        return dramatiq_worker(redis_url, queue)
    return arq_worker(redis_url, queue)


def drop(redis_url: str, *keys: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete(*keys)
    client.close()


# --- 1-3: publishing ------------------------------------------------------------------


async def _ee_publish(redis_url: str, n: int, mode: str) -> Metrics:
    queue = unique("pub-ee")
    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue})
    try:
        for _ in range(WARMUP):
            await event_bus.publish(Event("bench.noop", payload("k")))
        async with StallTicker() as ticker:
            t0 = time.perf_counter()
            if mode == "sequential":
                for _ in range(n):
                    await event_bus.publish(Event("bench.noop", payload("k")))
            elif mode == "gather":
                for _ in range(n // 100):
                    await asyncio.gather(*(event_bus.publish(Event("bench.noop", payload("k"))) for _ in range(100)))
            else:
                for _ in range(n // 100):
                    await event_bus.publish_batch([Event("bench.noop", payload("k")) for _ in range(100)])
            elapsed = time.perf_counter() - t0
    finally:
        await earnevents.close()
        drop(redis_url, queue)
    return {"rate": n / elapsed, "stall_ms": ticker.worst * 1000}


async def _celery_publish(redis_url: str, n: int, mode: str) -> Metrics:
    queue = unique("pub-celery")
    app = celery_app(redis_url, queue)
    send = functools.partial(app.send_task, "plain.noop")
    try:
        for _ in range(WARMUP):
            send(args=[payload("k")])
        loop = asyncio.get_running_loop()
        async with StallTicker() as ticker:
            t0 = time.perf_counter()
            if mode == "gather":
                for _ in range(n // 100):
                    await asyncio.gather(
                        *(loop.run_in_executor(None, lambda: send(args=[payload("k")])) for _ in range(100))
                    )
            else:  # sequential, and the reference for publish_batch (Celery has no batch publish)
                for _ in range(n):
                    send(args=[payload("k")])
            elapsed = time.perf_counter() - t0
    finally:
        app.close()
        drop(redis_url, queue)
    return {"rate": n / elapsed, "stall_ms": ticker.worst * 1000}


def publish(side: str, redis_url: str, n: int, mode: str) -> Metrics:
    """``mode``: sequential, gather (100 at once) or batch (earnevents' publish_batch of 100).

    Also Redis CPU per event published (``redis_cpu_us_per_event``, bench/cost.py), over the
    whole call: the 50 warm-up publishes count as events; the queue's removal afterwards
    (and arq's job keys', which its worker would delete in time) is included."""
    client = redis.Redis.from_url(redis_url)
    idle = cost.redis_idle(client)
    before = cost.redis_snapshot(client)
    if side == "dramatiq":
        metrics = peer_dramatiq.publish(redis_url, unique("pub-dramatiq"), n, mode)
    elif side == "arq":
        got = arq("publish", redis_url, unique("pub-arq"), n, mode)
        assert got is not None
        metrics = got
    else:
        run = _ee_publish if side == "earnevents" else _celery_publish
        metrics = asyncio.run(run(redis_url, n, mode))
    after = cost.redis_snapshot(client)
    client.close()
    return {**metrics, **cost.redis_metrics(after - before, idle, n + WARMUP)}


# --- 4-5: end to end --------------------------------------------------------------------


def _prepublish(
    side: str, redis_url: str, queue: str, name: str, key: str, n: int, per_message: int = 1, event_log: bool = False
) -> None:
    if side == "earnevents":

        async def go() -> None:
            await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue, "event_log": event_log})
            try:
                for start in range(0, n, 1000):
                    await event_bus.publish_batch(
                        [Event(f"bench.{name}", payload(key)) for _ in range(min(1000, n - start))],
                        events_per_message=per_message,
                    )
            finally:
                await earnevents.close()

        asyncio.run(go())
    elif side == "dramatiq":
        peer_dramatiq.prepublish(redis_url, queue, name, key, n)
    elif side == "arq":
        arq("prepublish", redis_url, queue, name, key, n)
    else:
        app = celery_app(redis_url, queue)
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                app.send_task(f"plain.{name}", args=[payload(key)], producer=producer)
        app.close()


def key_memory(client: redis.Redis) -> int:
    """Bytes Redis holds in keys (``MEMORY USAGE`` of every key, summed). ``used_memory``
    moves by hundreds of KB with allocator and connection state in runs this size, so the
    keys are weighed one by one instead."""
    return sum(int(client.memory_usage(key) or 0) for key in client.scan_iter(count=1000))


def end_to_end(
    side: str,
    redis_url: str,
    n: int,
    name: str = "noop",
    pool: str = "prefork",
    concurrency: int = 2,
    processes: int = 1,
    per_message: int = 1,
    event_log: bool = False,
) -> Metrics:
    """Pre-publish ``n`` events, start the worker(s), time until all are handled.

    ``per_message`` > 1 (earnevents only): that many events packed per queue message.
    ``pool``, ``concurrency`` and ``processes`` are earnevents' and Celery's; Dramatiq and arq
    always run one worker command of 2 processes (``worker_for``).
    ``event_log`` (earnevents only): publisher and workers record every event and its
    handler's outcome in the event log (Redis store).
    ``startup_s``: from starting the worker command(s) until each logged that it is ready;
    ``first_s``: until the first event was handled (its count seen in Redis; at least
    ``startup_s``), both polled every 10 ms. ``rate`` counts from ready to the last event.
    Also reports what stays in Redis per handled event once the workers are gone and
    the queue is empty (bytes held in keys and key count, before vs after): the cost
    of remembering completed jobs, which plain Celery (results ignored) does not pay.
    And what handling costs (bench/cost.py), from the workers' ready to the last event
    handled, per event handled in that window: Redis CPU (``redis_cpu_us_per_event``, with
    ``cmd_us:NAME`` / ``cmd_calls:NAME`` per command) and the workers' CPU over their whole
    process trees (``worker_cpu_us_per_event``); then the trees' memory, all events handled
    and the workers still up (``worker_rss_mb``, ``worker_uss_mb``, ``worker_pss_mb``).
    """
    queue, key = unique(f"e2e-{side}"), unique("count")
    client = redis.Redis.from_url(redis_url)
    idle = cost.redis_idle(client)
    mem_before, keys_before = key_memory(client), client.dbsize()
    _prepublish(side, redis_url, queue, name, key, n, per_message if side == "earnevents" else 1, event_log)
    if side == "earnevents":
        workers = [earnevents_worker(redis_url, queue, pool, concurrency, event_log) for _ in range(processes)]
    else:  # the peers' worker commands run their own processes (2) and ignore pool and concurrency
        workers = [worker_for(side, redis_url, queue, pool, concurrency) for _ in range(processes)]

    def handled() -> int:
        return int(client.get(key) or 0)

    try:
        t_start = time.perf_counter()
        for worker in workers:
            worker.start(wait=False)
        for worker in workers:
            worker.wait_ready(120, interval=0.01)
        t_ready = time.perf_counter()
        at_ready, cpu0, redis0 = handled(), cost.tree_cpu(workers), cost.redis_snapshot(client)
        t_first = wait_count(client, key, 1, timeout=120, interval=0.005)  # a few polls: the first comes soon
        t_done = cost.wait_until(handled, n, 600, f"{n} handled ({key})")
        redis1, cpu1 = cost.redis_snapshot(client), cost.tree_cpu(workers)
        memory = cost.tree_memory(workers)
    finally:
        for worker in workers:
            worker.stop()
        client.delete(*queue_keys(side, queue), key)
    mem_after, keys_after = key_memory(client), client.dbsize()
    client.close()
    in_window = max(1, n - at_ready)
    return {
        "rate": n / (t_done - t_ready),
        "startup_s": t_ready - t_start,
        "first_s": t_first - t_start,
        "redis_bytes_per_job": max(0.0, (mem_after - mem_before) / n),
        "redis_keys_per_job": max(0.0, (keys_after - keys_before) / n),
        "worker_cpu_us_per_event": cost.cpu_between(cpu0, cpu1) / in_window * 1e6,
        "handled_before_ready": at_ready,
        **memory,
        **cost.redis_metrics(redis1 - redis0, idle, in_window),
    }


def queue_keys(side: str, queue: str) -> list[str]:
    """The Redis keys ``side`` keeps ``queue`` in (emptied by the workers; dropped after a figure)."""
    return peer_dramatiq.queue_keys(queue) if side == "dramatiq" else [queue]


# --- 6: latency ---------------------------------------------------------------------------


def latency(
    side: str,
    redis_url: str,
    rate: float,
    seconds: float,
    busy: bool = False,
    pool: str = "prefork",
    concurrency: int = 2,
) -> Metrics:
    """Publish ``rate`` latency events a second for ``seconds`` to a ready worker; the delay from
    publish to handler start (p50, p95, p99), and what the run cost (bench/cost.py): the worker's
    CPU seconds over its whole process tree (``worker_cpu_s``) and Redis CPU per event, publishing
    included (``redis_cpu_us_per_event``), from the first publish to the last sample recorded.

    ``busy``: a CPU-bound process pinned to core 0 competes for the cores all along (figure 6c).
    ``pool`` and ``concurrency``: earnevents' and Celery's worker (the peers' are as in ``worker_for``).
    """
    queue, key = unique(f"lat-{side}"), unique("lat")
    worker = worker_for(side, redis_url, queue, pool, concurrency)
    client = redis.Redis.from_url(redis_url)
    idle = cost.redis_idle(client)
    total = int(rate * seconds)
    with ExitStack() as stack:
        if busy:
            stack.enter_context(cost.busy_core(0))
        try:
            worker.start()

            async def publish_paced() -> None:
                if side == "earnevents":
                    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue})
                    send: Any = None
                else:
                    app = celery_app(redis_url, queue)
                    send = functools.partial(app.send_task, "plain.latency")
                t0 = time.perf_counter()
                for i in range(total):
                    delay = t0 + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    body = payload(key, published_at=time.time())
                    if send is None:
                        await event_bus.publish(Event("bench.latency", body))
                    else:
                        send(args=[body])
                if send is None:
                    await earnevents.close()

            cpu0, redis0 = cost.tree_cpu([worker]), cost.redis_snapshot(client)
            if side == "dramatiq":
                peer_dramatiq.publish_paced(redis_url, queue, key, rate, total)
            elif side == "arq":
                arq("paced", redis_url, queue, key, rate, total)
            else:
                asyncio.run(publish_paced())
            cost.wait_until(lambda: int(client.llen(key)), total, 120, "every latency sample")
            redis1, cpu1 = cost.redis_snapshot(client), cost.tree_cpu([worker])
            samples = sorted(float(x) * 1000 for x in client.lrange(key, 0, -1))
        finally:
            worker.stop()
            client.delete(*queue_keys(side, queue), key)
            client.close()
    q = statistics.quantiles(samples, n=100)
    return {
        "p50_ms": q[49],
        "p95_ms": q[94],
        "p99_ms": q[98],
        "worker_cpu_s": cost.cpu_between(cpu0, cpu1),
        **cost.redis_metrics(redis1 - redis0, idle, total),
    }


# --- 11: an idle worker ---------------------------------------------------------------------------


def idle(side: str, redis_url: str, seconds: float) -> Metrics:
    """A worker left alone for ``seconds`` once ready (an empty queue): its CPU seconds over its
    whole process tree, its memory at the end of the window, and the Redis CPU and commands its
    polling costs per second (Redis' own idle share left out)."""
    queue = unique(f"idle-{side}")
    worker = worker_for(side, redis_url, queue)
    client = redis.Redis.from_url(redis_url)
    own = cost.redis_idle(client)
    try:
        worker.start()
        cpu0, redis0 = cost.tree_cpu([worker]), cost.redis_snapshot(client)
        time.sleep(seconds)  # the measured window: nothing is published
        redis1, cpu1 = cost.redis_snapshot(client), cost.tree_cpu([worker])
        memory = cost.tree_memory([worker])
    finally:
        worker.stop()
        client.delete(*queue_keys(side, queue))
        client.close()
    delta = redis1 - redis0
    return {
        "worker_idle_cpu_s": cost.cpu_between(cpu0, cpu1),
        **memory,
        "redis_idle_cpu_ms_per_s": max(0.0, delta.cpu_s / delta.seconds - own) * 1000,
        "redis_idle_calls_per_s": sum(calls for calls, _ in delta.commands.values()) / delta.seconds,
    }
