"""Operating workflows and their recovery guarantees, with real `celery -A earnevents worker`
subprocesses on the MongoDB stand-in (workflows: tests/workflow_ops_defs.py): races decided
once, a worker killed mid-step, a step gone after a deploy, Redis losing its data, many
sleeping runs holding no worker memory, cancel/resume and find_runs."""

from __future__ import annotations

import asyncio
import random
import time

import psutil
import pytest
import workflow_ops_defs  # noqa: F401  (declares the workflows in this process too)
from model_fixtures import ended, eventually, worker_env

from earnevents import keys
from earnevents.testing import wait_for
from earnevents.workflows import WorkflowError, engine, recovery
from earnevents.workflows.engine import spec_of

pytest_plugins = ["model_fixtures"]
pytestmark = [pytest.mark.mongo, pytest.mark.worker]

MODULES = "workflow_ops_defs"


def ops_worker(start_worker, mongo_url, mongo_db, wait=True, concurrency=2, **env):
    return start_worker(
        modules=MODULES, env={**worker_env(mongo_url, mongo_db), **env}, wait=wait, concurrency=concurrency
    )


async def all_in(run_ids, statuses, timeout: float = 20):
    async def check():
        found = [await engine.get_run(run_id) for run_id in run_ids]
        return found if all(run.status in statuses for run in found) else None

    return await eventually(check, timeout, f"{len(run_ids)} run(s) to be {'/'.join(statuses)}")


def whats(run) -> list[str]:
    return [line["what"] for line in run.history]


async def test_a_signal_racing_its_timeout_moves_each_run_on_exactly_once(
    models_env, start_worker, mongo_url, mongo_db
):
    # Given 30 runs waiting for a signal with a 1 s timeout
    ops_worker(start_worker, mongo_url, mongo_db)
    run_ids = [await engine.start("ops_race", timeout=1.0) for _ in range(30)]
    waiting = await all_in(run_ids, ("waiting",))

    # When each run's signal is sent within 50 ms of its timeout
    async def signal_near(run):
        await asyncio.sleep(max(0.0, run.wake_at - time.time() + random.uniform(-0.05, 0.05)))
        await engine.signal("ops:go", run_id=run.id)

    await asyncio.gather(*(signal_near(run) for run in waiting))
    # Then every run completed once, by one outcome: the other left at most a history line
    outcomes = []
    for run_id in run_ids:
        run = await ended(run_id)
        what = whats(run)
        assert run.status == "completed", (run.error, what)
        assert ("woken" in what) != ("timed out" in what), what  # never both
        assert what.count("completed") == 1
        expected = "signal" if "woken" in what else "timeout"
        assert run.result == {"how": expected}
        outcomes.append(expected)
    # (both outcomes happened, or the race was not run; retried often enough, it is both most of the time)
    print("outcomes:", {how: outcomes.count(how) for how in set(outcomes)})


async def test_a_cancel_racing_a_step_retry_ends_the_run_cancelled(models_env, start_worker, mongo_url, mongo_db):
    # Given runs whose step fails and is retried every 50 ms
    ops_worker(start_worker, mongo_url, mongo_db)
    run_ids = [await engine.start("ops_flaky_forever") for _ in range(10)]

    async def retrying():
        found = [await engine.get_run(run_id) for run_id in run_ids]
        return found if all(run.attempts >= 2 for run in found) else None

    await eventually(retrying, 20, "the runs to retry")
    # When each is cancelled at some moment of its retries
    for run_id in run_ids:
        await asyncio.sleep(random.uniform(0, 0.06))
        assert await engine.cancel(run_id)
    # Then each stays cancelled: no retry after the cancel moved it on, nothing pending for it
    cancelled = [await engine.get_run(run_id) for run_id in run_ids]
    await asyncio.sleep(0.5)
    for before in cancelled:
        after = await engine.get_run(before.id)
        assert after.status == "cancelled" and after.version == before.version, whats(after)
        what = whats(after)
        assert what[-1] == "cancelled" or all(
            w.startswith("step outcome discarded") for w in what[what.index("cancelled") + 1 :]
        )
    assert not [e for e in await models_env.event_bus.get_scheduled() if e.event.data.get("run") in run_ids]
    assert not await engine.cancel(run_ids[0])  # ended already


