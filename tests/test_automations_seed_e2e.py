"""Seed 003 §1-2's Reservation example end to end, as its users run it: the application
(tests/seed_reservations.py, run as its own process) books reservations, a real
`celery -A earnevents worker` runs the module's ``@on_event`` automations."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import stays, wait_for
from model_fixtures import worker_env

from earnevents.config import DEFAULTS

pytest_plugins = ["model_fixtures"]
pytestmark = [pytest.mark.mongo, pytest.mark.worker]

TESTS = Path(__file__).parent


def outbox(rclient, reservation_id: str, what: str | None = None) -> list[dict]:
    lines = [json.loads(raw) for raw in rclient.lrange(f"outbox:{reservation_id}", 0, -1)]
    return [line for line in lines if what is None or line["what"] == what]


def sent(rclient, reservation_id: str, what: str) -> list[dict]:
    return wait_for(lambda: outbox(rclient, reservation_id, what), 10, f"{what} for {reservation_id}")


def test_the_seeds_reservation_example_as_its_users_write_it(
    start_worker, redis_url, mongo_url, mongo_db, queue, rclient
):
    # Given a worker running the application's automations, with the default settings
    # (the other tests poll the schedule faster: "within a second" is the default's promise)
    env = {"EARNEVENTS_REDIS_URI": redis_url, "EARNEVENTS_QUEUE": queue, **worker_env(mongo_url, mongo_db)}
    default = {"EARNEVENTS_SCHEDULER_INTERVAL": DEFAULTS["EARNEVENTS_SCHEDULER_INTERVAL"]}
    start_worker(modules="seed_reservations", env={**worker_env(mongo_url, mongo_db), **default})
    # When the application books a reservation checking in 3 s from now and confirms it,
    # and books another, confirmed, then cancels it
    app = subprocess.run(
        [sys.executable, "-m", "seed_reservations", "3"],
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    booked = json.loads(app.stdout)
    kept, dropped = booked["kept"], booked["dropped"]
    checkin = dt.datetime.fromisoformat(booked["checkin"]).timestamp()
    # Then the confirmed guest gets one welcome email, with the confirmed reservation loaded
    [welcome] = sent(rclient, kept, "welcome_email")
    assert welcome["status"] == "confirmed"
    assert welcome["data"]["status"] == "confirmed" and welcome["data"]["id"] == kept
    # And the reminder due a day before check-in (already past) went out at once, whatever the status
    assert len(sent(rclient, kept, "reminder")) == 1
    # And the check-in was scheduled for it, and for the other one, whose was cancelled
    [scheduled] = sent(rclient, kept, "checkin_scheduled")
    assert dt.datetime.fromisoformat(scheduled["data"]["due_at"]).timestamp() == pytest.approx(checkin, abs=0.001)
    [cancelled] = sent(rclient, dropped, "checkin_cancelled")
    assert cancelled["data"]["reason"] == "condition" and cancelled["status"] == "cancelled"
    # And the room is prepared at check-in, within a second
    [room] = sent(rclient, kept, "prepare_room")
    assert checkin <= room["at"] < checkin + 1.0, room["at"] - checkin
    assert room["status"] == "confirmed"
    # And nothing else happens: no room for the cancelled one, no second email
    assert stays(
        lambda: outbox(rclient, dropped, "prepare_room") == [] and len(outbox(rclient, kept, "welcome_email")) == 1,
        0.5,
    )
    assert sorted(line["what"] for line in outbox(rclient, kept)) == [
        "checkin_scheduled",
        "prepare_room",
        "reminder",
        "welcome_email",
    ]
