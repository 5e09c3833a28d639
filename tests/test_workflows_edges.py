"""Workflow edge cases a serious user hits, and guarantees no other test exercises on their
own (workflows: tests/workflow_edge_defs.py). Most run the worker's side in this process
(``earnevents.worker.workflows.advance``, a sleeping run woken at once); the ones about a
worker's process and its timeout use real `celery -A earnevents worker` subprocesses."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import time

import pytest
import workflow_edge_defs
from model_fixtures import ended, status_is, worker_env

from earnevents import EventTooLargeError, keys
from earnevents.event import Event
from earnevents.workflows import RunNotFoundError, engine, runs
from earnevents.workflows.engine import message_id

pytest_plugins = ["model_fixtures"]
pytestmark = [pytest.mark.mongo]


async def step_through(run_id: str, moves: int = 20, seconds: float = 10):
    """Move the run on in this process as a worker would (a sleeping run is woken at once)
    until it waits or ends; each move must finish within ``seconds``."""
    from earnevents.worker import workflows as worker_side

    for _ in range(moves):
        run = await engine.get_run(run_id)
        if run.status not in ("running", "sleeping"):
            return run
        message = Event(
            name=f"workflow:{run.workflow}",
            data={"run": run.id, "version": run.version},
            id=message_id(run.id, run.version),
        )
        await asyncio.wait_for(worker_side.advance(message), seconds)
    raise AssertionError(f"run {run_id} still moving after {moves} moves")


def whats(run) -> list[str]:
    return [line["what"] for line in run.history]


async def test_sleep_without_then_runs_the_step_again_and_default_retry_retries_it(models_env):
    # Given a step that naps (no then), then fails twice; it has no Retry, its workflow a default_retry of 3 tries
    run = await step_through(await engine.start("edge_again"))
    # Then after the nap the same step ran again, and default_retry tried it until it worked
    assert run.status == "completed", (run.error, whats(run))
    assert run.result == {"visits": 4, "failures": 2}
    sleeping = [line for line in run.history if line["what"] == "sleeping"]
    assert len(sleeping) == 1 and sleeping[0]["then"] == "poll"
    assert [line["error"] for line in run.history if line["what"] == "step failed"] == [
        "RuntimeError: flaky 1",
        "RuntimeError: flaky 2",
    ]


async def test_history_keeps_the_newest_lines_and_counts_the_dropped(models_env):
    # Given a run with more history lines than a run keeps
    run_id = await engine.start("edge_strict")
    for n in range(runs.HISTORY_MAX + 49):
        await runs.note(run_id, runs.line("note", n=n))
    # Then it keeps the newest HISTORY_MAX, and counts the ones it dropped (the first, "started", among them)
    run = await engine.get_run(run_id)
    assert len(run.history) == runs.HISTORY_MAX and run.history_dropped == 50
    assert run.history[0]["n"] == 49 and run.history[-1]["n"] == runs.HISTORY_MAX + 48
    # And a transition keeps the cap too
    assert await engine.cancel(run_id)
    run = await engine.get_run(run_id)
    assert len(run.history) == runs.HISTORY_MAX and run.history_dropped == 51 and whats(run)[-1] == "cancelled"


async def test_a_payload_the_context_refuses_is_recorded_and_the_run_goes_on(models_env):
    # Given a run waiting for edge:set, whose Context refuses a negative count
    run_id = await engine.start("edge_strict")
    assert (await step_through(run_id)).status == "waiting"
    # When the signal's payload has a value the Context refuses (and a key it has not)
    assert await engine.signal("edge:set", {"count": -1, "label": "x", "extra": {"deep": [1, 2]}}) == 1
    # Then the run goes on with its Context as it was, and its history says what was ignored and why
    run = await step_through(run_id)
    assert run.status == "completed" and run.result == {"count": 0, "label": ""}
    [woken] = [line for line in run.history if line["what"] == "woken"]
    assert woken["ignored"]["keys"] == ["extra"]
    assert "count" in woken["ignored"]["error"] and "greater than or equal to 0" in woken["ignored"]["error"]


async def test_a_stored_context_that_no_longer_validates_fails_the_run_saying_why(models_env):
    # Given a running run whose stored Context a deploy made invalid (a field changed its type)
    run_id = await engine.start("edge_strict")
    await models_env.db[keys.MONGO_WORKFLOW_RUNS].update_one({"_id": run_id}, {"$set": {"context.count": "many"}})
    # When a worker takes its step, the run fails naming the step and the field (not a job retried for minutes)
    run = await step_through(run_id)
    assert run.status == "failed" and run.step == "await_set"
    assert "Context" in run.error and "count" in run.error and "await_set" in run.error
    # And once the Context is fixed, it resumes
    await models_env.db[keys.MONGO_WORKFLOW_RUNS].update_one({"_id": run_id}, {"$set": {"context.count": 2}})
    await engine.resume(run_id)
    assert (await step_through(run_id)).status == "waiting"


async def test_a_result_no_event_could_carry_fails_the_step_saying_where(models_env):
    # Given steps that complete with an object, or with data nested deeper than event data may
    for how, error in (("object", "complete's result['when'] is a object"), ("deep", "levels deep")):
        # Then the step fails (its traceback pointing at the complete() call), not the worker's job
        run = await step_through(await engine.start("edge_bad_result", how=how))
        assert run.status == "failed" and run.error.startswith("TypeError: ") and error in run.error, run.error
        assert "in finish" in run.traceback


async def test_run_ids_that_are_no_run_get_typed_errors(models_env):
    # A str that names no run: RunNotFoundError, whatever it holds
    for bad in ("", "nosuchrun", "$where", "a\nb", "x" * 100_000):
        with pytest.raises(RunNotFoundError):
            await engine.get_run(bad)
        with pytest.raises(RunNotFoundError):
            await engine.cancel(bad)
        with pytest.raises(RunNotFoundError):
            await engine.resume(bad)
    # Anything else (a query operator, a number, None): TypeError, nothing looked up
    for bad in ({"$ne": None}, 123, None, b"abc"):
        for call in (engine.get_run, engine.cancel, engine.resume):
            with pytest.raises(TypeError, match="run_id must be a str"):
                await call(bad)
        if bad is not None:  # a signal without run_id goes to every run
            with pytest.raises(TypeError, match="run_id must be a str"):
                await engine.signal("edge:set", run_id=bad)


async def test_signal_payloads_too_big_too_deep_or_not_data_are_refused_before_anything_is_kept(models_env):
    run_id = await engine.start("edge_strict")
    assert (await step_through(run_id)).status == "waiting"
    signals = models_env.db[keys.MONGO_WORKFLOW_SIGNALS]
    limit = models_env.settings.max_message_size
    nested: dict = {}
    inner = nested
    for _ in range(150):
        inner["x"] = {}
        inner = inner["x"]
    for payload, error, match in (
        ({"label": "x" * limit}, EventTooLargeError, "payload"),
        ({"label": nested}, TypeError, "levels deep"),
        ({"label": object()}, TypeError, "payload"),
        ({1: "one"}, TypeError, "payload"),
    ):
        with pytest.raises(error, match=match):
            await engine.signal("edge:set", payload)
    # Then nothing was kept for later waits, and the run still waits, its Context untouched
    assert await signals.count_documents({}) == 0
    run = await engine.get_run(run_id)
    assert run.status == "waiting" and run.context == {"count": 0, "label": ""}
    # And a big payload within the limit, nested as deep as event data may, goes through
    deep: dict = {}
    inner = deep
    for _ in range(90):
        inner["x"] = {}
        inner = inner["x"]
    assert await engine.signal("edge:set", {"label": "y" * (limit // 2), "extra": deep}) == 1
    run = await step_through(run_id)
    assert run.status == "completed" and len(run.result["label"]) == limit // 2


async def test_a_step_past_the_handler_timeout_fails_its_try_and_is_retried(models_env, monkeypatch):
    # Given workers whose handler timeout is half a second, and steps that hang on their first try
    workflow_edge_defs.RELEASE.clear()
    monkeypatch.setattr(models_env, "settings", dataclasses.replace(models_env.settings, handler_timeout=0.5))
    try:
        for run_id in (
            await engine.start("edge_hang", kind="async"),
            await engine.start("edge_hang", kind="thread"),
            await engine.start("edge_sync_hang"),
        ):
            # Then the hung try fails with HandlerTimeoutError, its Context changes kept, and the step's Retry
            # runs it again
            run = await step_through(run_id, seconds=5)
            assert run.status == "completed" and run.result == {"tries": 2}, (run.error, whats(run))
            [failed] = [line for line in run.history if line["what"] == "step failed"]
            assert failed["error"] == "HandlerTimeoutError: step hang did not finish within 0.5s"
    finally:
        workflow_edge_defs.RELEASE.set()  # the abandoned threads end before the test's loop closes


def edge_worker(start_worker, mongo_url, mongo_db, **env):
    return start_worker(modules="workflow_edge_defs", env={**worker_env(mongo_url, mongo_db), **env}, concurrency=2)


@pytest.mark.worker
async def test_with_a_real_worker_a_hung_step_times_out_and_its_retry_runs(
    models_env, start_worker, mongo_url, mongo_db
):
    # Given a worker with a 1 s handler timeout, and a step that hangs on its first try
    edge_worker(start_worker, mongo_url, mongo_db, EARNEVENTS_HANDLER_TIMEOUT="1")
    hung = await engine.start("edge_hang", kind="async")
    # Then the hung try fails as the step's failure (not the job's: its Context change is kept), and its retry
    # completes the run
    run = await ended(hung, 20)
    assert run.status == "completed" and run.result == {"tries": 2}, (run.error, whats(run))
    [failed] = [line for line in run.history if line["what"] == "step failed"]
    assert failed["error"] == "HandlerTimeoutError: step hang did not finish within 1s"


@pytest.mark.worker
async def test_a_step_that_ends_its_worker_process_fails_the_run_saying_so(
    models_env, start_worker, mongo_url, mongo_db, tmp_path
):
    # Given a worker whose jobs may die in 2 deliveries, and a step that calls os._exit
    edge_worker(start_worker, mongo_url, mongo_db, EARNEVENTS_MAX_DELIVERIES="2", EARNEVENTS_VISIBILITY_TIMEOUT="2")
    marks = tmp_path / "exit.marks"
    crashing = await engine.start("edge_exit", path=str(marks))
    # Then the step is not run without end, nor left as a failed job with the run "running": the run fails
    # saying why, and can be resumed once fixed
    run = await ended(crashing, 30)
    assert run.status == "failed" and "worker process died while running step crash" in run.error, run.error
    assert marks.read_text().count("started") == 1
    assert not await models_env.event_bus.get_failed_jobs()


async def test_a_signal_and_its_timeout_racing_many_times_end_each_wait_once(models_env):
    from earnevents.worker import workflows as worker_side

    # Given runs waiting for edge:go with a timeout, 60 times over
    outcomes = []
    for _ in range(60):
        run_id = await engine.start("edge_race")
        waiting = await step_through(run_id)
        assert waiting.status == "waiting"
        timeout_message = Event(
            name="workflow:edge_race",
            data={"run": run_id, "version": waiting.version},
            id=message_id(run_id, waiting.version),
        )

        # When the signal and the timeout's message come at the same moment (one or the other a little first)
        async def signal(delay: float, run_id: str):
            await asyncio.sleep(delay)
            return await engine.signal("edge:go", run_id=run_id)

        async def time_out(delay: float, message: Event):
            await asyncio.sleep(delay)
            await worker_side.advance(message)

        delays = [random.uniform(0, 0.004) for _ in range(2)]
        woke, _ = await asyncio.gather(signal(delays[0], run_id), time_out(delays[1], timeout_message))
        # Then exactly one moved the run on, one step further; the other left at most a history line
        run = await engine.get_run(run_id)
        what = whats(run)
        assert ("woken" in what) != ("timed out" in what), what
        assert run.version == waiting.version + 1 and run.status == "running"
        assert run.step == ("woken" if "woken" in what else "late") and woke == ("woken" in what)
        if woke:  # its timeout withdrawn (when the timeout wins, the scheduler took it: here the test delivered it)
            assert not [e for e in await models_env.event_bus.get_scheduled() if e.event.data.get("run") == run_id]
        run = await step_through(run_id)
        assert run.status == "completed" and whats(run).count("completed") == 1
        outcomes.append(run.result["how"])
    print("outcomes:", {how: outcomes.count(how) for how in set(outcomes)})


@pytest.mark.worker
async def test_wait_for_event_is_woken_by_a_model_event_and_a_scheduled_model_event(
    models_env, start_worker, mongo_url, mongo_db
):
    from automation_models import Reservation
    from conftest import token

    edge_worker(start_worker, mongo_url, mongo_db)
    # Given a pending reservation checking in 3 s from now, and a run following it (and another following another)
    checkin = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=3)
    reservation = await Reservation(token=token(), checkin_at=checkin, status="pending").create()
    other = await Reservation(token=token(), checkin_at=checkin, status="pending").create()
    run_id = await engine.start("edge_stay", reservation_id=str(reservation.id))
    bystander = await engine.start("edge_stay", reservation_id=str(other.id))
    await status_is(run_id, "waiting")
    await status_is(bystander, "waiting")
    # When the reservation is confirmed (a model event), then its check-in comes (a scheduled model event)
    reservation.status = "confirmed"
    await reservation.save()
    # Then the run woke on each, their data merged into its Context, and completed
    run = await ended(run_id, 20)
    assert run.status == "completed" and run.result == {"seen": ["confirmed:confirmed", "checkin_due"]}, whats(run)
    assert [line["by"] for line in run.history if line["what"] == "woken"] == [
        "event reservation_confirmed",
        "event checkin_due",
    ]
    assert time.time() >= checkin.timestamp()
    # And the run following the other reservation still waits for its confirmation
    bystanding = await engine.get_run(bystander)
    assert bystanding.status == "waiting" and bystanding.step == "await_confirmed"


async def test_the_seeds_event_signal_wakes_the_runs_waiting_for_that_event(models_env):
    # Given runs waiting for the edge_docs_uploaded event of their reservations (the seed's await_docs)
    mine = await engine.start("edge_docs", reservation_id="r-1")
    other = await engine.start("edge_docs", reservation_id="r-2")
    for run_id in (mine, other):
        assert (await step_through(run_id)).status == "waiting"
    # When the seed's bridge signal is sent by hand: engine.signal("event:<name>", payload)
    assert await engine.signal("event:edge_docs_uploaded", {"reservation_id": "r-1", "docs": "passport"}) == 1
    # Then it wakes the run whose wait matches, as the event would, with the payload in its Context
    run = await step_through(mine)
    assert run.status == "completed" and run.result == {"docs": "passport"}
    assert [line["by"] for line in run.history if line["what"] == "woken"] == ["event edge_docs_uploaded"]
    assert (await engine.get_run(other)).status == "waiting"


async def test_create_context_may_be_async(models_env):
    # Given a workflow whose create_context awaits (to load a document: await event.entity())
    run = await step_through(await engine.start("edge_loaded", key="abc"))
    # Then the run starts with the Context it returned
    assert run.status == "completed" and run.result == {"name": "ABC"}


async def test_a_step_calling_sys_exit_fails_as_its_step_not_the_worker(models_env):
    # Given steps that call sys.exit (on the worker's loop, or in a thread)
    for kind, error in (("async", "SystemExit: 2"), ("thread", "SystemExit: bye")):
        # Then that is the step's failure: the run fails with it and its traceback, the Context change kept
        run = await step_through(await engine.start("edge_sys_exit", kind=kind))
        assert run.status == "failed" and run.error == error and run.context["tries"] == 1, (run.error, whats(run))
        assert "sys.exit" in run.traceback


async def test_a_step_leaving_a_context_too_large_to_save_fails_as_its_step(models_env, monkeypatch):
    # Given a step that grows its Context past what a run may save (the limit made small here)
    monkeypatch.setattr(runs, "CONTEXT_MAX_BYTES", 1_000)
    run = await step_through(await engine.start("edge_big_context", chunk=2_000))
    # Then each try is the step's failure, retried by its Retry, and the run ends failed saying
    # why, with the Context saved before the step (not a run stuck in "running")
    assert run.status == "failed" and run.error.startswith("ContextTooLargeError: step grow left a Context"), run.error
    assert run.context == {"chunk": 2_000, "notes": []} and run.attempts == 2
    # And a Context within the limit is saved as usual
    ok = await step_through(await engine.start("edge_big_context", chunk=10))
    assert ok.status == "completed" and ok.context["notes"] == ["x" * 10]
