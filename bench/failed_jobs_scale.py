"""Failed jobs at scale: how long listing, paging and counting take with 100,000 of them.

A failure store keeps up to ``DEFAULT_MAX_JOBS`` (100,000) failed jobs per queue; an
operator (the CLI, a dashboard) pages and counts them with filters: event name, handler,
error text, failure-time window. This fills one queue with N failed jobs and times each
question through ``event_bus`` (what the CLI and a dashboard call), median of R runs:

- the first page (50 jobs), a page at offset N/2, the count of all;
- by event name (a tenth of the jobs), by error text (a tenth; and a text none has),
  by a one-hour window (3,601 jobs, half-way back), all five filters at once: page and count;
- the dashboard's Failed jobs list served whole (count, page, HTML) through its ASGI app:
  first page, at offset N/2, by event name, by error text, failed in the last hour.

Stores: Redis (a private redis-server) and the MongoDB stand-in nx-27017, plus a real
MongoDB when EARNEVENTS_TEST_MONGO_URI is set. The records are the store's own: the
Redis store's ``add`` (its script), many at a time; MongoDB documents built by the store
(``MongoFailureStore.document``) and inserted in batches of 1,000 (one ``add`` per job
would count the queue each time), the store's indexes made first.

The jobs: 10 event names, 5 handlers, 10 kinds of error (each with a real traceback a
few frames deep, ~1 KiB), failure times one per second going back N seconds.

    python -m bench.failed_jobs_scale [--n 100000] [--repeat 5]     (make bench-failed)

Results: bench/results/failed_jobs_scale.json (each store's latest run) and a table on stdout.
nx-27017 (SQLite and Python) takes seconds per question at 100,000: ``--only nx --repeat 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from pymongo import AsyncMongoClient

import earnevents
from earnevents import Event, FailedJob, event_bus
from earnevents.dashboard import create_app
from earnevents.failures import MongoFailureStore, RedisFailureStore
from earnevents.testing import MongoServer, RedisServer

from .workload import PAYLOAD

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "failed_jobs_scale.json"
PAGE = 50
CONCURRENCY = 64
"""Redis adds in flight at once while filling."""
ERRORS = [
    "ConnectionError: invoicing service unavailable for user {n}",
    "TimeoutError: payment gateway did not answer within 10 s (order {n})",
    "ValueError: amount {n} is not a valid decimal",
    "KeyError: 'customer_id'",
    "PermissionError: account {n} is locked",
    "RuntimeError: template 'invoice.html' failed to render",
    "ConnectionResetError: [Errno 104] Connection reset by peer",
    "LookupError: no price list for region eu-{n}",
    "OSError: [Errno 28] No space left on device: '/tmp/invoice-{n}.pdf'",
    "AssertionError: totals differ by {n} cents",
]
RARE = "no job failed with this text"


def template(i: int, queue: str) -> FailedJob:
    """A failed job as a worker records it (a real traceback a few frames deep), of error kind ``i``."""

    def call_service(data: dict[str, Any]) -> None:
        raise RuntimeError(ERRORS[i].format(n=data["user_id"]))

    def handler(e: Event) -> None:
        call_service(dict(e.data))

    try:
        handler(Event("order.paid", dict(PAYLOAD)))
    except RuntimeError as exc:
        job = FailedJob.from_exception(Event("order.paid", dict(PAYLOAD)), "h", exc, attempts=4, queue=queue)
        return dataclasses.replace(job, error=ERRORS[i].format(n=PAYLOAD["user_id"]))
    raise AssertionError("unreachable")


def jobs(n: int, queue: str, now: dt.datetime) -> list[FailedJob]:
    """``n`` failed jobs, newest first, one a second back from ``now``."""
    templates = [template(i, queue) for i in range(len(ERRORS))]
    return [
        dataclasses.replace(
            templates[i % 10],
            id=uuid.uuid4().hex,
            event=Event(f"order.step{i % 10}", dict(PAYLOAD)),
            handler=f"myapp.billing.handlers.on_step_{i % 5}",
            failed_at=now - dt.timedelta(seconds=i),
        )
        for i in range(n)
    ]


async def fill_redis(url: str, queue: str, batch: list[FailedJob]) -> None:
    client = aioredis.Redis.from_url(url, max_connections=CONCURRENCY)
    store = RedisFailureStore(lambda: client, queue)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def add(job: FailedJob) -> None:
        async with gate:
            await store.add(job)

    try:
        for start in range(0, len(batch), 5000):
            await asyncio.gather(*(add(job) for job in batch[start : start + 5000]))
    finally:
        await client.aclose()


async def fill_mongo(url: str, database: str, queue: str, batch: list[FailedJob]) -> None:
    client: AsyncMongoClient[Any] = AsyncMongoClient(url, tz_aware=True)
    store = MongoFailureStore(lambda: client[database], queue)
    try:
        await store.count()  # makes the store's indexes
        col = client[database][store._name]
        for start in range(0, len(batch), 1000):
            await col.insert_many([store.document(job) for job in batch[start : start + 1000]], ordered=False)
    finally:
        await client.close()


def dashboard_pages(n: int, http: Any) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    """(what, ask): the dashboard's Failed jobs list served whole (its count, its page of 50,
    the HTML), through its ASGI app in this process; the answer is the page's size in bytes."""

    async def get(path: str) -> int:
        response = await http.get(path)
        response.raise_for_status()
        return len(response.content)

    return [
        ("dashboard /failed", lambda: get("/failed")),
        (f"dashboard /failed at offset {n // 2:,}", lambda: get(f"/failed?offset={n // 2}")),
        ("dashboard /failed?event=", lambda: get("/failed?event=order.step3")),
        ("dashboard /failed?error=", lambda: get("/failed?error=TimeoutError")),
        ("dashboard /failed?since=1h", lambda: get("/failed?since=1h")),
    ]


