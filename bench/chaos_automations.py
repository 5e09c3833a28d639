"""`make chaos-automations`: model events scheduled at a date while workers are killed and Redis restarts.

A publisher creates ``--bookings`` Booking documents (bench/chaos_automation_handlers.py),
confirmed and due 5-20 s ahead, and changes a share of them while they are pending:
moves the date (due 5-20 s from then), cancels (status pending), deletes, or toggles
(pending, then confirmed again: the same due time). Meanwhile one of two workers is
SIGKILLed and restarted every few seconds and Redis (appendonly everysec) is SIGKILLed
once and restarted ``--redis-down`` s later (default 5: writes go to the MongoDB outbox
meanwhile); writes that raise (an app would see the error) are counted, not
retried. At the end the occurrences MongoDB's final documents call for (confirmed, a
date set) must each have fired, and nothing else: lost, unexpected (an old due time, a
cancelled or deleted booking) and failed jobs must be 0. Not run by CI.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from bson import ObjectId
from pymongo import MongoClient

import earnevents
from earnevents import event_bus, keys
from earnevents.redact import redact_uri
from earnevents.testing import MongoServer, RedisServer

from .chaos import (
    Chaos,
    add_appendfsync_option,
    log,
    mongo_workers,
    postponed_aof_writes,
    settle,
    wait_for_progress,
)
from .chaos_automation_handlers import FIRED, FIRST_AT, Booking, to_ms

QUEUE = "chaos-automations"
DATABASE = "chaos_automations"
MODEL, DEFINITION = "Booking", "booking.due"
OPERATIONS = ("move", "cancel", "delete", "toggle")
MARGIN = 2.0
"""A booking is changed only while its due time is at least this many seconds ahead, so
that its occurrence cannot have fired before the change (which would count as unexpected)."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Published:
    """What the publisher did."""

    created: int = 0
    changes: collections.Counter[str] = field(default_factory=collections.Counter)
    skipped: int = 0
    """Changes not made: the booking was due within MARGIN s (or gone) by then."""
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    """Writes that raised, by operation and exception type."""
    latest_due: float = 0.0
    """The latest due time written (unix seconds): stale occurrences fire by then."""


async def publish_all(
    redis_url: str, mongo_url: str, bookings: int, share: float, clients: int, seconds: float, seed: int = 3
) -> Published:
    """Create ``bookings`` confirmed bookings from ``clients`` concurrent tasks (as an app's
    requests would), spread over ``seconds`` at least; after each create, with probability ``share``, change one booking
    not changed yet, mostly a recent one, each booking at most once."""
    await earnevents.init(
        redis_uri=redis_url,
        mongo_uri=mongo_url,
        database=DATABASE,
        event_config={"queue_name": QUEUE, "publish_timeout": 10},
    )
    rng = random.Random(seed)
    done = Published()
    unchanged: list[ObjectId] = []

    def due_soon() -> dt.datetime:
        at = utcnow() + dt.timedelta(seconds=rng.uniform(5, 20))
        done.latest_due = max(done.latest_due, at.timestamp())
        return at

    async def attempt(what: str, write: Any) -> None:
        try:
            await write
        except Exception as exc:  # what an app would see; not retried
            done.errors[f"{what}: {type(exc).__name__}"] += 1

    async def change(booking_id: ObjectId, operation: str) -> None:
        booking = await Booking.get(booking_id)
        if booking is None or booking.at is None or booking.at.timestamp() < time.time() + MARGIN:
            done.skipped += 1
            return
        done.changes[operation] += 1
        if operation == "move":
            booking.at = due_soon()
            await booking.save()
        elif operation == "cancel":
            booking.status = "pending"
            await booking.save()
        elif operation == "delete":
            await booking.delete()
        else:
            booking.status = "pending"
            await booking.save()
            booking.status = "confirmed"
            await booking.save()

    def pick() -> ObjectId:
        back = min(int(rng.expovariate(1 / 30)), len(unchanged) - 1)
        return unchanged.pop(len(unchanged) - 1 - back)

    remaining = iter(range(bookings))
    started = time.monotonic()

    async def client() -> None:
        for n in remaining:
            await asyncio.sleep(started + n * seconds / bookings - time.monotonic())
            booking = Booking(at=due_soon(), status="confirmed")
            await attempt("create", booking.create())
            if booking.is_stored:
                done.created += 1
                unchanged.append(booking.id)
            if unchanged and rng.random() < share:
                operation = rng.choice(OPERATIONS)
                await attempt(operation, change(pick(), operation))

    try:
        await asyncio.gather(*(client() for _ in range(clients)))
    finally:
        await earnevents.close()
    return done


