"""`earnevents scheduled list|cancel|rebuild`: the delay schedule from the command line,
run as operators run it (a subprocess) against the real Redis and MongoDB stand-in."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scheduled_cli_models import Appointment
from test_cli import assert_one_error_line

import earnevents
from earnevents import Event, keys, message, schedule

pytest_plugins = ["model_fixtures"]
pytestmark = [pytest.mark.mongo]

TESTS = Path(__file__).parent
OCCURRENCE = "earnevents.worker.occurrences.fire"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``earnevents ARGS`` as a subprocess with ``env`` added, its stdin not a terminal."""
    exe = Path(sys.executable).parent / "earnevents"
    full = {**os.environ, "PYTHONPATH": str(TESTS), **env}
    return subprocess.run(
        [str(exe), *args], env=full, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=TESTS
    )


@pytest.fixture
def cli_env(redis_url, mongo_url, mongo_db, queue):
    """The command's environment: this test's queue and database, the models module to import."""
    return {
        "EARNEVENTS_REDIS_URI": redis_url,
        "EARNEVENTS_QUEUE": queue,
        "EARNEVENTS_MONGO_URI": mongo_url,
        "EARNEVENTS_DATABASE": mongo_db,
        "EARNEVENTS_HANDLER_MODULES": "scheduled_cli_models",
        "EARNEVENTS_AUTODISCOVER": "",
    }


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def in_ms(when: dt.datetime) -> dt.datetime:
    """``when`` in whole milliseconds, as due times count."""
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


def member(appointment: Appointment) -> str:
    return keys.occurrence_member("Appointment", str(appointment.id), "appointment_due")


def lose_the_schedule(rclient, queue: str) -> None:
    """What Redis losing its data does to ``queue``'s schedule (other tests' queues untouched)."""
    rclient.delete(
        *schedule.schedule_keys(queue),
        keys.scheduled_by_event(queue, "appointment_due"),
        keys.occurrences_rebuilt(queue),
    )


async def test_list_shows_delayed_events_retries_and_model_occurrences_with_their_entity(models_env, cli_env, queue):
    # Given a delayed event due in 10 minutes, a handler's retry due in 20, and an
    # appointment whose scheduled event is due in 5
    reminder = Event("shop.reminder", {"n": 1})
    await earnevents.event_bus.publish(reminder, delay=600)
    retried = Event("shop.paid", {"n": 2})
    retry = message.build(retried.to_wire(), queue=queue, task_id="r" * 32, handler="app.handlers.h", attempt=2)
    await earnevents.event_bus.enqueue([("r" * 32, retried.name, retry)], queue=queue, delay=1200)
    appointment = await Appointment(starts_at=utcnow() + dt.timedelta(minutes=5)).create()

    # When listing the schedule
    out = run(cli_env, "scheduled", "list")

    # Then all three show, soonest first, the occurrence with its entity
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "3 scheduled message(s)" and len(lines) == 4, out.stdout
    due = appointment.starts_at.replace(microsecond=0)
    assert lines[1] == (
        f"{member(appointment)}  {due:%Y-%m-%d %H:%M:%S}  appointment_due  handler {OCCURRENCE}  "
        f"entity Appointment {appointment.id}"
    )
    assert lines[2].startswith(f"{reminder.id}  ") and lines[2].endswith("  shop.reminder")
    assert lines[3].startswith("r" * 32) and lines[3].endswith("shop.paid  handler app.handlers.h  attempt 2")
    # And so does get_scheduled
    [first, *_] = await earnevents.event_bus.get_scheduled()
    assert first.id == member(appointment) and first.entity is not None and first.entity.id == str(appointment.id)

    # When filtering by event, paging, and as JSON
    out = run(cli_env, "scheduled", "list", "--event", "appointment_due", "--json")
    [row] = [json.loads(line) for line in out.stdout.splitlines()]
    assert row["entity"] == {"model": "Appointment", "id": str(appointment.id)} and row["attempt"] == 0
    assert row["handler"] == OCCURRENCE and dt.datetime.fromisoformat(row["due_at"]) == in_ms(appointment.starts_at)
    out = run(cli_env, "scheduled", "list", "--limit", "1", "--offset", "1")
    assert out.stdout.splitlines()[0] == "3 scheduled message(s), showing 1" and reminder.id in out.stdout


async def test_cancel_withdraws_with_yes_and_an_unknown_id_is_exit_1(models_env, cli_env):
    # Given a delayed event and an appointment's occurrence
    reminder = Event("shop.reminder", {})
    await earnevents.event_bus.publish(reminder, delay=600)
    appointment = await Appointment(starts_at=utcnow() + dt.timedelta(minutes=5)).create()

    # Without a terminal and without --yes, nothing is cancelled
    out = run(cli_env, "scheduled", "cancel", reminder.id)
    assert out.returncode == 2 and "pass --yes" in out.stderr
    assert_one_error_line(out.stderr)
    assert await earnevents.event_bus.count_scheduled() == 2

    # With --yes both go; an id no longer pending is an error line and exit 1, the others done
    out = run(cli_env, "scheduled", "cancel", reminder.id, member(appointment), "--yes")
    assert out.returncode == 0 and out.stdout.splitlines() == [
        f"cancelled {reminder.id}",
        f"cancelled {member(appointment)}",
    ]
    assert await earnevents.event_bus.get_scheduled() == []
    out = run(cli_env, "scheduled", "cancel", reminder.id, "-y")
    assert out.returncode == 1 and f"nothing scheduled with id '{reminder.id}'" in out.stderr
    assert_one_error_line(out.stderr)


