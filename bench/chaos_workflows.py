"""`make chaos-workflows`: workflow runs moving on while workers are killed and Redis restarts.

The driver starts ``--runs`` runs of ``chaos_flow`` (bench/chaos_workflow_defs.py: goto,
a 0.5-2 s sleep, a wait for the signal ``chaos.go`` with a 60 s timeout, a step that fails
its first try and is retried, a side effect per step visit counted under
``current_step_key()``) from ``--clients`` concurrent tasks, and signals each run (by run
id, its index as payload) once MongoDB shows it in the step that returns the wait (which
takes 0.3 s): even-numbered runs 0-0.3 s later, mostly while that step is still to run or
running (an early arrival, kept in MongoDB for the wait), odd-numbered ones once they wait.
Meanwhile one of two workers is SIGKILLed and restarted every ``--kill-every`` s and Redis
(appendonly everysec) is SIGKILLed once and restarted ``--redis-down`` s later. Calls that
raise (an app would see the error) are counted; a signal that raised is sent again while its
run has not moved past the wait.

At the end every run MongoDB holds must be ``completed`` with exactly one ``completed``
history line and its own signal's payload; lost (runs not completed), failed runs, failed
jobs and timed-out waits (a signal that never reached its run) must be 0 (exit status 1
otherwise). Step visits whose side effect ran more than once are counted (expected only
from kills). Not run by CI.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from pymongo import MongoClient

import earnevents
from earnevents import event_bus, keys
from earnevents.redact import redact_uri
from earnevents.testing import MongoServer, RedisServer
from earnevents.workflows import engine
from earnevents.workflows.runs import ACTIVE, Run

from .chaos import (
    Chaos,
    add_appendfsync_option,
    log,
    mongo_workers,
    postponed_aof_writes,
    settle,
    wait_for_progress,
)
from .chaos_workflow_defs import EFFECTS, PARK_SECONDS, SIGNAL, TIMED_OUT, WAIT_TIMEOUT, WORKFLOW

QUEUE = "chaos-workflows"
DATABASE = "chaos_workflows"
PARK = "park"
STEPS = ("prepare", "reserve", "park", "charge", "finish")


@dataclass
class Driven:
    """What the driver did."""

    started: int = 0
    signalled: int = 0
    early: int = 0
    """Signals sent while the run's step that returns the wait was still running."""
    woke_now: int = 0
    """Signals whose call woke their run (the others were picked up by the wait itself)."""
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    """Calls that raised, by call and exception type."""
    resent: int = 0
    """Signals sent again after the call raised."""


def _init(redis_url: str, mongo_url: str) -> Any:
    return earnevents.init(
        redis_uri=redis_url,
        mongo_uri=mongo_url,
        database=DATABASE,
        event_config={"queue_name": QUEUE, "publish_timeout": 10},
    )


