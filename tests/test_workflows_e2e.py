"""Workflows run by real `celery -A earnevents worker` subprocesses on the MongoDB stand-in
(workflows: tests/workflow_defs.py, written as seed 003's users write them)."""

from __future__ import annotations

import time

import pytest
import workflow_defs  # noqa: F401  (declares the workflows in this process too)
from model_fixtures import ended, eventually, status_is, worker_env

from earnevents.workflows import engine

pytest_plugins = ["model_fixtures"]
pytestmark = [pytest.mark.mongo, pytest.mark.worker]


@pytest.fixture
def worker(start_worker, mongo_url, mongo_db):
    return start_worker(modules="workflow_defs", env=worker_env(mongo_url, mongo_db))


async def test_a_manual_workflow_runs_to_completion(models_env, worker):
    # Given the seed's manual workflow (§5), started from application code
    run_id = await engine.start("reindex_listing", listing_id=123)
    # Then a worker runs its step and the run completes with its result and saved Context
    run = await ended(run_id)
    assert run.status == "completed"
    assert run.result == {"listing_id": 123}
    assert run.context == {"listing_id": 123, "reindexed": True}
    assert [line["what"] for line in run.history] == ["started", "completed"]


async def test_sleep_signal_retry_and_complete(models_env, worker):
    # Given a run that sleeps, then waits for a signal
    run_id = await engine.start("ops_window", token="t1")
    waiting = await status_is(run_id, "waiting")
    assert waiting.waiting_for["name"] == "ops:window_open" and waiting.wake_at is not None
    # When the signal comes with a payload, one key of which is no Context field
    assert await engine.signal("ops:window_open", {"window": "9-17", "nonsense": 1}) == 1
    # Then the payload merged into the Context, the unknown key is in the history,
    # the flaky step was retried until it worked (its attempts counted in the Context), and the run completed
    run = await ended(run_id)
    assert run.status == "completed", run.error
    assert run.context["window"] == "9-17" and run.context["attempts"] == 3
    assert run.context["final_state"] == "ok" and not run.context["timed_out"]
    assert len(set(run.context["keys"])) == 1  # one step key across the retries of one visit
    woken = [line for line in run.history if line["what"] == "woken"]
    assert woken and woken[0]["ignored"] == {"keys": ["nonsense"]}
    assert [line["what"] for line in run.history].count("step failed") == 2
    # And the timeout timer was withdrawn
    assert not [e for e in await models_env.event_bus.get_scheduled() if e.event.data.get("run") == run_id]


async def test_a_signal_sent_while_the_step_runs_still_wakes_the_run(models_env, worker):
    # Given a run whose step runs for a second before it returns wait("slow:go", timeout=30 s)
    run_id = await engine.start("slow_waiter")

    async def step_running():
        run = await engine.get_run(run_id)
        return run if run.step_started_at is not None and run.status == "running" else None

    await eventually(step_running, 20, "the step to start")
    # When the signal is sent while that step still runs (before the wait is recorded)
    assert await engine.signal("slow:go", {"go": "now"}) == 0  # nobody waits yet
    # Then the run takes it as soon as it waits: it completes well before its 30 s timeout
    started = time.monotonic()
    run = await ended(run_id)
    assert run.status == "completed" and run.result == {"go": "now"}
    assert time.monotonic() - started < 15
    assert any(line["what"] == "woken" and "arrived while the step ran" in line["by"] for line in run.history)


async def test_a_signal_sent_before_a_retry_of_the_step_that_waits_still_wakes_the_run(models_env, worker):
    # Given a run whose step failed its first try and sleeps 2 s until its retry, which returns wait(..., 30 s)
    run_id = await engine.start("flaky_waiter")
    await status_is(run_id, "sleeping")
    # When the signal is sent before the retry (the same step visit, before the wait is recorded)
    assert await engine.signal("flaky:go", {"go": "before the retry"}) == 0
    # Then the retry's wait takes it: the run completes well before its 30 s timeout (found by make chaos-workflows)
    started = time.monotonic()
    run = await ended(run_id)
    assert run.status == "completed" and run.result == {"go": "before the retry"}, run.history
    assert time.monotonic() - started < 15
    assert any(line["what"] == "woken" and "arrived while the step ran" in line["by"] for line in run.history)


async def test_fail_ends_the_run_failed(models_env, worker):
    run_id = await engine.start("ops_window", token="t3")
    await status_is(run_id, "waiting")
    await engine.signal("ops:window_open", {"window": "refuse"}, run_id=run_id)
    run = await ended(run_id)
    assert run.status == "failed" and run.error == "the window was refused"


