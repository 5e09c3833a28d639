"""`make chaos`: publish 10,000 events while workers are killed and Redis restarts.

Half the events are delayed by 0-5 s. During publishing and handling, one of two
workers is SIGKILLed and restarted every few seconds, and Redis (appendonly
everysec) is SIGKILLed and restarted once. With ``--poison N``, N queue items
that are not valid messages (see :func:`poison_items`) are pushed between the
events. At the end it prints how many events were published, how many (event,
handler) jobs completed, how many were lost (must be 0), how many ran more than
once, how many failed, and how many poison items were dead-lettered (must be all).
Not run by CI.

Handler faults (``bench/chaos_faults.py``, loaded only when asked for):
``--exit-every K`` marks every K-th event for a handler that kills its own worker
process (``os._exit``), ``--hang-every K`` for one that never returns (cut off by
its ``timeout``). Each marked job must end as exactly one failed job and its sibling
handlers must complete for the same event; anything else counts as lost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bz2
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

import earnevents
from earnevents import Event, event_bus, message
from earnevents.redact import redact_uri
from earnevents.testing import RedisServer, WorkerProcess

from .chaos_handlers import DONE, STARTS

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "chaos"
HANDLERS = ("first", "second")


def log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


class Chaos(threading.Thread):
    """Kills one of the workers every ``period`` s (restarting it) and Redis once, restarting
    it after ``redis_down`` s."""

    def __init__(
        self, workers: list[WorkerProcess], server: RedisServer, period: float, redis_down: float = 0.0
    ) -> None:
        super().__init__(daemon=True)
        self.workers, self.server, self.period, self.redis_down = workers, server, period, redis_down
        self.stop_event = threading.Event()
        self.kills = 0
        self.redis_restarted = False

    def run(self) -> None:
        rng = random.Random(7)
        while not self.stop_event.wait(self.period):
            victim = rng.choice(self.workers)
            victim.kill()
            self.kills += 1
            if self.kills == 2 and not self.redis_restarted:
                later = f" in {self.redis_down:g} s" if self.redis_down else ""
                log(f"chaos: SIGKILL redis-server, restart it{later}")
                self.server.kill()
                time.sleep(self.redis_down)
                self.server.start()
                self.redis_restarted = True
            victim.start(wait=False)
            log(f"chaos: SIGKILLed and restarted a worker ({self.kills})")


def wait_for_progress(progress: Callable[[], tuple[int, bool]], timeout: float, stall: float) -> None:
    """Call ``progress()`` (how much is done, whether all is) about once a second until all
    is done, ``timeout`` s have passed, or the count stayed the same for ``stall`` s.
    A ``redis.ConnectionError`` (Redis restarting) counts as no answer."""
    deadline = time.monotonic() + timeout
    last_progress, last_count = time.monotonic(), -1
    while time.monotonic() < deadline and time.monotonic() - last_progress < stall:
        try:
            count, finished = progress()
        except redis.ConnectionError:
            time.sleep(0.5)
            continue
        if finished:
            break
        if count != last_count:
            last_progress, last_count = time.monotonic(), count
        time.sleep(1)


def settle(chaos: Chaos, workers: list[WorkerProcess]) -> None:
    """Stop the chaos, start the workers it left dead, and give a last redelivery time to show."""
    chaos.stop_event.set()
    chaos.join()
    for worker in workers:
        if worker.proc is None or worker.proc.poll() is not None:
            worker.start()
    time.sleep(3)  # let a last redelivery show up in the counts


def mongo_workers(
    name: str,
    modules: str,
    queue: str,
    database: str,
    redis_url: str,
    mongo_url: str,
    concurrency: int,
    max_deliveries: int = 3,
) -> list[WorkerProcess]:
    """Two workers for a chaos run that needs MongoDB too (logs: ``.run/<name>-worker-<i>.log``)."""
    env = {
        "EARNEVENTS_REDIS_URI": redis_url,
        "EARNEVENTS_QUEUE": queue,
        "EARNEVENTS_MONGO_URI": mongo_url,
        "EARNEVENTS_DATABASE": database,
        "EARNEVENTS_HANDLER_MODULES": modules,
        "EARNEVENTS_VISIBILITY_TIMEOUT": "5",
        "EARNEVENTS_MAX_DELIVERIES": str(max_deliveries),
        "PYTHONPATH": str(ROOT),
    }
    logs = ROOT / ".run"
    logs.mkdir(exist_ok=True)
    paths = [logs / f"{name}-worker-{i}.log" for i in range(2)]
    for path in paths:
        path.unlink(missing_ok=True)
    return [WorkerProcess(env, concurrency=concurrency, cwd=str(ROOT), log_path=str(path)) for path in paths]


def poison_items(count: int) -> list[bytes]:
    """``count`` queue items a worker must refuse, cycling through several shapes."""
    good = json.loads(message.build(Event("chaos.tick", {"n": -1}).to_wire(), queue=QUEUE, task_id="poison"))

    def changed(change: dict[str, object], properties: dict[str, object] | None = None) -> bytes:
        m = {**good, "headers": {**good["headers"], **change}}
        m["properties"] = {**good["properties"], **(properties or {})}
        return json.dumps(m).encode()

    shapes = [
        b"\x00not json",
        changed({}, {"body_encoding": "rot13"}),
        changed({"id": None}),
        changed({"task": ["x"]}),
        changed({"timelimit": ["a", "b"]}),
        changed({"eta": "2030-01-01T00:00:00+00:00"}),
        changed({"compression": "application/x-bz2"}).replace(
            good["body"].encode(), base64.b64encode(bz2.compress(b"[" * 1_000_000))
        ),
        changed({}, {"delivery_info": {}}),
        ("[" * 50_000 + "]" * 50_000).encode(),
    ]
    return [shapes[i % len(shapes)] for i in range(count)]


def marks(n: int, exit_every: int, hang_every: int) -> dict[str, bool]:
    """The fault flags of event number ``n`` (none when the fault modes are off)."""
    return {
        "exit": bool(exit_every) and n % exit_every == exit_every - 1,
        "hang": bool(hang_every) and n % hang_every == hang_every // 2,
    }


async def publish_all(
    redis_url: str,
    total: int,
    per_message: int = 1,
    poison: int = 0,
    exit_every: int = 0,
    hang_every: int = 0,
    event_log: bool = False,
) -> list[str]:
    config = {"queue_name": QUEUE, "publish_timeout": 60, "event_log": event_log}
    await earnevents.init(redis_uri=redis_url, event_config=config)
    rng = random.Random(1)
    ids: list[str] = []
    bad = poison_items(poison)
    sync = redis.Redis.from_url(redis_url)
    try:
        for start in range(0, total, 100):
            if bad:  # spread over the run: an equal share after each batch of 100
                share = max(1, len(bad) * 100 // max(total, 1))
                sync.lpush(QUEUE, *bad[:share])
                del bad[:share]
            batch = [
                Event("chaos.tick", {"n": n, **marks(n, exit_every, hang_every)})
                for n in range(start, min(start + 100, total))
            ]
            if (start // 100) % 2:
                for event in batch:  # delayed ones one by one, each with its own delay
                    ids.append(await event_bus.publish(event, delay=rng.uniform(0, 5)))
            else:
                ids += await event_bus.publish_batch(batch, events_per_message=per_message)
        if bad:
            sync.lpush(QUEUE, *bad)
    finally:
        sync.close()
        await earnevents.close()
    return ids


async def _logged_statuses(redis_url: str, ids: list[str]) -> dict[str, int]:
    """How many of ``ids`` the event log shows in each status ("missing": no record)."""
    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": QUEUE, "event_log": True})
    counts: dict[str, int] = {}
    try:
        for event_id in ids:
            try:
                status = (await event_bus.get_event(event_id)).status
            except earnevents.EventNotFoundError:
                status = "missing"
            counts[status] = counts.get(status, 0) + 1
    finally:
        await earnevents.close()
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between worker kills")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for every job")
    parser.add_argument("--stall", type=float, default=45, help="stop waiting after this long without progress")
    parser.add_argument(
        "--events-per-message",
        type=int,
        default=1,
        help="pack the undelayed events (publish_batch) this many a message",
    )
    parser.add_argument("--poison", type=int, default=0, help="queue items that are not valid messages to push")
    parser.add_argument("--exit-every", type=int, default=0, help="every K-th event: a handler calls os._exit")
    parser.add_argument("--hang-every", type=int, default=0, help="every K-th event: a handler never returns")
    parser.add_argument("--event-log", action="store_true", help="event log on (publisher and workers); report it")
    parser.add_argument(
        "--pool", default="prefork", help="the workers' pool: prefork (default) or threads (async messages on the loop)"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="the workers' -c")
    parser.add_argument("--sync-faults", action="store_true", help="the crasher is a plain def, not async")
    add_appendfsync_option(parser)
    args = parser.parse_args()
    faults = bool(args.exit_every or args.hang_every)

    server = RedisServer(appendonly=True, appendfsync=args.appendfsync)
    server.start()
    env = {
        "EARNEVENTS_REDIS_URI": server.url,
        "EARNEVENTS_QUEUE": QUEUE,
        "EARNEVENTS_MONGO_URI": "",
        "EARNEVENTS_HANDLER_MODULES": "bench.chaos_handlers" + (",bench.chaos_faults" if faults else ""),
        "EARNEVENTS_VISIBILITY_TIMEOUT": "5",
        "EARNEVENTS_MAX_DELIVERIES": "3",
        "PYTHONPATH": str(ROOT),
        "EARNEVENTS_EVENT_LOG": "1" if args.event_log else "0",
        "CHAOS_SYNC_FAULTS": "1" if args.sync_faults else "0",
    }
    logs = ROOT / ".run"
    logs.mkdir(exist_ok=True)
    workers = [
        WorkerProcess(
            env,
            pool=args.pool,
            concurrency=args.concurrency,
            cwd=str(ROOT),
            log_path=str(logs / f"chaos-worker-{i}.log"),
        )
        for i in range(2)
    ]
    client = redis.Redis.from_url(server.url)
    try:
        for worker in workers:
            worker.start()
        chaos = Chaos(workers, server, args.kill_every)
        chaos.start()
        log(f"publishing {args.events} events (half delayed 0-5 s) to {redact_uri(server.url)}")
        ids = asyncio.run(
            publish_all(
                server.url,
                args.events,
                args.events_per_message,
                args.poison,
                args.exit_every,
                args.hang_every,
                args.event_log,
            )
        )
        log(f"published {len(ids)}; waiting for every job while the chaos goes on")
        expected = {f"{i}:{h}" for i in ids for h in HANDLERS}
        must_fail: set[str] = set()  # the marked jobs of the fault handlers
        if faults:
            for n, event_id in enumerate(ids):
                flags = marks(n, args.exit_every, args.hang_every)
                for handler, flag in (("crasher", "exit"), ("hanger", "hang")):
                    (must_fail if flags[flag] else expected).add(f"{event_id}:{handler}")

        def progress() -> tuple[int, bool]:
            done = client.hgetall(DONE)
            finished = len(done) >= len(expected) and (not must_fail or _marked_failed(server.url) >= must_fail)
            # a poison item a killed worker took waits in its in-flight list until the sweep returns it
            finished = finished and (not args.poison or _dead_count(server.url) >= args.poison)
            return len(done), finished

        wait_for_progress(progress, args.timeout, args.stall)
        settle(chaos, workers)
        done = client.hgetall(DONE)
        starts = client.hgetall(STARTS)
        completed = {k.decode() for k in done}
        twice = sum(1 for v in done.values() if int(v) > 1)
        restarted = sum(1 for v in starts.values() if int(v) > 1)
        failed, dead = asyncio.run(_failures(server.url))
        lost = (expected - completed) | (must_fail - failed)
        print()
        print(f"events published:                  {len(ids)}")
        print(f"(event, handler) jobs expected:    {len(expected)}")
        print(f"jobs completed:                    {len(completed & expected)}")
        print(f"lost:                              {len(lost)}  ({len(lost - failed)} of them not a failed job either)")
        print(f"completed more than once:          {twice}")
        print(f"started more than once:            {restarted}  (killed mid-handler, then redelivered)")
        print(
            f"failed jobs:                       {len(failed)}  ({len(must_fail & failed)} of {len(must_fail)} marked)"
        )
        print(f"unexpected failed jobs:            {len(failed - must_fail)}")
        print(f"poison items dead-lettered:        {dead} of {args.poison} pushed")
        if dead < args.poison:
            print("  not dead-lettered, still:", poison_left(client))
        print(f"worker kills:                      {chaos.kills}; redis restarts: {int(chaos.redis_restarted)}")
        print(f"redis AOF writes postponed:        {postponed_aof_writes(server)}  (appendfsync {args.appendfsync})")
        if args.event_log:
            statuses = asyncio.run(_logged_statuses(server.url, ids))
            shown = ", ".join(f"{status} {count}" for status, count in sorted(statuses.items()))
            print(f"event log, status of each event:   {shown}")
        for field in sorted(lost)[:20]:
            print("  lost:", field, where_is(client, field.split(":")[0]), "starts:", starts.get(field.encode()))
        return 0 if not lost and not failed - must_fail and dead == args.poison else 1
    finally:
        for worker in workers:
            worker.stop()
        client.close()
        server.cleanup()


def add_appendfsync_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--appendfsync",
        choices=("always", "everysec"),
        default="always",
        help="Redis' appendfsync (default always: with everysec, Redis killed while a background "
        "fsync is slow drops writes it had already acknowledged, which no client can recover)",
    )


def postponed_aof_writes(server: RedisServer) -> int:
    """How often Redis postponed writing its AOF because a background fsync was slow (its
    log says so): writes acknowledged in such a window are lost if Redis is then killed."""
    try:
        text = (Path(server.data_dir) / "redis.log").read_text(errors="replace")
    except OSError:
        return 0
    return text.count("Asynchronous AOF fsync is taking too long")


def poison_left(client: redis.Redis) -> dict[str, int]:
    """Where items that are not messages still are (queue, in-flight lists, unacknowledged), for diagnosis."""
    from earnevents import keys

    places: dict[str, int] = {}
    lists = [QUEUE, *(k.decode() for k in client.scan_iter(keys.inflight_list(QUEUE, "*")))]
    for name in lists:
        for item in client.lrange(name, 0, -1):
            try:
                poison = json.loads(item)["headers"]["id"] == "poison"
            except Exception:  # not even a message's shape
                poison = True
            if poison:
                places[name] = places.get(name, 0) + 1
    for raw in client.hvals(keys.UNACKED):  # taken by a worker killed before it refused it
        try:
            message = json.loads(raw)[0]
            poison = message["headers"]["id"] == "poison"
        except Exception:
            poison = True
        if poison:
            places[keys.UNACKED] = places.get(keys.UNACKED, 0) + 1
    return places


def where_is(client: redis.Redis, event_id: str) -> str:
    """Where a lost event's message still is, if anywhere (for diagnosis)."""
    from earnevents import keys

    places = []
    if client.zscore(keys.scheduled_zset(QUEUE), event_id) is not None:
        places.append("scheduled")
    if any(event_id.encode() in m for m in client.lrange(QUEUE, 0, -1)):
        places.append("queue")
    if any(event_id.encode() in m for m in client.hvals(keys.UNACKED)):
        places.append("unacked")
    return ",".join(places) or "nowhere"


def _marked_failed(redis_url: str) -> set[str]:
    """:func:`_failures`' failed jobs, or none while Redis is restarting."""
    try:
        return asyncio.run(_failures(redis_url))[0]
    except earnevents.EarnEventsError:
        return set()
    except redis.RedisError:
        return set()


def _dead_count(redis_url: str) -> int:
    """How many items were dead-lettered, or 0 while Redis is restarting."""
    try:
        return asyncio.run(_failures(redis_url))[1]
    except (earnevents.EarnEventsError, redis.RedisError):
        return 0


async def _failures(redis_url: str) -> tuple[set[str], int]:
    """The failed jobs as ``event id:handler`` (its short name), and how many items were dead-lettered."""
    await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": QUEUE})
    try:
        jobs = await event_bus.get_failed_jobs(limit=1_000_000)
        dead = await event_bus.count_dead_items()
    finally:
        await earnevents.close()
    return {f"{job.event.id}:{job.handler.rsplit('.', 1)[-1]}" for job in jobs}, dead


if __name__ == "__main__":
    sys.exit(main())
