"""Model automations (seed 003 §1, §2, §7) handled by real `celery -A earnevents worker`
subprocesses: the seed's Reservation (tests/automation_models.py) with handlers written
the seed's way (tests/automation_handlers.py)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from automation_models import Reservation, Visit
from conftest import handled, stays, token, wait_for, wait_handled
from model_fixtures import eventually, worker_env

from earnevents import BaseModel, EventDefinition, keys
from earnevents.models import automations

pytest_plugins = ["model_fixtures"]
pytestmark = [pytest.mark.mongo, pytest.mark.worker]


@pytest.fixture
def worker(start_worker, mongo_url, mongo_db, queue, rclient):
    started = start_worker(modules="automation_handlers", env=worker_env(mongo_url, mongo_db))
    # Its start's rebuild of the schedule is done: one still running would move what a test
    # changes behind the model's back before its occurrence comes due (seen on a loaded machine)
    wait_for(
        lambda: rclient.smembers(keys.occurrences_rebuilt(queue)) >= {b"Reservation", b"Visit"},
        15,
        "the worker's rebuild at start",
    )
    return started


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def soon(seconds: float) -> dt.datetime:
    """Now plus ``seconds``, in whole milliseconds (as MongoDB stores it and due times count)."""
    moment = utcnow() + dt.timedelta(seconds=seconds)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def on_time(record, moment: dt.datetime) -> bool:
    """The handler ran within a second of ``moment`` (not before it)."""
    return moment.timestamp() <= record["at"] < moment.timestamp() + 1.0


async def scheduled(bus, definition: str) -> dict[str, dt.datetime]:
    """Pending occurrences of ``definition`` in the schedule: document id -> due time."""
    return {
        pending.entity.id: pending.due_at
        for pending in await bus.get_scheduled(event_name=definition)
        if pending.entity is not None
    }


async def test_the_seeds_reservation_confirmed_then_checked_in(models_env, worker, rclient):
    # Given a pending reservation checking in two seconds from now
    tok = token()
    checkin = utcnow() + dt.timedelta(seconds=2)
    reservation = await Reservation(token=tok, checkin_at=checkin).create()
    # When it is confirmed
    reservation.status = "confirmed"
    await reservation.save()
    # Then reservation_confirmed reached @on_event once, with the confirmed document loaded
    [welcome] = wait_handled(rclient, tok, "send_welcome_email")
    assert welcome["loaded"] == "confirmed"
    # And checkin_due fires at checkin_at, within a second
    [due] = wait_handled(rclient, tok, "prepare_room")
    assert checkin.timestamp() <= due["at"] < checkin.timestamp() + 1.0
    assert due["entity_ref"] == {"model": "Reservation", "id": str(reservation.id)}
    assert stays(lambda: len(handled(rclient, tok, "send_welcome_email")) == 1, 0.5)
    assert handled(rclient, tok, "never_runs") == []


async def test_writes_move_and_cancel_the_pending_occurrence(models_env, worker, rclient):
    # Given four confirmed reservations: one checking in 1.5 s from now, three in 2.5 s
    tok = token()
    first = soon(1.5)
    reservation = await Reservation(token=tok, checkin_at=first, status="confirmed").create()
    checkin = soon(2.5)
    toks = {why: token() for why in ("condition", "date_cleared", "deleted")}
    others = {
        why: await Reservation(token=other, checkin_at=checkin, status="confirmed").create()
        for why, other in toks.items()
    }
    [created] = wait_handled(rclient, tok, "checkin_scheduled")
    assert created["times"] == {"due_at": first.timestamp()}
    assert created["data"]["previous_due_at"] == "None"
    assert set(await scheduled(models_env.event_bus, "checkin_due")) >= {str(r.id) for r in others.values()}

    # When the first one's check-in moves to 3 s from now
    moved = soon(3.0)
    reservation.checkin_at = moved
    await reservation.save()
    # And of the others, one goes back to pending, one loses its date and one is deleted
    others["condition"].status = "pending"
    await others["condition"].save()
    others["date_cleared"].checkin_at = None
    await others["date_cleared"].save()
    await others["deleted"].delete()

    # Then @on_event_created runs again for the moved one, with the new and the previous due time
    [_, announced] = wait_handled(rclient, tok, "checkin_scheduled", count=2)
    assert announced["times"] == {"due_at": moved.timestamp(), "previous_due_at": first.timestamp()}
    assert announced["entity_ref"] == {"model": "Reservation", "id": str(reservation.id)}
    # And @on_event_cancelled runs for each of the others, with the reason and the due time it had
    # (the deleted one's handler finds no document: it records under the id)
    for why, other in toks.items():
        key = str(others[why].id) if why == "deleted" else other
        [cancelled] = wait_handled(rclient, key, "checkin_cancelled")
        assert cancelled["data"]["reason"] == repr(why)
        assert cancelled["times"] == {"due_at": checkin.timestamp()}
        assert cancelled["entity_ref"] == {"model": "Reservation", "id": str(others[why].id)}
    assert handled(rclient, str(others["deleted"].id), "checkin_cancelled")[0]["loaded"] is None
    assert not set(await scheduled(models_env.event_bus, "checkin_due")) & {str(r.id) for r in others.values()}
    # And checkin_due fires at the moved one's new time, within a second, not at its old one
    [due] = wait_handled(rclient, tok, "prepare_room")
    assert on_time(due, moved), due["at"] - moved.timestamp()
    assert stays(lambda: len(handled(rclient, tok, "prepare_room")) == 1, 0.5)
    assert handled(rclient, tok, "checkin_cancelled") == []
    # And never for the others
    for why, other in toks.items():
        assert handled(rclient, other, "prepare_room") == []
        assert handled(rclient, str(others[why].id), "prepare_room") == []


async def test_a_stale_occurrence_is_dropped_at_due_time(models_env, worker, rclient):
    # Given three confirmed reservations checking in 1.5 s from now
    checkin = soon(1.5)
    toks = {why: token() for why in ("status", "date", "no date", "gone")}
    reservations = {
        why: await Reservation(token=tok, checkin_at=checkin, status="confirmed").create() for why, tok in toks.items()
    }
    ids = {why: str(r.id) for why, r in reservations.items()}
    # When their documents change behind the model's back (the pending occurrences stay as they were)
    collection = models_env.db[Reservation._collection]
    await collection.update_one({"_id": reservations["status"].id}, {"$set": {"status": "pending"}})
    later = soon(60)
    await collection.update_one({"_id": reservations["date"].id}, {"$set": {"checkin_at": later}})
    await collection.update_one({"_id": reservations["no date"].id}, {"$set": {"checkin_at": None}})
    await collection.delete_one({"_id": reservations["gone"].id})
    assert set(await scheduled(models_env.event_bus, "checkin_due")) >= set(ids.values())
    # Then at due time the worker takes them, checks each document again and publishes nothing,
    # putting the moved one in the schedule at its document's time instead
    await eventually(
        lambda: _pending_only(models_env.event_bus, ids.values(), {ids["date"]: later}), 10, "the occurrences to be due"
    )
    assert stays(lambda: all(handled(rclient, tok, "prepare_room") == [] for tok in toks.values()), 1.0)
    # And its log says why
    expected = {
        "status": f"checkin_due for Reservation {ids['status']} due at {checkin} not published: "
        "its condition no longer holds",
        "date": f"checkin_due for Reservation {ids['date']} due at {checkin} not published: it is due at {later} now",
        "no date": f"checkin_due for Reservation {ids['no date']} due at {checkin} not published: "
        "its checkin_at is empty",
        "gone": f"checkin_due for Reservation {ids['gone']} not published: the document was deleted",
    }
    wait_for(lambda: all(line in worker.log() for line in expected.values()), 2, "the worker's log lines")


async def _pending_only(bus, record_ids, expected: dict[str, dt.datetime]) -> bool:
    """Of ``record_ids``' checkin_due occurrences, exactly ``expected`` are pending."""
    pending = await scheduled(bus, "checkin_due")
    return {key: due for key, due in pending.items() if key in set(record_ids)} == expected