def questions(n: int, now: dt.datetime) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    """(what, ask) in table order; ``ask`` calls event_bus."""
    hour = {"since": now - dt.timedelta(seconds=n // 2 + 3600), "until": now - dt.timedelta(seconds=n // 2)}
    five = {"event_name": "order.step1", "handler": "myapp.billing.handlers.on_step_1", "error": "TimeoutError", **hour}
    page, count = event_bus.get_failed_jobs, event_bus.count_failed_jobs
    return [
        ("first page", lambda: page(PAGE)),
        (f"page at offset {n // 2:,}", lambda: page(PAGE, n // 2)),
        ("count", lambda: count()),
        ("event name: first page", lambda: page(PAGE, 0, "order.step3")),
        ("event name: count", lambda: count("order.step3")),
        ("error text: first page", lambda: page(PAGE, error="TimeoutError")),
        ("error text: count", lambda: count(error="TimeoutError")),
        ("error text none has: first page", lambda: page(PAGE, error=RARE)),
        ("one-hour window: first page", lambda: page(PAGE, **hour)),
        ("one-hour window: count", lambda: count(**hour)),
        ("all five filters: first page", lambda: page(PAGE, **five)),
        ("all five filters: count", lambda: count(**five)),
    ]


async def measure(init: Callable[[], Awaitable[Any]], n: int, now: dt.datetime, repeat: int) -> dict[str, Any]:
    """Median and max milliseconds of each question, and what it answered (jobs or count)."""
    await init()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(token="")), base_url="http://bench")
    try:
        await event_bus.count_failed_jobs()  # connections and indexes made before timing
        out: dict[str, Any] = {}
        for what, ask in questions(n, now) + dashboard_pages(n, http):
            times, answer = [], None
            for _ in range(repeat):
                began = time.perf_counter()
                answer = await ask()
                times.append((time.perf_counter() - began) * 1000)
            out[what] = {
                "ms": round(statistics.median(times), 2),
                "max_ms": round(max(times), 2),
                "answer": answer if isinstance(answer, int) else len(answer),
            }
        return out
    finally:
        await http.aclose()
        await earnevents.close()


def run_store(name: str, fill: Callable[[], Awaitable[None]], init: Callable[[], Awaitable[Any]], **kw: Any) -> Any:
    began = time.monotonic()
    asyncio.run(fill())
    filled = time.monotonic() - began
    print(f"{name}: {kw['n']:,} failed jobs stored in {filled:.1f} s", file=sys.stderr, flush=True)
    return {"fill_s": round(filled, 1), "ops": asyncio.run(measure(init, **kw))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="failed jobs in the queue (default 100,000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each question (the median is shown)")
    parser.add_argument("--only", default="redis,nx,mongo", help="stores: redis, nx (nx-27017), mongo (a real one)")
    args = parser.parse_args()
    n, stores = args.n, set(args.only.split(","))
    queue = f"scale-{uuid.uuid4().hex[:6]}"
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    batch = jobs(n, queue, now)
    kw = {"n": n, "now": now, "repeat": args.repeat}
    results: dict[str, Any] = {}
    config = {"queue_name": queue}
    if "redis" in stores:
        with RedisServer() as server:
            url = server.url
            results["redis"] = run_store(
                "Redis",
                lambda: fill_redis(url, queue, batch),
                lambda: earnevents.init(redis_uri=url, mongo_uri="", event_config=config),
                **kw,
            )
    mongos: list[tuple[str, str]] = []
    real = os.environ.get("EARNEVENTS_TEST_MONGO_URI")
    if "mongo" in stores and real:
        mongos.append(("mongo", real))
    with RedisServer() as server, MongoServer() as nx:
        if "nx" in stores:
            mongos.insert(0, ("nx", nx.url))
        for key, mongo_url in mongos:
            database = f"scale_{uuid.uuid4().hex[:6]}"
            results[key] = run_store(
                {"nx": "nx-27017", "mongo": "MongoDB"}[key],
                lambda u=mongo_url, d=database: fill_mongo(u, d, queue, batch),
                lambda u=mongo_url, d=database: earnevents.init(
                    redis_uri=server.url, mongo_uri=u, database=d, event_config=config
                ),
                **kw,
            )
            if key == "mongo":
                asyncio.run(drop(mongo_url, database))
    for entry in results.values():
        entry.update({"date": time.strftime("%Y-%m-%d"), "n": n, "repeat": args.repeat})
    # Each store's latest run is kept (a slow store can be run on its own: --only nx --repeat 1).
    stored = json.loads(RESULT.read_text())["stores"] if RESULT.exists() else {}
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps({"page": PAGE, "stores": {**stored, **results}}, indent=2) + "\n")
    names = {"redis": "Redis", "nx": "nx-27017", "mongo": "MongoDB"}
    print(f"{n:,} failed jobs in one queue; pages of {PAGE}; milliseconds, median of {args.repeat} (answer)")
    print("| question | " + " | ".join(names[k] for k in results) + " |")
    print("|---|" + "---|" * len(results))
    for what in next(iter(results.values()))["ops"] if results else []:
        cells = [f"{r['ops'][what]['ms']:,.1f} ({r['ops'][what]['answer']:,})" for r in results.values()]
        print(f"| {what} | " + " | ".join(cells) + " |")
    print("| (filling the store, s) | " + " | ".join(f"{r['fill_s']:,.1f}" for r in results.values()) + " |")
    print(f"raw: {RESULT.relative_to(ROOT)}")
    return 0


async def drop(url: str, database: str) -> None:
    client: AsyncMongoClient[Any] = AsyncMongoClient(url)
    try:
        await client.drop_database(database)
    finally:
        await client.close()


if __name__ == "__main__":
    sys.exit(main())
