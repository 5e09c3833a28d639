"""Capacity: Redis and MongoDB bytes per thing earnevents keeps, measured in one run.

Against a private redis-server and nx-27017 (the MongoDB stand-in), with the
benchmarks' ~200-byte JSON payload, each row stores N of one thing through
earnevents' own code and divides:

- Redis: the ``MEMORY USAGE`` (samples=0) of every key the thing lives in, summed, per
  item: the bytes held in keys, without allocator noise or connection buffers.
- MongoDB: the mean BSON size of the stored documents as read back (what MongoDB
  stores before WiredTiger's compression; index entries not counted). nx-27017
  keeps documents in SQLite, so its own ``collStats`` sizes (printed beside, as
  "nx") are not MongoDB's.

Rows: a pending delayed event; a message waiting on the queue; an in-flight message
(taken by a worker and not yet acknowledged: kombu's unacknowledged record in
earnevents' transport, plus the job claim of its event); a failed job (Redis store
and MongoDB store); a completed job (the dedup record, 24 h window, one handler); a
dead-lettered 1 KiB item; an event in the MongoDB outbox (Redis unreachable); an
event-log record (``event_log`` on: the event published, one handler succeeded).

    python -m bench.capacity [--n 10000]      (make capacity)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import bson
import kombu
import redis
import redis.asyncio as aioredis
from pymongo import MongoClient

import earnevents
from earnevents import Event, FailedJob, deadletters, event_bus, keys, message, outbox
from earnevents.eventlog import MongoEventLog, RedisEventLog
from earnevents.eventlog.record import SUCCEEDED, HandlerChange, HandlerRecord, Published
from earnevents.failures import MongoFailureStore, RedisFailureStore
from earnevents.testing import MongoServer, RedisServer
from earnevents.worker.completions import Completions

from .dedup_memory import handler_names, per_job_now
from .workload import PAYLOAD

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "capacity.json"
HANDLER = "myapp.billing.handlers.on_invoice_paid"


def redis_bytes(client: redis.Redis, patterns: list[str], exact: tuple[str, ...] = ()) -> int:
    """Sum of MEMORY USAGE over the keys matching ``patterns`` and the keys in ``exact``."""
    names = set(exact)
    for pattern in patterns:
        names.update(k.decode() for k in client.scan_iter(match=pattern, count=1000))
    pipe = client.pipeline(transaction=False)
    for name in sorted(names):
        pipe.memory_usage(name, samples=0)
    return sum(int(u or 0) for u in pipe.execute())


def a_failure(event: Event, queue: str) -> FailedJob:
    """A failed job as a worker records it: a real traceback a few frames deep."""

    def call_service(data: dict[str, Any]) -> None:
        raise ConnectionError(f"invoicing service unavailable for user {data['user_id']}")

    def handler(e: Event) -> None:
        call_service(dict(e.data))

    try:
        handler(event)
    except ConnectionError as exc:
        return FailedJob.from_exception(event, HANDLER, exc, attempts=4, queue=queue)
    raise AssertionError("unreachable")


def events(n: int, name: str = "order.paid") -> list[Event]:
    return [Event(name, dict(PAYLOAD)) for _ in range(n)]


async def delayed(redis_url: str, client: redis.Redis, n: int) -> float:
    queue = f"cap-delayed-{uuid.uuid4().hex[:6]}"
    await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue})
    try:
        for start in range(0, n, 1000):
            await event_bus.publish_batch(events(min(1000, n - start)), delay=3600)
    finally:
        await earnevents.close()
    return redis_bytes(client, [f"{keys.PREFIX}:{queue}:scheduled*"]) / n


async def queued(redis_url: str, client: redis.Redis, n: int) -> tuple[float, str]:
    queue = f"cap-queued-{uuid.uuid4().hex[:6]}"
    await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue})
    try:
        for start in range(0, n, 1000):
            await event_bus.publish_batch(events(min(1000, n - start)))
    finally:
        await earnevents.close()
    return redis_bytes(client, [], (queue,)) / n, queue


def in_flight(redis_url: str, client: redis.Redis, queue: str, n: int) -> tuple[float, float]:
    """Take the ``n`` messages on ``queue`` with earnevents' transport and acknowledge none
    (as workers holding them do); then claim each event's job as a worker does before running it."""
    conn = kombu.Connection(
        redis_url,
        transport="earnevents.worker.transport:Transport",
        transport_options={
            "visibility_timeout": 3600,
            "priority_steps": [0],
            "unacked_key": keys.UNACKED,
            "unacked_index_key": keys.UNACKED_INDEX,
            "unacked_mutex_key": keys.UNACKED_MUTEX,
        },
    )
    got: list[kombu.Message] = []
    try:
        channel = conn.channel()
        channel.basic_qos(0, n, False)
        consumer = kombu.Consumer(channel, queues=[kombu.Queue(queue, no_declare=True)], on_message=got.append)
        consumer.consume()
        deadline = time.monotonic() + 120
        while len(got) < n and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:
                pass
        assert len(got) == n, f"took {len(got)} of {n}"
        unacked = redis_bytes(client, [f"{keys.PREFIX}:{queue}:inflight*"], (keys.UNACKED, keys.UNACKED_INDEX))
    finally:
        conn.release()

    async def claim_all() -> int:
        aclient = aioredis.Redis.from_url(redis_url)
        completions = Completions(lambda: aclient, 86400.0)
        now = time.time()
        for m in got:
            await completions.claim(
                str(m.properties.get(message.COPY_ID, m.headers["id"])), [(m.headers["id"], [HANDLER])], [now]
            )
        await aclient.aclose()
        return redis_bytes(client, [keys.job_claims("*")])

    claims = asyncio.run(claim_all())
    return unacked / n, claims / n