async def drive(redis_url: str, mongo_url: str, count: int, clients: int, seconds: float, timeout: float) -> Driven:
    """Start ``count`` runs spread over ``seconds`` and signal each once it reaches ``park``;
    returns when every run is past the wait (signalled or timed out), or after ``timeout`` s."""
    await _init(redis_url, mongo_url)
    done = Driven()
    remaining = iter(range(count))
    started = time.monotonic()
    deadline = started + timeout
    runs_collection = earnevents.runtime.current().db[keys.MONGO_WORKFLOW_RUNS]

    async def starter() -> None:
        for n in remaining:
            await asyncio.sleep(started + n * seconds / count - time.monotonic())
            try:
                await engine.start(WORKFLOW, index=n)
                done.started += 1
            except Exception as exc:  # what an app would see; the run may exist (found at the end)
                done.errors[f"start: {type(exc).__name__}"] += 1

    async def signal(doc: dict[str, Any], signalled: set[str]) -> None:
        run_id, index = doc["_id"], doc["context"]["index"]
        if index % 2:  # odd runs: once they wait (or moved on: their timeout)
            while (current := await runs_collection.find_one({"_id": run_id}, {"status": 1, "step": 1})) is not None:
                if current["status"] != "running" or current["step"] != PARK:
                    break
                await asyncio.sleep(0.1)
        else:  # even runs: at once, or a little later
            await asyncio.sleep(random.Random(index).uniform(0, PARK_SECONDS))
        current = await runs_collection.find_one({"_id": run_id}, {"status": 1})
        early = current is not None and current["status"] == "running"
        while True:
            try:
                woke = await engine.signal(SIGNAL, {"signalled_with": doc["context"]["index"]}, run_id=run_id)
                break
            except Exception as exc:
                done.errors[f"signal: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
                current = await runs_collection.find_one({"_id": run_id}, {"step": 1, "status": 1})
                if current is None or current["step"] != PARK or current["status"] not in ("running", "waiting"):
                    return  # the first try reached it (or its timeout did)
                done.resent += 1
        done.signalled += 1
        done.early += early
        done.woke_now += woke
        signalled.add(run_id)

    async def signaller(starting: asyncio.Future[Any]) -> None:
        signalled: set[str] = set()
        pending: set[asyncio.Task[None]] = set()
        while True:
            cursor = runs_collection.find(
                {"workflow": WORKFLOW, "step": PARK, "status": {"$in": ["running", "waiting"]}},
                {"status": 1, "context": 1},
            )
            async for doc in cursor:
                if doc["_id"] not in signalled and not any(t.get_name() == doc["_id"] for t in pending):
                    task = asyncio.create_task(signal(doc, signalled), name=doc["_id"])
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            if starting.done() and not pending:
                before = await runs_collection.count_documents(
                    {
                        "workflow": WORKFLOW,
                        "step": {"$in": ["prepare", "reserve", PARK]},
                        "status": {"$in": list(ACTIVE)},
                    }
                )
                if before == 0 or time.monotonic() > deadline:
                    return  # every run is past the wait (or some never get there: reported at the end)
            await asyncio.sleep(0.05)

    try:
        starting = asyncio.gather(*(starter() for _ in range(clients)))
        await signaller(starting)
        await starting
    finally:
        await earnevents.close()
    return done


async def failed_jobs(redis_url: str, mongo_url: str) -> list[Any]:
    await _init(redis_url, mongo_url)
    try:
        return await event_bus.get_failed_jobs(limit=1_000_000)
    finally:
        await earnevents.close()


def all_runs(mongo_url: str) -> list[Run]:
    client: MongoClient[Any] = MongoClient(mongo_url)
    try:
        return [Run.from_doc(doc) for doc in client[DATABASE][keys.MONGO_WORKFLOW_RUNS].find({"workflow": WORKFLOW})]
    finally:
        client.close()


def pending_work(client: redis.Redis) -> int:
    pipe = client.pipeline(transaction=False)
    pipe.llen(QUEUE)
    pipe.hlen(keys.UNACKED)
    return sum(pipe.execute())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--clients", type=int, default=32, help="concurrent starters in the driver")
    parser.add_argument("--start-seconds", type=float, default=15, help="spread the starts over this long")
    parser.add_argument("--concurrency", type=int, default=4, help="processes per worker (two workers)")
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between worker kills")
    parser.add_argument("--redis-down", type=float, default=2.5, help="seconds Redis stays down when killed")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for every run to end")
    parser.add_argument(
        "--stall", type=float, default=WAIT_TIMEOUT + 30, help="stop waiting after this long without progress"
    )
    add_appendfsync_option(parser)
    args = parser.parse_args()

    server = RedisServer(appendonly=True, appendfsync=args.appendfsync)
    mongo = MongoServer()
    server.start()
    mongo.start()
    # The default EARNEVENTS_MAX_DELIVERIES (5): a step whose worker died in that many starts less
    # one fails its run by design (a step that kills its process every time); with 3, two kills
    # landing in one step's visit (3 runs in 500 at a kill every 3 s) would fail it.
    workers = mongo_workers(
        "chaos-workflows",
        "bench.chaos_workflow_defs",
        QUEUE,
        DATABASE,
        server.url,
        mongo.url,
        args.concurrency,
        max_deliveries=5,
    )
    client = redis.Redis.from_url(server.url)
    try:
        for worker in workers:
            worker.start()
        chaos = Chaos(workers, server, args.kill_every, args.redis_down)
        chaos.start()
        log(f"starting {args.runs} runs of {WORKFLOW} over {args.start_seconds:g} s, signalling each at {PARK}")
        log(f"redis {redact_uri(server.url)}, mongodb {redact_uri(mongo.url)}")
        started = time.monotonic()
        driven = asyncio.run(drive(server.url, mongo.url, args.runs, args.clients, args.start_seconds, args.timeout))
        log(
            f"driven in {time.monotonic() - started:.1f} s: {driven.started} started, {driven.signalled} signalled "
            f"({driven.early} early), call errors {sum(driven.errors.values())}"
        )

        def progress() -> tuple[int, bool]:
            runs = all_runs(mongo.url)
            ended = sum(run.status in ("completed", "failed", "cancelled") for run in runs)
            return ended, ended == len(runs) and pending_work(client) == 0

        wait_for_progress(progress, args.timeout, args.stall)
        settle(chaos, workers)
        duration = time.monotonic() - started
        runs = all_runs(mongo.url)
        effects = {k.decode(): int(v) for k, v in client.hgetall(EFFECTS).items()}
        timed_out = {m.decode() for m in client.smembers(TIMED_OUT)}
        failed = asyncio.run(failed_jobs(server.url, mongo.url))

        statuses = collections.Counter(run.status for run in runs)
        completed = [run for run in runs if run.status == "completed"]
        lost = [run for run in runs if run.status != "completed"]
        completions = collections.Counter(sum(line["what"] == "completed" for line in run.history) for run in runs)
        not_once = [run for run in completed if completions and sum(x["what"] == "completed" for x in run.history) != 1]
        wrong_payload = [
            run
            for run in completed
            if run.context.get("signalled_with") != run.context.get("index") and not run.context.get("timed_out")
        ]
        rerun = {key: n for key, n in effects.items() if n > 1}
        rerun_by_step = collections.Counter(key.split(":")[1] for key in rerun)
        missing = (
            [
                run.id
                for run in completed
                if any(not any(k.startswith(f"{run.id}:{s}:") for k in effects) for s in STEPS)
            ]
            if len(effects) < 200_000
            else []
        )
        tries = collections.Counter(run.context.get("charge_tries") for run in completed)
        print()
        print(f"runs started:                      {driven.started} of {args.runs} ({len(runs)} in MongoDB)")
        print(f"statuses:                          {dict(sorted(statuses.items()))}")
        print(f"completed:                         {len(completed)}")
        print(f"lost (not completed):              {len(lost)}")
        print(f"failed runs:                       {statuses.get('failed', 0)}")
        print(f"runs not with exactly one 'completed' line: {len(not_once)}")
        print(f"runs without their signal's payload: {len(wrong_payload)}")
        print(
            f"signals sent:                      {driven.signalled} ({driven.early} early: the step still ran; "
            f"{driven.woke_now} woke the run in the call; {driven.resent} sent again after an error)"
        )
        print(f"timed-out waits:                   {len(timed_out)}")
        print(f"call errors seen by the driver:    {sum(driven.errors.values())}  {dict(driven.errors)}")
        print(
            f"step visits with side effects:     {len(effects)}; ran more than once: {len(rerun)} "
            f"{dict(sorted(rerun_by_step.items()))} (max {max(rerun.values(), default=1)})"
        )
        print(f"completed runs missing a step's side effect: {len(missing)}")
        print(f"charge tries (completed runs):     {dict(sorted(tries.items(), key=lambda kv: str(kv[0])))}")
        print(f"failed jobs:                       {len(failed)}")
        print(f"worker kills:                      {chaos.kills}; redis restarts: {int(chaos.redis_restarted)}")
        print(f"redis AOF writes postponed:        {postponed_aof_writes(server)}  (appendfsync {args.appendfsync})")
        print(f"duration:                          {duration:.1f} s")
        for run in lost[:20]:
            last = run.history[-1] if run.history else {}
            print(
                f"  lost: {run.id} #{run.context.get('index')} {run.status} at {run.step} v{run.version} "
                f"wake_at {run.wake_at} last: {last}"
            )
        for run in wrong_payload[:10]:
            print(f"  payload: {run.id} context {run.context}")
        for run in [run for run in runs if str(run.context.get("index")) in timed_out][:10]:
            print(f"  timed out: {run.id} #{run.context.get('index')}, history:")
            for line in run.history:
                print(f"    {line}")
        for job in failed[:10]:
            print("  failed:", job.event.name, job.handler, job.error)
        bad = lost or failed or statuses.get("failed") or not_once or wrong_payload or timed_out or missing
        return 1 if bad else 0
    finally:
        for worker in workers:
            worker.stop()
        client.close()
        server.cleanup()
        mongo.__exit__()  # stops it and deletes its data


if __name__ == "__main__":
    sys.exit(main())