def expected_occurrences(mongo_url: str) -> tuple[set[str], int]:
    """``<id>:<due ms>`` of every booking MongoDB holds confirmed with a date, and how many
    bookings it holds. Read through the model, as the worker reads them (nx-27017 stores a
    datetime written by ``$set`` as a naive string, which the model reads as UTC)."""
    client: MongoClient[Any] = MongoClient(mongo_url, tz_aware=True)
    try:
        bookings = [Booking.from_document(doc) for doc in client[DATABASE][Booking._collection].find({})]
    finally:
        client.close()
    expected = {f"{b.id}:{to_ms(b.at)}" for b in bookings if b.status == "confirmed" and b.at is not None}
    return expected, len(bookings)


async def failed_jobs(redis_url: str, mongo_url: str) -> list[Any]:
    await earnevents.init(
        redis_uri=redis_url, mongo_uri=mongo_url, database=DATABASE, event_config={"queue_name": QUEUE}
    )
    try:
        return await event_bus.get_failed_jobs(limit=1_000_000)
    finally:
        await earnevents.close()


def pending_work(client: redis.Redis) -> int:
    """Messages still scheduled, queued or unacknowledged (a stale occurrence may still fire)."""
    pipe = client.pipeline(transaction=False)
    pipe.zcard(keys.scheduled_zset(QUEUE))
    pipe.llen(QUEUE)
    pipe.hlen(keys.UNACKED)
    return sum(pipe.execute())


def where_is(client: redis.Redis, field: str) -> str:
    """Where a lost occurrence's booking stands in the schedule (for diagnosis)."""
    booking_id = field.split(":")[0]
    member = keys.occurrence_member(MODEL, booking_id, DEFINITION)
    due = client.zscore(keys.scheduled_zset(QUEUE), member)
    places = [] if due is None else [f"scheduled for {int(due * 1000)}"]
    if any(booking_id.encode() in m for m in client.lrange(QUEUE, 0, -1)):
        places.append("queue")
    if any(booking_id.encode() in m for m in client.hvals(keys.UNACKED)):
        places.append("unacked")
    fired = [k.decode() for k in client.hkeys(FIRED) if k.decode().startswith(booking_id)]
    return f"{','.join(places) or 'nowhere'}; fired: {fired or 'none'}"