async def failed_redis(redis_url: str, client: redis.Redis, n: int) -> dict[str, float]:
    queue = f"cap-failed-{uuid.uuid4().hex[:6]}"
    aclient = aioredis.Redis.from_url(redis_url)
    store = RedisFailureStore(lambda: aclient, queue)
    for i in range(n):
        event = Event(f"order.paid.{i % 2}", dict(PAYLOAD))
        await store.add(a_failure(event, queue))
    await aclient.aclose()
    # Records are ``failed-job:<id>`` (ids unique across queues): only this queue's exist here.
    return {
        "record": redis_bytes(client, [keys.failed_job("*")]) / n,
        "indexes": redis_bytes(client, [f"{keys.failed_index(queue)}*"]) / n
        - redis_bytes(client, [], (keys.failed_keys(queue),)) / n,
        "key list": redis_bytes(client, [], (keys.failed_keys(queue),)) / n,
    }


def mongo_sizes(col: Any) -> tuple[float, float]:
    """Mean BSON bytes of the stored documents, and nx-27017's own storageSize per document."""
    sizes = [len(bson.encode(doc)) for doc in col.find({})]
    stats = col.database.command("collStats", col.name)
    return sum(sizes) / len(sizes), stats["storageSize"] / max(1, stats["count"])


async def failed_mongo(mongo_url: str, n: int) -> tuple[float, float]:
    from pymongo import AsyncMongoClient

    database = f"cap_{uuid.uuid4().hex[:6]}"
    aclient: AsyncMongoClient[Any] = AsyncMongoClient(mongo_url, tz_aware=True)
    store = MongoFailureStore(lambda: aclient[database], "cap-failed")
    for i in range(n):
        await store.add(a_failure(Event(f"order.paid.{i % 2}", dict(PAYLOAD)), "cap-failed"))
    await aclient.close()
    with MongoClient(mongo_url, tz_aware=True) as sync:
        return mongo_sizes(sync[database][keys.MONGO_FAILED_COLLECTION])


def outboxed(mongo_url: str, n: int) -> tuple[float, float]:
    queue = "cap-outbox"
    database = f"cap_{uuid.uuid4().hex[:6]}"
    with MongoClient(mongo_url, tz_aware=True) as sync:
        col = sync[database][outbox.COLLECTION]
        for start in range(0, n, 1000):
            batch = events(min(1000, n - start))
            built = [(e.id, e.name, message.build(e.to_wire(), queue=queue, task_id=e.id)) for e in batch]
            col.insert_many(outbox.documents([(i, name, message.new_copy(p)) for i, name, p in built], queue, None))
        return mongo_sizes(col)


def logged_changes(batch: list[Event], queue: str) -> list[Any]:
    """What publish and a worker write for each event: published, then one handler succeeded."""
    now = time.time()
    changes: list[Any] = []
    for event in batch:
        changes.append(Published(event, queue, now))
        done = HandlerRecord(
            HANDLER,
            SUCCEEDED,
            attempts=1,
            started_at=dt.datetime.fromtimestamp(now, dt.timezone.utc),
            finished_at=dt.datetime.fromtimestamp(now + 0.002, dt.timezone.utc),
            duration=0.002,
        )
        changes.append(HandlerChange(event.id, queue, HANDLER, done.to_entry()))
    return changes


async def logged_redis(redis_url: str, client: redis.Redis, n: int) -> float:
    queue = f"cap-log-{uuid.uuid4().hex[:6]}"
    aclient = aioredis.Redis.from_url(redis_url)
    store = RedisEventLog(lambda: aclient, queue)
    ids: list[str] = []
    for start in range(0, n, 1000):
        batch = events(min(1000, n - start))
        ids.extend(e.id for e in batch)
        await store.write(logged_changes(batch, queue))
    await aclient.aclose()
    return redis_bytes(client, [f"{keys.eventlog_index(queue)}*"], tuple(keys.eventlog_record(i) for i in ids)) / n


