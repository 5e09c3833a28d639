"""Redis bytes and Redis CPU per completed (event, handler) job kept for the dedup window.

Runs the worker's own claim-then-complete path (``worker.completions``) for many
events on a private redis-server, one message per event as a worker does, and divides
the growth of ``used_memory`` by the number of jobs; Redis CPU is the ``EVALSHA``
time of ``INFO commandstats`` per job, claims and completion writes apart. Beside it,
the previous layout (one string of handler digests per event with a TTL). Plain Celery
keeps nothing (it has no redelivery protection), so its figure is 0.

Records are bucketed by hour (for a 24 h window) and a bucket's shards are sized from
the previous bucket's count. "steady" runs as in the second hour at a constant rate (the
previous bucket's count is set to this run's); "cold" as in the first hour after a quiet
one (shards split as they fill).

    python -m bench.dedup_memory [--jobs 50000 500000 2000000] [--handlers 1 2 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import redis.asyncio as aioredis

from earnevents import keys
from earnevents.testing import RedisServer
from earnevents.worker.completions import DIGEST_SIZE, Completions, bucket_ms, digest

WINDOW = 86400.0
CHUNK = 50
"""Messages handled at once (a few worker processes' prefetch), each on its own connection."""


def handler_names(count: int) -> list[str]:
    """Realistic handler names (module path + function), ~35 characters."""
    return [f"myapp.billing.handlers.on_invoice_paid_{i}" for i in range(count)]


async def used(client: aioredis.Redis) -> int:
    """``used_memory`` with one client connected: the others' buffers are not the records."""
    await client.connection_pool.disconnect()
    info = await client.info("memory")
    return int(info["used_memory"])


async def script_usec(client: aioredis.Redis) -> int:
    """Total microseconds Redis spent in EVALSHA so far (``INFO commandstats``)."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("usec", 0))


async def seed_previous_bucket(client: aioredis.Redis, count: int) -> None:
    """Make the previous hour's bucket look as if it held ``count`` records."""
    blen = bucket_ms(WINDOW)
    sec, usec = await client.time()
    bucket = (sec * 1000 + usec // 1000) // blen
    await client.hset(f"{keys.dedup_buckets(blen)}{bucket - 1}", mapping={"c": count})


async def per_job_now(client: aioredis.Redis, events: int, handlers: list[str], steady: bool) -> dict[str, float]:
    """Bytes and EVALSHA usec per job now: each event claimed, then completed."""
    await client.flushall()
    if steady:
        await seed_previous_bucket(client, events * len(handlers))
    completions = Completions(lambda: client, WINDOW)
    await completions.claim("warm", [("warm", handlers)])  # scripts loaded, CONFIG read
    await completions.release("warm", handlers, "warm")
    before = await used(client)
    claim_usec = write_usec = 0
    began = time.perf_counter()
    for chunk in range(0, events, CHUNK):
        ids = [uuid.uuid4().hex for _ in range(min(CHUNK, events - chunk))]
        now = time.time()
        t0 = await script_usec(client)
        # One claim per message (event), as workers do; they run concurrently.
        await asyncio.gather(*(completions.claim(f"tag-{e}", [(e, handlers)], [now]) for e in ids))
        t1 = await script_usec(client)
        await asyncio.gather(*(completions.mark(e, handlers, f"tag-{e}") for e in ids))
        t2 = await script_usec(client)
        claim_usec += t1 - t0
        write_usec += t2 - t1
    elapsed = time.perf_counter() - began
    after = await used(client)
    assert not await client.keys(keys.job_claims("*")), "claims left behind"
    jobs = events * len(handlers)
    records = [k async for k in client.scan_iter(f"{keys.dedup_buckets(bucket_ms(WINDOW))}*", count=1000)]
    sets = [k for k in records if k.count(b":") == 5]
    encodings = {await client.object("encoding", k) for k in sets}
    pipe = client.pipeline(transaction=False)
    for k in records:
        pipe.memory_usage(k, samples=0)
    usage = sum(int(u or 0) for u in await pipe.execute())
    return {
        "bytes": (after - before) / jobs,
        "usage": usage / jobs,
        "claim_usec": claim_usec / jobs,
        "write_usec": write_usec / jobs,
        "sets": len(sets),
        "intset": float(encodings == {b"intset"}),
        "jobs_per_s": jobs / elapsed,
    }


async def per_job_before(client: aioredis.Redis, events: int, handlers: list[str]) -> float:
    """Bytes per job with the previous layout: ``earnevents:done:<event>`` strings of handler digests."""
    await client.flushall()
    before = await used(client)
    marks = b"".join(digest(h) for h in handlers)
    assert len(marks) == DIGEST_SIZE * len(handlers)
    for chunk in range(0, events, 500):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(500, events - chunk)):
            pipe.set(f"{keys.PREFIX}:done:{uuid.uuid4().hex}", marks, px=int(WINDOW * 1000))
        await pipe.execute()
    after = await used(client)
    return (after - before) / (events * len(handlers))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[50_000, 500_000, 2_000_000])
    parser.add_argument("--handlers", type=int, nargs="+", default=[1, 2, 5])
    args = parser.parse_args()
    with RedisServer() as server:
        client = aioredis.Redis.from_url(server.url)
        print("Redis bytes per completed job, 24 h window: used_memory growth / jobs (MEMORY USAGE of")
        print("the records / jobs); Redis usec per job: EVALSHA time in INFO commandstats. Plain Celery: 0 bytes.")
        print("jobs      handlers  before   steady        cold          claim/write usec steady  cold   intsets")
        for total in args.jobs:
            for n in args.handlers:
                names = handler_names(n)
                events = max(1, total // n)
                before = await per_job_before(client, events, names)
                steady = await per_job_now(client, events, names, steady=True)
                cold = await per_job_now(client, events, names, steady=False)
                print(
                    f"{events * n:<9} {n:>8}  {before:>6.0f}  {steady['bytes']:>5.1f} ({steady['usage']:>4.1f})"
                    f"  {cold['bytes']:>5.1f} ({cold['usage']:>4.1f})"
                    f"  {steady['claim_usec']:>5.1f} / {steady['write_usec']:<5.1f}"
                    f"         {cold['claim_usec']:>4.1f} / {cold['write_usec']:<4.1f}"
                    f"  {'all' if steady['intset'] and cold['intset'] else 'NOT ALL'}",
                    flush=True,
                )
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
