"""Redis bytes per completed (event, handler) job kept for the dedup window.

Runs the worker's own claim-then-complete path (``worker.completions``) for many
events on a private redis-server and divides the growth of ``used_memory`` by the
number of jobs; beside it, the layout before (one string key per job with a TTL).
Plain Celery keeps nothing (it has no redelivery protection), so its figure is 0.

    python -m bench.dedup_memory [--events 20000] [--handlers 1 2 5]
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import redis.asyncio as aioredis

from earnevents import keys
from earnevents.testing import RedisServer
from earnevents.worker.completions import Completions

WINDOW = 86400.0


def handler_names(count: int) -> list[str]:
    """Realistic handler names (module path + function), ~35 characters."""
    return [f"myapp.billing.handlers.on_invoice_paid_{i}" for i in range(count)]


async def used(client: aioredis.Redis) -> int:
    """Memory Redis holds for data: ``used_memory`` less client buffers (which come and go)."""
    info = await client.info("memory")
    return int(info["used_memory"]) - int(info.get("mem_clients_normal", 0))


async def per_job_now(client: aioredis.Redis, events: int, handlers: list[str]) -> tuple[float, int]:
    """Bytes per job now: claimed, then completed (one completion string per event)."""
    await client.flushall()
    completions = Completions(lambda: client, WINDOW)
    before = await used(client)
    ids = [uuid.uuid4().hex for _ in range(events)]
    for chunk in range(0, events, 500):
        batch = ids[chunk : chunk + 500]
        await completions.claim("tag", [(e, handlers) for e in batch])
        await asyncio.gather(*(completions.mark(e, handlers, "tag") for e in batch))
    after = await used(client)
    assert not await client.keys(keys.job_claims("*")), "claims left behind"
    one = int(await client.memory_usage(keys.completed(ids[0])) or 0)
    return (after - before) / (events * len(handlers)), one


async def per_job_before(client: aioredis.Redis, events: int, handlers: list[str]) -> tuple[float, int]:
    """Bytes per job with the previous layout: ``earnevents:done:<event>:<handler>`` strings."""
    await client.flushall()
    before = await used(client)
    first = ""
    for chunk in range(0, events, 500):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(500, events - chunk)):
            event_id = uuid.uuid4().hex
            first = first or event_id
            for h in handlers:
                pipe.set(f"earnevents:done:{event_id}:{h}", 1, px=int(WINDOW * 1000))
        await pipe.execute()
    after = await used(client)
    one = int(await client.memory_usage(f"earnevents:done:{first}:{handlers[0]}") or 0)
    return (after - before) / (events * len(handlers)), one


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--handlers", type=int, nargs="+", default=[1, 2, 5])
    args = parser.parse_args()
    with RedisServer() as server:
        client = aioredis.Redis.from_url(server.url)
        print(f"{args.events} events; Redis bytes per completed job (used_memory growth / jobs)")
        print("handlers/event  before (key per job)  now (string per event)  MEMORY USAGE before/now")
        for n in args.handlers:
            names = handler_names(n)
            before, key_before = await per_job_before(client, args.events, names)
            now, key_now = await per_job_now(client, args.events, names)
            print(f"{n:>14}  {before:>20.0f}  {now:>22.0f}  {key_before:>10} / {key_now} (one key)")
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