async def test_offsets_and_catch_up(models_env, worker, rclient):
    # Given a reservation checking in 24 h and 1.5 s from now (its reminder: 24 h before),
    # a visit starting 1 s from now (its follow-up: 1 s after) and one that started
    # a minute ago (follow-up: catches up; visit_started: catch_up=False)
    reservation_tok, visit_tok, past_tok = token(), token(), token()
    checkin = soon(86_400 + 1.5)
    await Reservation(token=reservation_tok, checkin_at=checkin).create()
    starts = soon(1.0)
    await Visit(token=visit_tok, starts_at=starts).create()
    written = time.time()
    past = await Visit(token=past_tok, starts_at=soon(-60)).create()
    # Then the past one's follow-up, due 59 s ago, fires at once
    [caught_up] = wait_handled(rclient, past_tok, "follow_up")
    assert caught_up["at"] < written + 1.0
    # And its event without catch-up is neither scheduled nor published
    assert str(past.id) not in await scheduled(models_env.event_bus, "visit_started")
    # And the reminder fires 24 h before check-in, within a second
    [reminder] = wait_handled(rclient, reservation_tok, "remind_guest")
    assert on_time(reminder, checkin - dt.timedelta(hours=24))
    # And the coming visit's event fires at its start, its follow-up a second later
    [started] = wait_handled(rclient, visit_tok, "visit_started")
    assert on_time(started, starts)
    [follow_up] = wait_handled(rclient, visit_tok, "follow_up")
    assert on_time(follow_up, starts + dt.timedelta(seconds=1))
    assert follow_up["metadata"]["due_at"] == repr(starts + dt.timedelta(seconds=1))
    assert handled(rclient, past_tok, "visit_started") == []