def dropped_at_due_time(paths: list[Path]) -> collections.Counter[str]:
    """Why the workers dropped stale occurrences when they came due, from their logs."""
    reasons: collections.Counter[str] = collections.Counter()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            if f"{DEFINITION} for {MODEL} " in line and " not published: " in line:
                why = line.split(" not published: ", 1)[1]
                reasons["due at another time" if why.startswith("it is due at") else why] += 1
    return reasons


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=2000)
    parser.add_argument("--change-share", type=float, default=0.5, help="share of the bookings changed once")
    parser.add_argument("--clients", type=int, default=64, help="concurrent writers in the publisher")
    parser.add_argument("--publish-seconds", type=float, default=20, help="spread the creates over this long")
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between worker kills")
    parser.add_argument("--redis-down", type=float, default=5.0, help="seconds Redis stays down when killed")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for every occurrence")
    parser.add_argument("--stall", type=float, default=45, help="stop waiting after this long without progress")
    add_appendfsync_option(parser)
    args = parser.parse_args()

    server = RedisServer(appendonly=True, appendfsync=args.appendfsync)
    mongo = MongoServer()
    server.start()
    mongo.start()
    workers = mongo_workers(
        "chaos-automations", "bench.chaos_automation_handlers", QUEUE, DATABASE, server.url, mongo.url, 2
    )
    client = redis.Redis.from_url(server.url)
    try:
        for worker in workers:
            worker.start()
        chaos = Chaos(workers, server, args.kill_every, args.redis_down)
        chaos.start()
        log(f"creating {args.bookings} bookings due in 5-20 s, changing {args.change_share:.0%} of them")
        log(f"redis {redact_uri(server.url)}, mongodb {redact_uri(mongo.url)}")
        started = time.monotonic()
        published = asyncio.run(
            publish_all(server.url, mongo.url, args.bookings, args.change_share, args.clients, args.publish_seconds)
        )
        log(
            f"published in {time.monotonic() - started:.1f} s: {published.created} created, "
            f"changes {dict(published.changes)}, {published.skipped} skipped, "
            f"write errors {sum(published.errors.values())}"
        )
        expected, stored = expected_occurrences(mongo.url)
        log(f"{len(expected)} occurrences expected; waiting for them while the chaos goes on")

        def progress() -> tuple[int, bool]:
            fired = client.hkeys(FIRED)
            count = len(expected.intersection(k.decode() for k in fired))
            quiet = time.time() > published.latest_due + 5 and pending_work(client) == 0
            return count + len(fired), count >= len(expected) and quiet

        wait_for_progress(progress, args.timeout, args.stall)
        settle(chaos, workers)
        fired = {k.decode(): int(v) for k, v in client.hgetall(FIRED).items()}
        first_at = {k.decode(): int(v) for k, v in client.hgetall(FIRST_AT).items()}
        failed = asyncio.run(failed_jobs(server.url, mongo.url))
        lost = expected - fired.keys()
        unexpected = fired.keys() - expected
        twice = {k: n for k, n in fired.items() if n > 1}
        latency = [(first_at[k] - int(k.rsplit(":", 1)[1])) / 1000 for k in expected & first_at.keys()]
        print()
        print(f"bookings created:                  {published.created} ({stored} left in MongoDB)")
        changes = dict(sorted(published.changes.items()))
        print(f"changes made:                      {sum(changes.values())}  {changes}")
        print(f"changes skipped (due too soon):    {published.skipped}")
        print(f"write errors seen by the publisher: {sum(published.errors.values())}  {dict(published.errors)}")
        print(f"occurrences expected:              {len(expected)}")
        print(f"fired (expected ones):             {len(expected & fired.keys())}")
        print(f"lost:                              {len(lost)}")
        print(f"unexpected:                        {len(unexpected)}")
        print(f"fired more than once:              {len(twice)}")
        print(f"failed jobs:                       {len(failed)}")
        dropped = dropped_at_due_time([Path(w.log_path) for w in workers])
        print(f"stale occurrences dropped when due: {sum(dropped.values())}  {dict(dropped)}")
        print(f"worker kills:                      {chaos.kills}; redis restarts: {int(chaos.redis_restarted)}")
        print(f"redis AOF writes postponed:        {postponed_aof_writes(server)}  (appendfsync {args.appendfsync})")
        if latency:
            print(
                f"latency (handler - due):           p50 {statistics.median(latency):.3f} s, "
                f"p99 {percentile(latency, 0.99):.3f} s, max {max(latency):.3f} s"
            )
        for name in sorted(lost)[:20]:
            print("  lost:", name, where_is(client, name))
        for name in sorted(unexpected)[:20]:
            print("  unexpected:", name, "x", fired[name])
        for job in failed[:10]:
            print("  failed:", job.event.name, job.handler, job.error)
        return 1 if lost or unexpected or failed else 0
    finally:
        for worker in workers:
            worker.stop()
        client.close()
        server.cleanup()
        mongo.__exit__()  # stops it and deletes its data


if __name__ == "__main__":
    sys.exit(main())