async def test_rebuild_recreates_lost_occurrences_and_since_the_recent_past_ones(models_env, cli_env, rclient, queue):
    # Given an appointment due in 5 minutes, one due 10 minutes ago (not yet taken: no worker)
    # and a cancelled one, whose schedule Redis then loses
    coming = await Appointment(starts_at=utcnow() + dt.timedelta(minutes=5)).create()
    missed = await Appointment(starts_at=utcnow() - dt.timedelta(minutes=10)).create()
    await Appointment(starts_at=utcnow() + dt.timedelta(minutes=5), status="cancelled").create()
    assert {s.id for s in await earnevents.event_bus.get_scheduled()} == {member(coming), member(missed)}
    lose_the_schedule(rclient, queue)
    assert await earnevents.event_bus.get_scheduled() == []

    # When rebuilding
    out = run(cli_env, "scheduled", "rebuild")

    # Then the coming occurrence is back, due when it was, and the model is marked rebuilt;
    # the past one is not recreated
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == (
        "Appointment: 3 document(s), 1 occurrence(s) pending (added where missing, 0 moved to their document's time), "
        "1 past ones not recreated, "
        "0 unreadable"
    )
    assert f"queue {queue!r}" in out.stdout
    [back] = await earnevents.event_bus.get_scheduled()
    assert back.id == member(coming) and back.entity is not None and back.entity.id == str(coming.id)
    assert back.due_at == in_ms(coming.starts_at)
    assert rclient.sismember(keys.occurrences_rebuilt(queue), "Appointment")

    # When rebuilding with --since: it asks first (no terminal: refused without --yes)
    out = run(cli_env, "scheduled", "rebuild", "--since", "1h")
    assert out.returncode == 2 and "they fire at once" in out.stderr and "pass --yes" in out.stderr
    assert len(await earnevents.event_bus.get_scheduled()) == 1
    out = run(cli_env, "scheduled", "rebuild", "--since", "1h", "--yes")
    # Then the occurrence due 10 minutes ago is recreated too (due at once), the other kept
    assert out.returncode == 0, out.stderr
    assert (
        "2 occurrence(s) pending (added where missing, 0 moved to their document's time), 0 past ones not recreated"
        in out.stdout
    )
    assert [s.id for s in await earnevents.event_bus.get_scheduled()] == [member(missed), member(coming)]
    # A window that does not reach back far enough still leaves it out
    lose_the_schedule(rclient, queue)
    out = run(cli_env, "scheduled", "rebuild", "--since", "1m", "-y")
    assert (
        "1 occurrence(s) pending (added where missing, 0 moved to their document's time), 1 past ones not recreated"
        in out.stdout
    )

    # Given a document the model cannot load, the rebuild says so and exits 1
    await models_env.db[Appointment._collection].insert_one(
        {"starts_at": utcnow() + dt.timedelta(minutes=5), "status": {"not": "a str"}}
    )
    out = run(cli_env, "scheduled", "rebuild")
    assert out.returncode == 1 and "1 unreadable" in out.stdout
    assert out.stderr.splitlines()[-1].startswith("error: 1 document(s) could not be loaded")


def test_rebuild_needs_mongodb_and_a_model_with_scheduled_events(cli_env):
    # Without MongoDB: a configuration error, one line, exit 2
    out = run({**cli_env, "EARNEVENTS_MONGO_URI": ""}, "scheduled", "rebuild")
    assert out.returncode == 2 and "none is configured: set EARNEVENTS_MONGO_URI" in out.stderr
    assert_one_error_line(out.stderr)
    # Without the application's models: nothing to rebuild, exit 1, naming the settings to check
    out = run({**cli_env, "EARNEVENTS_HANDLER_MODULES": ""}, "scheduled", "rebuild")
    assert out.returncode == 1 and "no imported model declares a scheduled event" in out.stderr
    assert "EARNEVENTS_HANDLER_MODULES" in out.stderr and out.stdout == ""
    assert_one_error_line(out.stderr)
    # A module that cannot be imported
    out = run({**cli_env, "EARNEVENTS_HANDLER_MODULES": "no_such_module_here"}, "scheduled", "rebuild")
    assert out.returncode == 1 and "could not import the application's modules" in out.stderr
    assert_one_error_line(out.stderr)


async def test_listed_values_cannot_forge_lines_or_drive_the_terminal(models_env, cli_env, queue):
    # Given a delayed event whose metadata names a hostile entity (publish checks event names, not this)
    hostile = {"model": "Evil\nFAKE 9 scheduled message(s)\x1b[2J", "id": "x\x07"}
    await earnevents.event_bus.publish(Event("shop.reminder", {}, metadata={"entity": hostile}), delay=600)
    out = run(cli_env, "scheduled", "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert lines[1].endswith("entity Evil\\nFAKE 9 scheduled message(s)\\x1b[2J x\\x07")
    # And a hostile id given to cancel comes back escaped, on one line
    out = run(cli_env, "scheduled", "cancel", "nope\n\x1b[31m", "--yes")
    assert out.returncode == 1 and "\x1b" not in out.stderr
    assert_one_error_line(out.stderr)