async def test_workers_rebuild_the_schedule_after_redis_lost_it(
    models_env, start_worker, mongo_url, mongo_db, queue, rclient
):
    # Given two workers running (started together)
    workers = [
        start_worker(modules="automation_handlers", env=worker_env(mongo_url, mongo_db), wait=False) for _ in range(2)
    ]
    for each in workers:
        each.wait_ready()
    wait_for(lambda: rclient.sismember(keys.occurrences_rebuilt(queue), "Reservation"), 5, "the start's rebuild")
    # And two confirmed reservations checking in 2.5 and 3 s from now
    toks = [token(), token()]
    checkins = [soon(2.5), soon(3.0)]
    reservations = [
        await Reservation(token=tok, checkin_at=checkin, status="confirmed").create()
        for tok, checkin in zip(toks, checkins, strict=True)
    ]
    expected = {str(r.id): checkin for r, checkin in zip(reservations, checkins, strict=True)}
    assert (await scheduled(models_env.event_bus, "checkin_due")).items() >= expected.items()
    # When Redis loses everything
    rclient.flushall()
    assert await scheduled(models_env.event_bus, "checkin_due") == {}
    # Then a worker puts the occurrences back from MongoDB, due when they were
    await eventually(lambda: _holds(models_env.event_bus, "checkin_due", expected), 3, "the occurrences to be rebuilt")
    # And each fires once at its time
    for tok, checkin in zip(toks, checkins, strict=True):
        [due] = wait_handled(rclient, tok, "prepare_room")
        assert on_time(due, checkin), due["at"] - checkin.timestamp()
    assert stays(lambda: all(len(handled(rclient, tok, "prepare_room")) == 1 for tok in toks), 0.5)
    # And one worker rebuilt each time (at the first start, after the flush), not both
    assert sum(each.log().count("rebuilding them from MongoDB") for each in workers) == 2

    # Given no worker running, a reservation checking in, and Redis losing it again
    for each in workers:
        each.kill()  # faster than a warm shutdown, and nothing is in flight
    tok = token()
    checkin = soon(3.5)
    await Reservation(token=tok, checkin_at=checkin, status="confirmed").create()
    rclient.flushall()
    # When a worker starts
    fresh = start_worker(modules="automation_handlers", env=worker_env(mongo_url, mongo_db))
    # Then it rebuilt the schedule at start, and the occurrence fires at its time
    [due] = wait_handled(rclient, tok, "prepare_room")
    assert on_time(due, checkin), due["at"] - checkin.timestamp()
    assert "rebuilding them from MongoDB" in fresh.log()


