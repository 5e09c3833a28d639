"""The workflow figures: durable workflow runs beside plain Celery chains.

9: pre-start ``n`` runs of a 5-step goto workflow (bench/workflow_defs.py), start a
   prefork -c 2 worker, time until every run has completed in MongoDB; Celery: ``n``
   chains of 5 trivial tasks on the same Redis, timed until every task has run. Every
   step/task does one Redis INCR. earnevents persists each step (read the run, mark the
   step started, compare-and-set its outcome: three MongoDB operations, then one queue
   message); a Celery chain persists nothing (the rest of the chain rides in the message).
   ``start_per_s``: how fast the runs were started (``engine.start``, 100 at a time with
   ``asyncio.gather``: a MongoDB insert and read and a queue message each) against
   ``chain(...).apply_async()`` one after the other.
10: signal -> next step start: ``n`` runs wait on ``wait("bench.go")``, one signal per
   run at ``rate``/s; the next step records ``time.time()`` minus the time taken just
   before ``engine.signal``. Celery has no equivalent: its column is a plain task's
   publish -> start at the same rate (figure 6's measure), a reference line only. The
   latency includes the ``engine.signal`` call itself (the signal kept for late waiters,
   the waiting run found and moved on by compare-and-set, its timeout withdrawn, its
   message sent); its median is ``signal_call_ms`` in the raw results (not in the table).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import redis
from celery import Celery, chain
from pymongo import MongoClient

import earnevents
from earnevents import keys
from earnevents.testing import wait_for
from earnevents.workflows import engine

from . import figures
from . import workflow_defs as _defs  # noqa: F401  (declares the workflows in this process)
from .common import celery_worker, earnevents_worker, payload, unique, wait_count

STEPS = 5
BATCH = 100
"""Runs started (or signalled) per gather."""
Metrics = dict[str, float]


def _database() -> str:
    return unique("bench_wf").replace("-", "_")


def _drop(mongo_url: str, database: str) -> None:
    client: MongoClient[Any] = MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(database)
    finally:
        client.close()


async def _init(redis_url: str, mongo_url: str, database: str, queue: str) -> None:
    await earnevents.init(
        redis_uri=redis_url, mongo_uri=mongo_url, database=database, event_config={"queue_name": queue}
    )


def _runs(mongo_url: str, database: str) -> Any:
    client: MongoClient[Any] = MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    return client, client[database][keys.MONGO_WORKFLOW_RUNS]


# --- 9: steps per second ---------------------------------------------------------------


async def _start_runs(redis_url: str, mongo_url: str, database: str, queue: str, key: str, n: int) -> float:
    """Start ``n`` runs, ``BATCH`` at a time concurrently; returns the seconds it took."""
    await _init(redis_url, mongo_url, database, queue)
    try:
        t0 = time.perf_counter()
        for start in range(0, n, BATCH):
            await asyncio.gather(*(engine.start("bench_five_steps", key=key) for _ in range(min(BATCH, n - start))))
        return time.perf_counter() - t0
    finally:
        await earnevents.close()


def _start_chains(redis_url: str, queue: str, key: str, n: int) -> float:
    app = figures.celery_app(redis_url, queue)
    body = payload(key)
    try:
        t0 = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                chain(*(_signature(app, body) for _ in range(STEPS))).apply_async(producer=producer)
        return time.perf_counter() - t0
    finally:
        app.close()


def _signature(app: Celery, body: dict[str, Any]) -> Any:
    return app.signature("plain.step", args=(body,), immutable=True)


def throughput(side: str, redis_url: str, mongo_url: str, n: int) -> Metrics:
    queue, key = unique(f"wf-{side}"), unique("wfcount")
    database = _database()
    client = redis.Redis.from_url(redis_url)
    if side == "earnevents":
        start_s = asyncio.run(_start_runs(redis_url, mongo_url, database, queue, key, n))
        worker = earnevents_worker(
            redis_url, queue, modules="bench.workflow_defs", mongo_url=mongo_url, database=database
        )
    else:
        start_s = _start_chains(redis_url, queue, key, n)
        worker = celery_worker(redis_url, queue)
    mongo, runs = _runs(mongo_url, database)
    try:
        worker.start(wait=False)
        worker.wait_ready(120)
        t_ready = time.perf_counter()
        t_done = wait_count(client, key, STEPS * n, timeout=600)
        if side == "earnevents":  # the last step has run; its outcome is saved a moment later
            wait_for(lambda: runs.count_documents({"status": "completed"}) >= n, 60, f"{n} runs completed")
            t_done = time.perf_counter()
            failed = runs.count_documents({"status": {"$ne": "completed"}})
            if failed:
                raise RuntimeError(f"{failed} of {n} bench runs did not complete")
    finally:
        worker.stop()
        client.delete(queue, key)
        client.close()
        mongo.close()
        if side == "earnevents":
            _drop(mongo_url, database)
    elapsed = t_done - t_ready
    return {"runs_per_s": n / elapsed, "steps_per_s": STEPS * n / elapsed, "start_per_s": n / start_s}


# --- 10: signal -> next step start -------------------------------------------------------


async def _signal_paced(
    redis_url: str, mongo_url: str, database: str, queue: str, key: str, n: int, rate: float
) -> list[float]:
    """Start ``n`` waiting runs, then signal each once at ``rate``/s; the seconds each
    ``engine.signal`` call took."""
    await _init(redis_url, mongo_url, database, queue)
    try:
        run_ids: list[str] = []
        for start in range(0, n, BATCH):
            run_ids += await asyncio.gather(
                *(engine.start("bench_signalled", key=key) for _ in range(min(BATCH, n - start)))
            )
        runs = earnevents.runtime.current().db[keys.MONGO_WORKFLOW_RUNS]
        deadline = time.monotonic() + 120
        while await runs.count_documents({"status": "waiting"}) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} bench runs did not all reach their wait")
            await asyncio.sleep(0.05)
        calls: list[float] = []
        t0 = time.perf_counter()
        for i, run_id in enumerate(run_ids):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.time()
            woken = await engine.signal("bench.go", {"sent_at": sent}, run_id=run_id)
            calls.append(time.time() - sent)
            if woken != 1:
                raise RuntimeError(f"signal to run {run_id} woke {woken} runs")
        return calls
    finally:
        await earnevents.close()


def signal_latency(side: str, redis_url: str, mongo_url: str, n: int, rate: float) -> Metrics:
    if side == "celery":  # no equivalent: a plain task's publish -> start, as a reference
        return figures.latency("celery", redis_url, rate, n / rate)
    queue, key = unique("wfsig-ee"), unique("wflat")
    database = _database()
    worker = earnevents_worker(redis_url, queue, modules="bench.workflow_defs", mongo_url=mongo_url, database=database)
    client = redis.Redis.from_url(redis_url)
    try:
        worker.start()
        calls = asyncio.run(_signal_paced(redis_url, mongo_url, database, queue, key, n, rate))
        wait_for(lambda: client.llen(key) >= n, 120, "every signal latency sample", interval=0.05)
        samples = sorted(float(x) * 1000 for x in client.lrange(key, 0, -1))
    finally:
        worker.stop()
        client.delete(queue, key)
        client.close()
        _drop(mongo_url, database)
    q = statistics.quantiles(samples, n=100)
    return {"p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98], "signal_call_ms": statistics.median(calls) * 1000}
