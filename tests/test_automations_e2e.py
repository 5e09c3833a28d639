"""Model automations (seed 003 §1, §2, §7) handled by real `celery -A earnevents worker`
subprocesses: the seed's Reservation (tests/automation_models.py) with handlers written
the seed's way (tests/automation_handlers.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from automation_models import Reservation
from conftest import results, stays, token, wait_for
from model_fixtures import worker_env

pytest_plugins = ["model_fixtures"]
pytestmark = [pytest.mark.mongo, pytest.mark.worker]


@pytest.fixture
def worker(start_worker, mongo_url, mongo_db):
    return start_worker(modules="automation_handlers", env=worker_env(mongo_url, mongo_db))


def handled(rclient, tok, handler):
    return [r for r in results(rclient, tok) if r["handler"] == handler]


def wait_handled(rclient, tok, handler, count=1, timeout=10.0):
    return wait_for(
        lambda: (found := handled(rclient, tok, handler)) and len(found) >= count and found,
        timeout,
        f"{count} record(s) of {handler} for {tok}",
    )


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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