async def _holds(bus, definition: str, expected: dict[str, dt.datetime]) -> bool:
    return (await scheduled(bus, definition)).items() >= expected.items()


async def test_an_occurrence_scheduled_twice_for_the_same_time_fires_once(models_env, worker, queue, rclient):
    # Given a confirmed reservation checking in 2 s from now
    tok = token()
    checkin = soon(2.0)
    reservation = await Reservation(token=tok, checkin_at=checkin, status="confirmed").create()
    # When it goes pending and confirmed again before then (cancelled, then scheduled again)
    reservation.status = "pending"
    await reservation.save()
    reservation.status = "confirmed"
    await reservation.save()
    wait_handled(rclient, tok, "checkin_scheduled", count=2)
    wait_handled(rclient, tok, "checkin_cancelled")
    # Then it fires once, at its time
    [due] = wait_handled(rclient, tok, "prepare_room")
    assert on_time(due, checkin)
    # When a rebuild reaching back a minute puts the fired occurrence in the schedule again
    [report] = await automations.rebuild(models_env.redis, models_env.db, queue, [Reservation], since=60)
    assert report.scheduled >= 1
    # Then the worker takes it (it is due) and skips it: the occurrence completed before
    await eventually(
        lambda: _gone(models_env.event_bus, str(reservation.id)), 3, "the worker to take the occurrence again"
    )
    wait_for(lambda: rclient.llen(queue) == 0, 3, "the queue to drain")
    assert stays(lambda: len(handled(rclient, tok, "prepare_room")) == 1, 1.0)


async def _gone(bus, record_id: str) -> bool:
    return record_id not in await scheduled(bus, "checkin_due")


async def test_an_occurrence_a_worker_cannot_fire_is_retried_then_recorded_as_a_failed_job(
    models_env, start_worker, mongo_url, mongo_db, rclient
):
    # Given a worker whose modules do not import the Reservation model
    # (automation_fire_fast: the occurrence handler's retries cut to one, a second later)
    blind = start_worker(modules="automation_fire_fast", env=worker_env(mongo_url, mongo_db))
    # And a confirmed reservation checking in 1 s from now
    tok = token()
    reservation = await Reservation(token=tok, checkin_at=soon(1.0), status="confirmed").create()
    ref = {"model": "Reservation", "id": str(reservation.id)}

    # When it is due, the worker fails to fire it, and the occurrence waits for its retry
    async def retry_pending():
        return [
            pending
            for pending in await models_env.event_bus.get_scheduled(event_name="checkin_due")
            if pending.handler == keys.OCCURRENCE_HANDLER and pending.attempt == 1 and pending.entity is not None
        ]

    [pending] = await eventually(retry_pending, 5, "the occurrence's retry")
    assert pending.entity.to_dict() == ref
    # Then, the retry failing too, it is recorded as a failed job of the occurrence handler
    [failed] = await eventually(
        lambda: models_env.event_bus.get_failed_jobs(event_name="checkin_due", handler=keys.OCCURRENCE_HANDLER),
        5,
        "the failed job",
    )
    assert "no model class named 'Reservation' is imported" in failed.error
    assert failed.event.entity_ref is not None and failed.event.entity_ref.to_dict() == ref
    assert handled(rclient, tok, "prepare_room") == []
    # When a worker that imports the model runs it again
    blind.kill()
    start_worker(modules="automation_handlers", env=worker_env(mongo_url, mongo_db))
    await models_env.event_bus.retry_job(failed.id)
    # Then the check-in event is published, late but not lost
    [due] = wait_handled(rclient, tok, "prepare_room")
    assert due["entity_ref"] == ref