async def test_a_step_redelivered_after_dying_between_its_wait_and_the_early_signal_check_takes_the_signal(
    models_env, monkeypatch
):
    from earnevents.event import Event
    from earnevents.worker import workflows as worker_side
    from earnevents.workflows.engine import message_id

    # Given a run whose step returns a wait, and its signal sent while that step runs (in this process: no worker)
    run_id = await engine.start("slow_waiter")
    assert await engine.signal("slow:go", {"go": "early"}) == 0
    step_message = Event(name="workflow:slow_waiter", data={"run": run_id, "version": 0}, id=message_id(run_id, 0))

    # When the worker dies after recording the wait, before it looks for signals sent while the step ran
    async def died(run):
        raise ConnectionError("the worker died here")

    with monkeypatch.context() as patch:
        patch.setattr(worker_side, "arrived_since", died)
        with pytest.raises(ConnectionError):
            await worker_side.advance(step_message)
    assert (await engine.get_run(run_id)).status == "waiting"
    # Then the step's message, delivered again (unacknowledged), wakes the run with the early signal
    await worker_side.advance(step_message)
    run = await engine.get_run(run_id)
    assert run.status == "running" and run.step == "done" and run.context["go"] == "early", run.history


async def test_a_signal_that_wakes_a_run_while_redis_is_down_still_sends_its_next_step(
    models_env, monkeypatch, rclient, queue
):
    import importlib

    import redis.exceptions
    from model_fixtures import queued

    from earnevents.event import Event
    from earnevents.worker import workflows as worker_side
    from earnevents.workflows.engine import message_id

    # Given a run waiting for a signal with a timeout (its step run in this process: no worker)
    run_id = await engine.start("slow_waiter")
    await worker_side.advance(
        Event(name="workflow:slow_waiter", data={"run": run_id, "version": 0}, id=message_id(run_id, 0))
    )
    waiting = await engine.get_run(run_id)
    assert waiting.status == "waiting"

    # When the signal comes while withdrawing its timeout from Redis fails (Redis down)
    async def redis_down(run):
        raise redis.exceptions.ConnectionError("Redis is down")

    monkeypatch.setattr(importlib.import_module("earnevents.workflows.engine"), "withdraw_wake", redis_down)
    assert await engine.signal("slow:go", {"go": "now"}) == 1
    # Then the run is woken and its next step's message is sent all the same (the timeout, left
    # in the schedule, is dropped as stale when it comes); it was not before (the call raised)
    run = await engine.get_run(run_id)
    assert run.status == "running" and run.step == "done"
    assert message_id(run_id, run.version) in [event.id for event in queued(rclient, queue)]


@pytest.mark.parametrize("withdraw_fails", [False, True], ids=["", "redis-refuses-the-withdrawal"])
async def test_a_wait_timeout_scheduled_late_does_not_replace_the_retry_of_the_step_a_signal_woke(
    models_env, monkeypatch, withdraw_fails
):
    import redis.exceptions

    from earnevents.event import Event
    from earnevents.worker import workflows as worker_side
    from earnevents.workflows.engine import message_id

    async def advance(run_id):
        run = await engine.get_run(run_id)
        await worker_side.advance(
            Event(name="workflow:ops_window", data={"run": run_id, "version": run.version}, id=message_id(run_id, 0))
        )

    # Given a run whose nap is over (its steps run in this process: no worker)
    run_id = await engine.start("ops_window", token="race")
    await advance(run_id)  # nap: sleeping
    await advance(run_id)  # woke: pause_until_ops_window is running
    real_schedule_run = worker_side.schedule_run
    raced = []

    # When its step records the wait, and before that step schedules the wait's timeout, the
    # signal wakes the run and the next step fails its first try (another worker, faster):
    # the step's retry is scheduled first, the stale timeout second (seen in CI)
    async def late_timeout(run):
        if run.status == "waiting" and not raced:
            raced.append(run.version)
            assert await engine.signal("ops:window_open", {"window": "9-17"}, run_id=run_id) == 1
            await advance(run_id)  # notify: fails, its retry is due in 0.1 s
            assert (await engine.get_run(run_id)).status == "sleeping"
        await real_schedule_run(run)

    async def refused(run):
        raise redis.exceptions.ConnectionError("Redis is down")

    monkeypatch.setattr(worker_side, "schedule_run", late_timeout)
    if withdraw_fails:
        monkeypatch.setattr(worker_side, "withdraw_wake", refused)
    await advance(run_id)  # no error either way: a timeout left behind is dropped as stale when it comes
    assert raced
    # Then the retry is still in the schedule for the run as it is now, due in a moment (it was
    # replaced by the timeout of the wait the signal had ended: the run slept 30 s, or a wait's
    # whole timeout, before the stale timeout's message sent it on)
    run = await engine.get_run(run_id)
    assert run.status == "sleeping" and run.wake_at is not None and run.wake_at < time.time() + 5
    pending = [
        entry
        for entry in await models_env.event_bus.get_scheduled()
        if entry.event.data.get("run") == run_id and entry.event.data.get("version") == run.version
    ]
    assert pending, run.history
    assert pending[0].due_at.timestamp() < time.time() + 5
    # And the timeout of the wait the signal ended is not left pending (unless Redis refused)
    scheduled = await models_env.event_bus.get_scheduled()
    stale = [entry for entry in scheduled if entry.event.data == {"run": run_id, "version": raced[0]}]
    assert bool(stale) == withdraw_fails