async def logged_mongo(mongo_url: str, n: int) -> tuple[float, float]:
    from pymongo import AsyncMongoClient

    database = f"cap_{uuid.uuid4().hex[:6]}"
    aclient: AsyncMongoClient[Any] = AsyncMongoClient(mongo_url, tz_aware=True)
    store = MongoEventLog(lambda: aclient[database], "cap-log")
    for start in range(0, n, 1000):
        await store.write(logged_changes(events(min(1000, n - start)), "cap-log"))
    await aclient.close()
    with MongoClient(mongo_url, tz_aware=True) as sync:
        return mongo_sizes(sync[database][keys.MONGO_EVENTLOG_COLLECTION])


def dead_lettered(client: redis.Redis, n: int) -> float:
    queue = f"cap-dead-{uuid.uuid4().hex[:6]}"
    item = json.dumps({"not": "a message", "blob": "x" * 1000}).encode()[:1024]
    for _ in range(n):
        dead = deadletters.DeadItem.new(item, queue, "not an earnevents.dispatch message", task_id=None)
        script_keys, argv = deadletters.add_args(dead, n)
        client.eval(deadletters.ADD_SCRIPT, len(script_keys), *script_keys, *argv)
    return redis_bytes(client, [], (keys.dead_index(queue), keys.dead_items(queue))) / n


async def completed(redis_url: str, n: int) -> float:
    aclient = aioredis.Redis.from_url(redis_url)
    try:
        return (await per_job_now(aclient, n, handler_names(1), steady=True))["usage"]
    finally:
        await aclient.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="items per row (MongoDB rows: a fifth)")
    args = parser.parse_args()
    n, n_mongo = args.n, max(100, args.n // 5)
    began = time.monotonic()
    with RedisServer() as redis_server, MongoServer() as mongo_server:
        client = redis.Redis.from_url(redis_server.url)
        rows: dict[str, dict[str, Any]] = {}
        rows["pending delayed event"] = {"redis": asyncio.run(delayed(redis_server.url, client, n)), "mongo": 0}
        per_queued, queue = asyncio.run(queued(redis_server.url, client, n))
        rows["message waiting on the queue"] = {"redis": per_queued, "mongo": 0}
        unacked, claims = in_flight(redis_server.url, client, queue, n)
        rows["in-flight message (one job)"] = {
            "redis": unacked + claims,
            "redis_parts": {"unacked record": unacked, "job claim": claims},
            "mongo": 0,
        }
        mongo_failed, nx_failed = asyncio.run(failed_mongo(mongo_server.url, n_mongo))
        failed_parts = asyncio.run(failed_redis(redis_server.url, client, n))
        rows["failed job"] = {
            "redis": sum(failed_parts.values()),
            "redis_parts": failed_parts,
            "mongo": mongo_failed,
            "nx": nx_failed,
            "note": "Redis or MongoDB store, not both",
        }
        client.flushall()  # the dedup row measures from an empty Redis
        rows["completed job (dedup record, 24 h)"] = {
            "redis": asyncio.run(completed(redis_server.url, n * 5)),
            "mongo": 0,
        }
        rows["dead-lettered 1 KiB item"] = {"redis": dead_lettered(client, n), "mongo": 0}
        mongo_outbox, nx_outbox = outboxed(mongo_server.url, n_mongo)
        rows["event in the outbox (Redis down)"] = {"redis": 0, "mongo": mongo_outbox, "nx": nx_outbox}
        mongo_log, nx_log = asyncio.run(logged_mongo(mongo_server.url, n_mongo))
        rows["event-log record (one handler)"] = {
            "redis": asyncio.run(logged_redis(redis_server.url, client, n)),
            "mongo": mongo_log,
            "nx": nx_log,
            "note": "Redis or MongoDB store, not both",
        }
        info = client.info("server")
        client.close()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "redis_version": info.get("redis_version"),
        "n": n,
        "n_mongo": n_mongo,
        "payload_bytes": len(json.dumps(PAYLOAD)),
        "seconds": round(time.monotonic() - began, 1),
        "rows": rows,
    }
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"bytes per item, {n} items per Redis row, {n_mongo} per MongoDB row, ~{result['payload_bytes']}-byte payload"
    )
    print("| kept | Redis bytes | MongoDB bytes (BSON) |")
    print("|---|---|---|")
    for what, row in rows.items():
        mongo = f"{row['mongo']:,.0f}" if row["mongo"] else "0"
        if "nx" in row:
            mongo += f" (nx-27017 storage: {row['nx']:,.0f})"
        redis_text = f"{row['redis']:,.0f}" if row["redis"] >= 20 or not row["redis"] else f"{row['redis']:.1f}"
        if "redis_parts" in row:
            redis_text += " (" + ", ".join(f"{k} {v:,.0f}" for k, v in row["redis_parts"].items()) + ")"
        print(f"| {what} | {redis_text} | {mongo} |")
    print(f"raw: {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