async def test_a_rebuild_moves_an_occurrence_whose_date_changed_outside_the_model(models_env, queue):
    # Given a confirmed reservation checking in a minute from now
    reservation = await Reservation(token=token(), checkin_at=soon(60), status="confirmed").create()
    # When a write bypassing the model moves its check-in (update_many, a migration)
    later = soon(120)
    collection = models_env.db[Reservation._collection]
    await collection.update_many({"_id": reservation.id}, {"$set": {"checkin_at": later}})
    # And the schedule is rebuilt from MongoDB, as the README says to do after such writes
    [report] = await automations.rebuild(models_env.redis, models_env.db, queue, [Reservation])
    # Then the pending occurrence is due at the document's new time, not the stale one
    assert (await scheduled(models_env.event_bus, "checkin_due"))[str(reservation.id)] == later
    assert report.moved == 1
    # And a second rebuild finds nothing to move
    [again] = await automations.rebuild(models_env.redis, models_env.db, queue, [Reservation])
    assert again.moved == 0
    assert (await scheduled(models_env.event_bus, "checkin_due"))[str(reservation.id)] == later


async def test_a_rebuild_reaching_back_leaves_out_past_occurrences_without_catch_up(models_env, queue):
    # Given a visit whose start was set half a minute ago behind the model's back
    visit = await Visit(token=token()).create()
    collection = models_env.db[Visit._collection]
    await collection.update_one({"_id": visit.id}, {"$set": {"starts_at": soon(-30)}})
    # When a rebuild recreates the occurrences of the last minute
    await automations.rebuild(models_env.redis, models_env.db, queue, [Visit], since=60)
    # Then the follow-up (catch_up) is recreated, visit_started (catch_up=False) is not
    assert str(visit.id) in await scheduled(models_env.event_bus, "visit_followup")
    assert str(visit.id) not in await scheduled(models_env.event_bus, "visit_started")


_mid_rebuild: dict[str, Any] = {"client": None, "calls": 0}


def _flush_on_second_call(_: Any) -> bool:
    """A condition that empties Redis the second time it is asked while a test arms it."""
    if _mid_rebuild["client"] is not None:
        _mid_rebuild["calls"] += 1
        if _mid_rebuild["calls"] == 2:
            _mid_rebuild["client"].flushall()
    return True


class FlushedMidRebuild(BaseModel):
    _events = (EventDefinition("flushed_mid_rebuild_due", date_field="due_at", condition=_flush_on_second_call),)

    due_at: dt.datetime | None = None


async def test_a_rebuild_that_redis_lost_midway_leaves_the_model_unmarked_for_the_next_one(models_env, queue, rclient):
    # Given two documents with a scheduled event a minute from now
    documents = [await FlushedMidRebuild(due_at=soon(60)).create() for _ in range(2)]
    # When Redis loses its data while a rebuild (one document per batch) is between them
    _mid_rebuild.update(client=rclient, calls=0)
    try:
        await automations.rebuild(models_env.redis, models_env.db, queue, [FlushedMidRebuild], batch=1)
    finally:
        _mid_rebuild["client"] = None
    assert _mid_rebuild["calls"] == 2
    # Then the model is not marked rebuilt (the first document's occurrence was lost), so
    # the workers rebuild it again
    assert not rclient.sismember(keys.occurrences_rebuilt(queue), "FlushedMidRebuild")
    # And the next rebuild puts both occurrences back and marks the model
    await automations.rebuild(models_env.redis, models_env.db, queue, [FlushedMidRebuild])
    pending = await scheduled(models_env.event_bus, "flushed_mid_rebuild_due")
    assert set(pending) == {str(d.id) for d in documents}
    assert rclient.sismember(keys.occurrences_rebuilt(queue), "FlushedMidRebuild")