async def test_a_worker_killed_mid_step_runs_the_step_again_and_the_run_ends_once(
    models_env, start_worker, mongo_url, mongo_db, tmp_path
):
    # Given a run whose step blocks after writing its step key (and changing its Context)
    env = {"EARNEVENTS_VISIBILITY_TIMEOUT": "3"}
    victim = ops_worker(start_worker, mongo_url, mongo_db, **env)
    path = str(tmp_path / "blocking")
    run_id = await engine.start("ops_blocking", path=path)
    keys_file = tmp_path / "blocking.keys"
    wait_for(lambda: keys_file.exists() and keys_file.read_text().count("\n") == 1, 20, "the step to start")
    # When the worker is SIGKILLed mid-step, and a new one starts
    victim.kill()
    (tmp_path / "blocking.release").write_text("go")
    ops_worker(start_worker, mongo_url, mongo_db, **env)
    # Then the new worker ran the step again, from the Context saved before it, with the same key
    run = await ended(run_id, 30)
    tries = keys_file.read_text().split()
    assert len(tries) == 2 and tries[0] == tries[1]
    assert run.status == "completed" and run.result == {"touched": 1} and run.context["touched"] == 1
    assert whats(run).count("completed") == 1
    [again] = [line for line in run.history if line["what"] == "step started again: its worker process died"]
    assert again["step"] == "block" and again["died"] == 1


async def test_a_step_gone_after_a_deploy_fails_naming_it_and_resumes_at_another(
    models_env, start_worker, mongo_url, mongo_db
):
    # Given a sleeping run whose next step a deploy removed (its stored step renamed)
    ops_worker(start_worker, mongo_url, mongo_db)
    run_id = await engine.start("ops_nap", seconds=1.0)
    await all_in([run_id], ("sleeping",))
    await models_env.db[keys.MONGO_WORKFLOW_RUNS].update_one({"_id": run_id}, {"$set": {"step": "removed_step"}})
    # When it wakes, it fails with an error naming the step
    run = await ended(run_id)
    assert run.status == "failed" and "removed_step" in run.error and "ops_nap" in run.error
    # And resuming it at its own (missing) step is refused, naming it
    with pytest.raises(WorkflowError, match="removed_step"):
        await engine.resume(run_id)
    # Then resumed at an existing step, it moves on and completes
    await engine.resume(run_id, at_step="finish")
    run = await ended(run_id)
    assert run.status == "completed" and run.context["woke"] and whats(run)[-2:] == ["resumed", "completed"]


async def test_redis_losing_its_data_wake_ups_are_restored_by_running_and_fresh_workers(
    models_env, start_worker, mongo_url, mongo_db, rclient, queue
):
    # Given two workers, which marked the queue's runs sent at start (one of them did it)
    workers = [ops_worker(start_worker, mongo_url, mongo_db, wait=False) for _ in range(2)]
    for each in workers:
        each.wait_ready()
    wait_for(lambda: rclient.exists(keys.workflows_rebuilt(queue)), 5, "the start's rebuild")
    # And sleeping and waiting runs (with and without a timeout)
    sleepers = [await engine.start("ops_nap", seconds=2.0) for _ in range(3)]
    patient = [await engine.start("ops_patient", timeout=2.0) for _ in range(3)]
    signalled = await engine.start("ops_signalled")
    await all_in(sleepers, ("sleeping",))
    await all_in([*patient, signalled], ("waiting",))
    # When Redis loses everything
    rclient.flushall()
    # Then a running worker sends their wake-ups again, and each run completes once
    wait_for(lambda: rclient.exists(keys.workflows_rebuilt(queue)), 5, "the rebuild after the flush")
    for run_id in [*sleepers, *patient]:
        run = await ended(run_id)
        assert run.status == "completed" and whats(run).count("completed") == 1, (run.error, whats(run))
    assert await engine.signal("ops:ready", {"note": "after the flush"}) == 1
    assert (await ended(signalled)).result == {"note": "after the flush"}
    assert sum(each.log().count("sending them again from MongoDB") for each in workers) == 2

    # Given sleeping runs, no worker running, and Redis losing its data again
    sleepers = [await engine.start("ops_nap", seconds=2.5) for _ in range(3)]
    await all_in(sleepers, ("sleeping",))
    for each in workers:
        each.kill()
    rclient.flushall()
    # When a worker starts, it sends their wake-ups again and the runs complete
    fresh = ops_worker(start_worker, mongo_url, mongo_db)
    for run_id in sleepers:
        run = await ended(run_id)
        assert run.status == "completed" and whats(run).count("completed") == 1
    assert "sending them again from MongoDB" in fresh.log()


async def test_a_rebuild_during_which_redis_lost_its_data_again_is_not_marked(models_env, queue, monkeypatch):
    # Given a run sleeping in MongoDB (no worker: its wake-up is in the schedule)
    run_id = await engine.start("ops_nap", seconds=60.0)
    await models_env.db[keys.MONGO_WORKFLOW_RUNS].update_one(
        {"_id": run_id}, {"$set": {"status": "sleeping", "wake_at": time.time() + 60}}
    )
    redis = models_env.redis
    send = recovery._send

    async def send_then_lose(*args):
        await send(*args)
        await redis.flushall()  # Redis loses what was sent so far

    monkeypatch.setattr(recovery, "_send", send_then_lose)
    # When a rebuild runs while Redis loses its data
    done = await recovery.reschedule(redis, models_env.db, queue)
    # Then the queue is not marked rebuilt, so the workers' next check does it again
    assert not done.marked and done.wake_ups == 1
    assert not await redis.exists(keys.workflows_rebuilt(queue))
    # And an undisturbed rebuild marks it, and puts the wake-up back
    monkeypatch.setattr(recovery, "_send", send)
    assert (await recovery.reschedule(redis, models_env.db, queue)).marked
    assert await redis.exists(keys.workflows_rebuilt(queue))
    version = (await engine.get_run(run_id)).version
    assert await redis.zscore(keys.scheduled_zset(queue), keys.workflow_wake(run_id, version)) is not None


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


