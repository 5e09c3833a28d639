"""Handlers of the automation tests' workers: each records what it saw to ``results:<token>``,
the token being the Reservation's, loaded through ``event.entity()`` as seed 003 §2 does."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from typing import Any

from automation_models import Reservation, Visit

from earnevents import Event, on_event, on_event_cancelled, on_event_created, runtime


def entry(event: Event, handler: str, **extra: Any) -> str:
    return json.dumps(
        {
            "handler": handler,
            "name": event.name,
            "event_id": event.id,
            "pid": os.getpid(),
            "at": time.time(),
            "data": {key: repr(value) for key, value in event.data.items()},
            "metadata": {key: repr(value) for key, value in (event.metadata or {}).items()},
            "entity_ref": None if event.entity_ref is None else event.entity_ref.to_dict(),
            # datetimes in the data as unix seconds, to compare without parsing reprs
            "times": {key: value.timestamp() for key, value in event.data.items() if isinstance(value, dt.datetime)},
            **extra,
        }
    )


async def record_entity(event: Event, handler: str) -> None:
    """Load the reservation through event.entity() and record it under its token (under
    its id when it was deleted meanwhile: the test knows both)."""
    reservation = await event.entity()
    ref = event.entity_ref
    assert ref is not None
    if reservation is None:
        key = ref.id
        status = None
    else:
        assert isinstance(reservation, Reservation)
        key = reservation.token
        status = reservation.status
    await runtime.current().redis.rpush(f"results:{key}", entry(event, handler, loaded=status))


@on_event("reservation_confirmed")
async def send_welcome_email(event: Event) -> None:
    await record_entity(event, "send_welcome_email")


@on_event("checkin_due", entity_type="Reservation")
async def prepare_room(event: Event) -> None:
    await record_entity(event, "prepare_room")


@on_event("checkin_due", entity_type="SomethingElse")
async def never_runs(event: Event) -> None:
    await record_entity(event, "never_runs")


@on_event("checkin_reminder")
async def remind_guest(event: Event) -> None:
    await record_entity(event, "remind_guest")


@on_event_created("checkin_due")
async def checkin_scheduled(event: Event) -> None:
    await record_entity(event, "checkin_scheduled")


@on_event_cancelled("checkin_due")
async def checkin_cancelled(event: Event) -> None:
    await record_entity(event, "checkin_cancelled")


async def record_visit(event: Event, handler: str) -> None:
    """Like record_entity, for a Visit."""
    visit = await event.entity()
    ref = event.entity_ref
    assert ref is not None
    key = ref.id if visit is None else visit.token
    assert visit is None or isinstance(visit, Visit)
    await runtime.current().redis.rpush(f"results:{key}", entry(event, handler, loaded=visit is not None))


@on_event("visit_followup", entity_type=Visit)
async def follow_up(event: Event) -> None:
    await record_visit(event, "follow_up")


@on_event("visit_started")
async def visit_started(event: Event) -> None:
    await record_visit(event, "visit_started")
