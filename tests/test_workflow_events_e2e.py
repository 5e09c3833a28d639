"""Events into workflows, run by real `celery -A earnevents worker` subprocesses on the
MongoDB stand-in: ``@event_workflow`` runs started by events (offsets before and after the
event's time) and ``wait_for_event`` woken by events whoever publishes them (workflows:
tests/workflow_event_defs.py, the seed's §3 and §4)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest
import workflow_event_defs  # noqa: F401  (declares the workflows in this process too)
from automation_models import Reservation
from conftest import token
from model_fixtures import ended, eventually, status_is, worker_env
from pydantic import BaseModel

from earnevents import Event
from earnevents.definitions import registry as definitions
from earnevents.handlers import registry as handlers
from earnevents.workflows import engine, recovery, step, wait_for_event, workflow

pytest_plugins = ["model_fixtures"]
pytestmark = [pytest.mark.mongo, pytest.mark.worker]

START_AT_RUN = {"kind": "start", "name": "checkin_due", "then": "run", "offset_minutes": -0.05}
"""``waiting_for`` of a PreArrivalReminder run created before its start (3 s before check-in)."""


@pytest.fixture
def worker(start_worker, mongo_url, mongo_db):
    return start_worker(modules="workflow_event_defs", env=worker_env(mongo_url, mongo_db))


def soon(seconds: float) -> dt.datetime:
    """Now plus ``seconds``, in whole milliseconds (as MongoDB stores it and due times count)."""
    moment = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


async def runs_of(workflow: str, entity_id: str | None = None):
    entity = None if entity_id is None else {"model": "Reservation", "id": entity_id}
    return await engine.find_runs(workflow=workflow, entity=entity)


async def one_run(workflow: str, what: str, entity_id: str | None = None, check=lambda run: True, timeout=15):
    async def found():
        runs = await runs_of(workflow, entity_id)
        return runs[0] if len(runs) == 1 and check(runs[0]) else None

    return await eventually(found, timeout, what)


async def stays_async(check, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not await check():
            return False
        await asyncio.sleep(0.05)
    return True


def test_the_bridge_is_left_out_of_the_handler_listing():
    # Given the worker's module, which subscribes the bridge to what declared workflows need
    from earnevents.worker import workflow_events

    workflow_events.resubscribe()
    bridge = "earnevents.worker.workflow_events.bridge"
    # Then it runs for those events (the awaited name, the trigger, its :created/:cancelled)
    for name in ("guest_docs_uploaded", "checkout_started", "checkin_due:created", "checkin_due:cancelled"):
        assert bridge in [h.name for h in handlers.resolve(name, "Reservation")], name
    # And it is no handler of the application's: not listed, not checked by strict mode
    assert bridge not in [h.name for h in handlers.handlers()]
    assert bridge not in [s.name for s in definitions.undefined_subscriptions()]

    # When another workflow is declared, waiting for an event named by keyword
    @workflow("keyword_waiter")
    class KeywordWaiter:
        class Context(BaseModel):
            pass

        @classmethod
        def create_context(cls):
            return cls.Context()

        @step(start=True)
        def wait_for_it(self):
            return wait_for_event(name="keyword_awaited", timeout=5, on_timeout="wait_for_it")

    # Then the bridge is subscribed to that event too
    assert bridge in [h.name for h in handlers.resolve("keyword_awaited", None)]


async def test_a_reminder_before_check_in_follows_its_reservation(models_env, worker):
    # Given a checkin_due event about a Reservation sent by someone else (entity_type filters it out)
    about = {"entity": {"model": "Reservation", "id": "0" * 24}}
    await models_env.event_bus.publish(Event(name="checkin_due", data={}, metadata=about), sender="Importer")
    # And the seed's PreArrivalReminder (3 s before checkin_due) and a pending reservation
    checkin = soon(30)
    reservation = await Reservation(token=token(), checkin_at=checkin).create()
    rid = str(reservation.id)
    # When it is confirmed (checkin_due's occurrence is scheduled)
    reservation.status = "confirmed"
    await reservation.save()
    # Then a run is created waiting for its start, 3 s before check-in
    run = await one_run("PreArrivalReminder", "the reminder to be scheduled", rid)
    assert run.status == "waiting" and run.step == "run"
    assert run.waiting_for == START_AT_RUN
    assert run.wake_at == pytest.approx(checkin.timestamp() - 3, abs=0.01)
    assert run.context == {"reservation_id": rid, "reminded_at": None}
    # When check-in moves, the same run moves
    later = soon(40)
    reservation.checkin_at = later
    await reservation.save()
    moved = await one_run(
        "PreArrivalReminder",
        "the reminder to move",
        rid,
        lambda r: r.wake_at == pytest.approx(later.timestamp() - 3, abs=0.01),
    )
    assert moved.id == run.id and moved.status == "waiting" and moved.waiting_for == START_AT_RUN
    # When the reservation is cancelled, so is the run, and its wake-up is withdrawn
    reservation.status = "cancelled"
    await reservation.save()
    cancelled = await status_is(run.id, "cancelled")
    assert cancelled.history[-1]["what"] == "cancelled" and cancelled.waiting_for is None
    assert not [e for e in await models_env.event_bus.get_scheduled() if e.event.data.get("run") == run.id]

    # Given another reservation confirmed for a check-in 6 s from now
    checkin = soon(6)
    other = await Reservation(token=token(), checkin_at=checkin, status="confirmed").create()
    run = await one_run("PreArrivalReminder", "the second reminder", str(other.id))
    assert run.status == "waiting" and run.waiting_for == START_AT_RUN
    # Then the reminder starts 3 s before check-in (within a second): a start, not a wait's timeout
    done = await ended(run.id)
    assert done.status == "completed" and done.result == {"reservation_id": str(other.id)}
    assert [line["by"] for line in done.history if line["what"] == "woke"] == ["its start time"]
    assert not [line for line in done.history if "timed out" in line["what"]]
    assert checkin.timestamp() - 3 <= done.context["reminded_at"] < checkin.timestamp() - 2
    # And when checkin_due itself fires, nothing more starts
    await asyncio.sleep(max(0.0, checkin.timestamp() + 1.5 - time.time()))
    assert len(await runs_of("PreArrivalReminder", str(other.id))) == 1
    assert len(await runs_of("PreArrivalReminder")) == 2  # none for the Importer's event


async def test_wait_for_event_is_woken_by_a_published_event_that_matches(models_env, worker):
    bus = models_env.event_bus
    # Given two checkout runs started by events, waiting for their guests' documents
    await bus.publish(Event(name="checkout_started", data={"reservation_id": "r-1"}))
    first = await one_run("CheckoutOpsWF", "the checkout run", check=lambda r: r.status == "waiting")
    assert first.waiting_for["match"] == {"reservation_id": "r-1"}
    # When documents for another reservation are published, the run keeps waiting
    await bus.publish(
        Event(name="guest_docs_uploaded", data={"reservation_id": "r-2", "docs": "other", "docs_ready": True})
    )
    assert await stays_async(lambda: _status(first.id, "waiting"), 1.0)
    # When its own are, it wakes with the event's data in its Context and completes
    await bus.publish(
        Event(name="guest_docs_uploaded", data={"reservation_id": "r-1", "docs": "passport", "docs_ready": True})
    )
    run = await ended(first.id)
    assert run.status == "completed" and run.result == {"final_state": "ok", "docs": "passport"}
    assert any(line["what"] == "woken" and line["by"] == "event guest_docs_uploaded" for line in run.history)
    # And its timeout timer was withdrawn
    assert not [e for e in await bus.get_scheduled() if e.event.data.get("run") == first.id]


async def test_wait_for_event_times_out_to_the_fallback(models_env, worker):
    # Given a checkout run waiting 1 s for documents that never come
    await models_env.event_bus.publish(
        Event(name="checkout_started", data={"reservation_id": "r-3", "docs_timeout": 1})
    )
    run = await one_run("CheckoutOpsWF", "the checkout run")
    # Then it goes on to fallback_docs and completes with the fallback
    run = await ended(run.id)
    assert run.status == "completed" and run.result == {"final_state": "ok", "docs": "fallback"}
    assert any(line["what"] == "timed out" and line["step"] == "fallback_docs" for line in run.history)


async def test_an_event_published_while_the_step_runs_still_wakes_the_run(models_env, worker):
    bus = models_env.event_bus
    # Given a checkout run whose step runs for a second before it returns the wait (30 s timeout)
    await bus.publish(Event(name="checkout_started", data={"reservation_id": "r-4", "step_delay": 1.0}))

    def step_running(run):
        return run.status == "running" and run.step_started_at is not None

    run = await one_run("CheckoutOpsWF", "the step to start", check=step_running)
    # When the documents are published while that step still runs
    await bus.publish(
        Event(name="guest_docs_uploaded", data={"reservation_id": "r-4", "docs": "early", "docs_ready": True})
    )
    # Then the run takes them as soon as it waits, well before its timeout
    run = await ended(run.id, timeout=15)
    assert run.status == "completed" and run.result == {"final_state": "ok", "docs": "early"}
    assert any(line["what"] == "woken" and "arrived while the step ran" in line["by"] for line in run.history)


async def test_a_positive_offset_starts_the_run_after_the_event(models_env, worker):
    # Given FeedbackRequest, 1.8 s after guest_checked_out
    event = Event(name="guest_checked_out", data={"guest": "ada"})
    await models_env.event_bus.publish(event)
    # Then its run is created waiting for its start at the event's time plus the offset, and starts then
    run = await one_run("FeedbackRequest", "the feedback run")
    assert run.status == "waiting"
    assert run.waiting_for == {"kind": "start", "name": "guest_checked_out", "then": "ask", "offset_minutes": 0.03}
    assert run.wake_at == pytest.approx(event.timestamp.timestamp() + 1.8, abs=0.01)
    done = await ended(run.id)
    assert done.status == "completed" and done.error is None
    assert event.timestamp.timestamp() + 1.8 <= done.context["asked_at"] < event.timestamp.timestamp() + 2.8


async def test_an_event_delivered_twice_starts_one_run(models_env, worker):
    from earnevents.worker import workflow_events

    # Given one checkout_started event, published twice under one id
    event = Event(name="checkout_started", data={"reservation_id": "r-5", "docs_timeout": 1})
    await models_env.event_bus.publish(event)
    await models_env.event_bus.publish(event)
    # And handed to the bridge twice more, as a redelivery would
    await workflow_events.bridge(event)
    await workflow_events.bridge(event)
    # Then one run started, and no other comes
    run = await one_run("CheckoutOpsWF", "the checkout run")
    assert await stays_async(lambda: _count("CheckoutOpsWF", 1), 1.0)
    assert (await ended(run.id)).status == "completed"


async def _status(run_id: str, status: str) -> bool:
    return (await engine.get_run(run_id)).status == status


async def _count(workflow: str, expected: int) -> bool:
    return len(await runs_of(workflow)) == expected


async def test_announcements_handled_out_of_order_leave_the_latest_due_time(models_env):
    from earnevents.worker import workflow_events

    # Given a reservation's occurrence announced, then moved, then a cancel of the first time
    # (as three writes publish them), handled by the bridge in the reverse order
    entity = {"model": "Reservation", "id": "1" * 24}
    about = {"entity": entity, "model": "Reservation", "sender": "Reservation"}
    first, second = soon(60), soon(90)
    at = dt.datetime.now(dt.timezone.utc)

    def announced(name: str, data: dict, later_ms: int) -> Event:
        data = {"id": entity["id"], **data}
        return Event(name=name, data=data, metadata=about, timestamp=at + dt.timedelta(milliseconds=later_ms))

    created = announced("checkin_due:created", {"due_at": first, "previous_due_at": None}, 0)
    stale_cancel = announced("checkin_due:cancelled", {"due_at": first, "reason": "condition"}, 1)
    moved = announced("checkin_due:created", {"due_at": second, "previous_due_at": first}, 2)
    for event in (moved, stale_cancel, created, moved):
        await workflow_events.bridge(event)
    # Then one run waits for its start, 3 s before the latest due time
    [run] = await runs_of("PreArrivalReminder", entity["id"])
    assert run.status == "waiting" and run.waiting_for == START_AT_RUN
    assert run.wake_at == pytest.approx(second.timestamp() - 3, abs=0.01)
    assert run.waiting_for == START_AT_RUN

    # When that occurrence is cancelled, then scheduled again at the same time (a status toggled back)
    cancel = announced("checkin_due:cancelled", {"due_at": second, "reason": "condition"}, 3)
    again = announced("checkin_due:created", {"due_at": second, "previous_due_at": None}, 4)
    await workflow_events.bridge(cancel)
    cancelled = await engine.get_run(run.id)
    assert cancelled.status == "cancelled" and cancelled.waiting_for is None and cancelled.wake_at is None
    await workflow_events.bridge(again)
    # Then the same run waits for its start again, and its wake-up is back in the schedule
    revived = await engine.get_run(run.id)
    assert revived.status == "waiting" and revived.waiting_for == START_AT_RUN
    assert revived.wake_at == pytest.approx(second.timestamp() - 3, abs=0.01)
    assert [e for e in await models_env.event_bus.get_scheduled() if e.event.data.get("run") == run.id]


async def test_no_signal_or_event_starts_a_run_waiting_for_its_start_and_cancel_withdraws_it(models_env):
    from earnevents.worker import workflow_events
    from earnevents.worker.workflows import advance

    bus = models_env.event_bus

    async def scheduled(run_id):
        return [e.event for e in await bus.get_scheduled() if e.event.data.get("run") == run_id]

    # Given DocsFollowUp's run, ten minutes after guest_docs_uploaded (the event CheckoutOpsWF
    # waits for), handed to the bridge in this process as a worker would
    first = Event(name="guest_docs_uploaded", data={"reservation_id": "r-7"})
    await workflow_events.bridge(first)
    run = await one_run("DocsFollowUp", "the follow-up run")
    # Then it waits for its start, saying so, with its wake-up in the schedule
    assert run.status == "waiting" and run.step == "follow_up"
    start = {"kind": "start", "name": "guest_docs_uploaded", "then": "follow_up", "offset_minutes": 10}
    assert run.waiting_for == start
    assert run.wake_at == pytest.approx(first.timestamp.timestamp() + 600, abs=0.01)
    assert [e.data["version"] for e in await scheduled(run.id)] == [run.version]
    assert [r.id for r in await engine.find_runs(status="waiting")] == [run.id]
    # And when Redis loses its data, the rebuild from MongoDB puts its wake-up back (the same message)
    await models_env.redis.flushall()
    rebuilt = await recovery.reschedule(models_env.redis, models_env.db, run.queue)
    assert rebuilt.wake_ups == 1 and rebuilt.running == 0
    assert [e.data["version"] for e in await scheduled(run.id)] == [run.version]
    # When signals of the trigger's name are sent (also the seed's bridge signal, and to that run)
    for name in ("guest_docs_uploaded", "event:guest_docs_uploaded"):
        assert await engine.signal(name, {"reservation_id": "r-7"}) == 0
        assert await engine.signal(name, {"reservation_id": "r-7"}, run_id=run.id) == 0
    # And the event itself comes again (the bridge delivers it to waiting runs: it is awaited)
    second = Event(name="guest_docs_uploaded", data={"reservation_id": "r-8"})
    await workflow_events.bridge(second)
    # Then the run did not move (no change at all), and the event started a run of its own
    assert await engine.get_run(run.id) == run
    [other] = [r for r in await runs_of("DocsFollowUp") if r.id != run.id]
    assert other.status == "waiting" and other.context == {"reservation_id": "r-8"}
    # And a stale message of the run (as a redelivery brings) does not start it either
    stale = Event(name="workflow:DocsFollowUp", data={"run": run.id, "version": run.version - 1})
    await advance(stale)
    assert (await engine.get_run(run.id)).status == "waiting"

    # When its wake-up comes, it starts its start step: no timeout
    await advance(Event(name="workflow:DocsFollowUp", data={"run": run.id, "version": run.version}))
    started = await engine.get_run(run.id)
    assert started.status == "running" and started.step == "follow_up" and started.error is None
    assert started.waiting_for is None and started.wake_at is None and started.visit == 1
    assert started.history[-1]["what"] == "woke" and started.history[-1]["by"] == "its start time"

    # When the other run is cancelled before its start
    assert await engine.cancel(other.id)
    # Then it is cancelled, its wake-up withdrawn; a second cancel finds nothing to cancel
    cancelled = await engine.get_run(other.id)
    assert cancelled.status == "cancelled" and cancelled.waiting_for is None and cancelled.wake_at is None
    assert not await scheduled(other.id)
    assert not await engine.cancel(other.id)
    # And resumed, it runs its start step now
    await engine.resume(other.id)
    resumed = await engine.get_run(other.id)
    assert resumed.status == "running" and resumed.step == "follow_up" and resumed.waiting_for is None