async def test_a_thousand_sleeping_runs_hold_no_worker_memory(models_env, start_worker, mongo_url, mongo_db, queue):
    # Given a worker that has put a few runs to sleep already (warm)
    worker = ops_worker(start_worker, mongo_url, mongo_db, concurrency=6)
    runs = models_env.db[keys.MONGO_WORKFLOW_RUNS]

    async def start_sleepers(n):
        for _ in range(0, n, 100):
            await asyncio.gather(*(engine.start("ops_nap", seconds=600.0) for _ in range(min(100, n))))

    async def sleeping(n):
        return await runs.count_documents({"status": "sleeping"}) >= n

    await start_sleepers(100)
    await eventually(lambda: sleeping(100), 20, "the first runs to sleep")
    assert worker.proc is not None
    before = tree_rss(worker.proc.pid)
    # When 1,000 more runs go to sleep
    await start_sleepers(1000)
    await eventually(lambda: sleeping(1100), 60, "1,000 runs to sleep")
    # Then their wake-ups wait in Redis, and the worker's memory stayed flat
    assert await models_env.redis.zcard(keys.scheduled_zset(queue)) == 1100
    growth = tree_rss(worker.proc.pid) - before
    assert growth < 20 * 2**20, f"the worker grew {growth / 2**20:.1f} MB"


async def test_cancel_and_resume(models_env, start_worker, mongo_url, mongo_db):
    ops_worker(start_worker, mongo_url, mongo_db)
    # Given a sleeping run
    run_id = await engine.start("ops_nap", seconds=30.0)
    await all_in([run_id], ("sleeping",))
    # When it is cancelled, its wake-up is withdrawn; a second cancel finds nothing to cancel
    assert await engine.cancel(run_id)
    assert (await engine.get_run(run_id)).status == "cancelled"
    assert not [e for e in await models_env.event_bus.get_scheduled() if e.event.data.get("run") == run_id]
    assert not await engine.cancel(run_id)
    # Then resumed, it runs its step (the sleep's `then`) and completes
    await engine.resume(run_id)
    run = await ended(run_id)
    assert run.status == "completed" and whats(run)[-3:] == ["cancelled", "resumed", "completed"]
    # And a run that has not failed or been cancelled does not resume
    with pytest.raises(WorkflowError, match="completed"):
        await engine.resume(run_id)

    # Given a run that failed waiting (timed out, no on_timeout)
    run_id = await engine.start("ops_deadline")
    run = await ended(run_id)
    assert run.status == "failed" and run.error == "timed out waiting for signal ops:never"
    # When resumed at a fallback step
    await engine.resume(run_id, at_step="fallback")
    # Then it completes, and no longer says it waits for anything
    run = await ended(run_id)
    assert run.status == "completed" and run.context["fell_back"]
    assert run.waiting_for is None and run.wake_at is None and run.error is None


async def test_find_runs_filters_by_workflow_status_and_entity(models_env):
    # Given runs of two workflows (no worker: they stay running), one cancelled, one for an entity
    naps = [await engine.start("ops_nap", seconds=1.0) for _ in range(3)]
    others = [await engine.start("ops_signalled") for _ in range(2)]
    booked = await engine._start(spec_of("ops_signalled"), {}, entity={"model": "Booking", "id": "b1"})
    assert await engine.cancel(naps[0])
    # Then find_runs filters them, newest first, and pages
    assert [r.id for r in await engine.find_runs(workflow="ops_nap")] == naps[::-1]
    assert {r.id for r in await engine.find_runs(status="cancelled")} == {naps[0]}
    assert {r.id for r in await engine.find_runs(workflow="ops_nap", status="running")} == set(naps[1:])
    assert [r.id for r in await engine.find_runs(entity={"model": "Booking", "id": "b1"})] == [booked]
    assert await engine.find_runs(entity={"model": "Booking", "id": "b2"}) == []
    everything = [r.id for r in await engine.find_runs()]
    assert everything == [booked, *others[::-1], *naps[::-1]]
    assert [r.id for r in await engine.find_runs(limit=2, offset=1)] == everything[1:3]
    with pytest.raises(ValueError, match="status"):
        await engine.find_runs(status="sleepy")
