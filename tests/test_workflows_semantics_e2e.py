"""What a workflow's steps may return and what the README's workflow section promises of it,
run by real `celery -A earnevents worker` subprocesses on the MongoDB stand-in (workflows:
tests/workflow_semantics_defs.py): the seed's §4 CheckoutOpsWF end to end (its waits,
fallback, retry and fail paths), a step's retries running out, goto to no step, a step
returning no command, ``then=None``, runs started and resumed from a step, cancel of a
waiting run, waits without a timeout and signals for one run."""

from __future__ import annotations

import asyncio
import inspect
import time

import pytest
import workflow_semantics_defs  # declares the workflows in this process too
from model_fixtures import ended, eventually, status_is, worker_env

from earnevents import Event
from earnevents.workflows import engine

pytest_plugins = ["model_fixtures"]
pytestmark = [pytest.mark.mongo, pytest.mark.worker]


@pytest.fixture
def worker(start_worker, mongo_url, mongo_db):
    return start_worker(modules="workflow_semantics_defs", env=worker_env(mongo_url, mongo_db))


async def stays_in(run_id: str, status: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (await engine.get_run(run_id)).status != status:
            return False
        await asyncio.sleep(0.05)
    return True


async def scheduled_for(bus, run_id: str) -> list:
    return [e for e in await bus.get_scheduled() if e.event.data.get("run") == run_id]


def whats(run) -> list[str]:
    return [line["what"] for line in run.history]


def lines(run, what: str) -> list[dict]:
    return [line for line in run.history if line["what"] == what]


async def checkout_run(bus, reservation: str, **knobs) -> str:
    """Publish the seed's checkout event for a reservation; the id of the run it starts."""
    about = {"entity": {"model": "Reservation", "id": reservation}}
    await bus.publish(Event(name="sem_checkout_due", data=knobs, metadata=about))

    async def started():
        found = await engine.find_runs(workflow="SemCheckoutOpsWF", entity={"model": "Reservation", "id": reservation})
        return found[0].id if found else None

    return await eventually(started, 15, f"the checkout run of {reservation}")


async def test_the_seeds_checkout_workflow_waits_falls_back_retries_and_fails(models_env, worker):
    bus = models_env.event_bus
    # Given a checkout whose housekeeping is switched off, and one held for the ops window
    # whose documents do not come within a second
    unnotified = await checkout_run(bus, "r-off", docs_ready=True, housekeeping=False)
    held = await checkout_run(bus, "r-held", docs_timeout=1.0, hold_for_ops_window=True)
    # Then the first fails in finalize with the workflow's reason
    run = await ended(unnotified)
    assert run.status == "failed" and run.error == "Housekeeping was not notified", whats(run)
    assert run.traceback is None and not run.context["notified"]
    # And the second times out to fallback_docs, then waits for the ops window with no timeout
    run = await status_is(held, "waiting", step="pause_until_ops_window", timeout=15)
    assert lines(run, "timed out")[0]["step"] == "fallback_docs"
    assert run.waiting_for["name"] == "ops:window_open" and run.wake_at is None
    assert not await scheduled_for(bus, held)

    # Given a checkout waiting for the guest's documents (90 min: the seed's timeout)
    waiting = await checkout_run(bus, "r-docs")
    run = await status_is(waiting, "waiting")
    # (offset_minutes=-120 on an event with no time known in advance: the run started at once, not sleeping)
    assert run.history[0]["what"] == "started" and "wake_at" not in run.history[0]
    assert run.step == "await_docs" and run.waiting_for == {
        "kind": "event",
        "name": "guest_docs_uploaded",
        "match": None,
        "then": "await_docs",
        "on_timeout": "fallback_docs",
    }
    assert run.wake_at == pytest.approx(time.time() + 90 * 60, abs=30)
    assert await scheduled_for(bus, waiting)
    # When the documents are uploaded (an event anyone publishes)
    await bus.publish(Event(name="guest_docs_uploaded", data={"docs_ready": True, "pages": 3}))
    # Then await_docs runs again (no then), goes on now that the Context says docs_ready,
    # notify_housekeeping fails once and is retried, and the run completes
    run = await ended(waiting)
    assert run.status == "completed" and run.result == {"final_state": "ok"}, (run.error, whats(run))
    woken = lines(run, "woken")
    assert len(woken) == 1 and woken[0]["step"] == "await_docs" and woken[0]["ignored"] == {"keys": ["pages"]}
    assert [line["step"] for line in lines(run, "goto")] == ["notify_housekeeping", "finalize"]
    [failed] = lines(run, "step failed")
    assert failed["step"] == "notify_housekeeping" and failed["error"] == "RuntimeError: transient failure"
    assert failed["attempt"] == 1 and len(lines(run, "retrying")) == 1
    assert run.context["docs_ready"] and run.context["notified"] and run.context["attempts"] == 2
    assert run.context["final_state"] == "ok" and run.error is None
    assert not await scheduled_for(bus, waiting)  # nothing left to move it on
    # And the held run was not woken by the documents: it waits for its signal
    assert (await engine.get_run(held)).status == "waiting"

    # When the ops window opens, with a payload (one key of which is no Context field)
    assert await engine.signal("ops:window_open", {"window": "14-16", "crew": "b"}) == 1
    # Then the payload is in its Context, the step ran again and the run went on to complete
    run = await ended(held)
    assert run.status == "completed" and run.result == {"final_state": "ok"}, (run.error, whats(run))
    assert run.context["window"] == "14-16" and run.context["attempts"] == 2 and not run.context["docs_ready"]
    [woken] = lines(run, "woken")
    assert woken["step"] == "pause_until_ops_window" and woken["by"] == "signal ops:window_open"
    assert woken["ignored"] == {"keys": ["crew"]}


async def test_failing_steps_end_the_run_failed_saying_why(models_env, worker):
    # Given a run whose step raises on each of its three tries
    always = await engine.start("sem_always_fails")
    # And runs whose step goes to a step named at run time that does not exist, to a method
    # that is no step, or returns no command
    by_name = await engine.start("sem_misdirected", how="name", target="finsh")
    by_getattr = await engine.start("sem_misdirected", how="getattr", target="helper")
    nothing = await engine.start("sem_misdirected", how="none")

    # Then the first fails after three tries, with the last error and its traceback
    run = await ended(always)
    assert run.status == "failed" and run.step == "call_partner"
    assert run.attempts == 3 and run.error == "ValueError: partner down (try 3)"
    source, first = inspect.getsourcelines(workflow_semantics_defs.AlwaysFails.call_partner)
    raise_line = first + next(i for i, text in enumerate(source) if "raise ValueError" in text)
    assert run.traceback is not None
    assert f'workflow_semantics_defs.py", line {raise_line}, in call_partner' in run.traceback
    assert run.traceback.rstrip().endswith("ValueError: partner down (try 3)")
    # And the Context changes its failing tries made are saved
    assert run.context == {"tries": 3, "marks": ["try 1", "try 2", "try 3"]}
    assert [line["attempt"] for line in lines(run, "step failed")] == [1, 2]
    assert whats(run)[-1] == "failed" and run.history[-1]["attempt"] == 3

    # And the misdirected runs fail at once, the error naming the step and where it went
    for run_id, target in ((by_name, "'finsh'"), (by_getattr, "'helper'")):
        run = await ended(run_id)
        assert run.status == "failed" and run.error == (
            f"step route goes to {target}, which is no step of workflow 'sem_misdirected'"
        )
        assert run.step == "route" and run.attempts == 0
    run = await ended(nothing)
    assert run.status == "failed" and run.error.startswith("step route returned NoneType; a step returns goto(")
    assert whats(run) == ["started", "failed"]


async def test_runs_started_cancelled_and_resumed_and_signals_for_one_run(models_env, worker):
    bus = models_env.event_bus
    # Given a run waiting for sem:go with a 30 s timeout
    cancelled = await engine.start("sem_patient", timeout=30.0)
    run = await status_is(cancelled, "waiting")
    assert run.wake_at is not None  # and, once its step has scheduled it, its timeout:
    await eventually(lambda: scheduled_for(bus, cancelled), 10, "the wait's timeout in the schedule")
    # When it is cancelled: its timeout is withdrawn, and a later signal does not wake it
    assert await engine.cancel(cancelled)
    run = await engine.get_run(cancelled)
    assert run.status == "cancelled" and run.waiting_for is None and run.wake_at is None
    assert not await scheduled_for(bus, cancelled)
    assert await engine.signal("sem:go", {"note": "too late"}) == 0
    assert await stays_in(cancelled, "cancelled", 0.5)

    # When a step starts a child run and resumes the cancelled run
    parent = await engine.start("sem_parent", resume=cancelled)
    # Then the child runs and completes, and the parent completes naming it
    run = await ended(parent)
    assert run.status == "completed", (run.error, whats(run))
    child = run.result["child"]
    assert child == run.context["child"] and child != parent
    child_run = await ended(child)
    assert child_run.workflow == "sem_child" and child_run.status == "completed"
    assert child_run.result == {"parent": parent}
    # And the resumed run runs its step again and waits (the signal sent while it was
    # cancelled does not count)
    run = await status_is(cancelled, "waiting")
    # ("not woken" is a note, not a change: the late signal may have read the run as still
    # waiting, as nx-27017 served it once under load, and then found it cancelled)
    changes = [what for what in whats(run) if not what.startswith("not woken")]
    assert changes[-3:] == ["cancelled", "resumed", "waiting"] and run.context["note"] is None

    # Given two runs waiting for sem:go without a timeout
    first = await engine.start("sem_patient")
    second = await engine.start("sem_patient")
    for run_id in (first, second):
        run = await status_is(run_id, "waiting")
        assert run.wake_at is None and not await scheduled_for(bus, run_id)
    # Then they keep waiting: nothing wakes them by itself
    assert await stays_in(first, "waiting", 1.0) and (await engine.get_run(second)).status == "waiting"
    # When the signal is sent for one of them, only that one wakes
    assert await engine.signal("sem:go", {"note": "first only"}, run_id=first) == 1
    run = await ended(first)
    assert run.status == "completed" and run.result == {"note": "first only"}
    assert await stays_in(second, "waiting", 0.5)
    # And a signal for everyone wakes the others waiting for it (the resumed one too)
    assert await engine.signal("sem:go", {"note": "all"}) == 2
    for run_id in (second, cancelled):
        run = await ended(run_id)
        assert run.status == "completed" and run.result == {"note": "all"}
    assert not await scheduled_for(bus, cancelled)  # the resumed wait's 30 s timeout was withdrawn
