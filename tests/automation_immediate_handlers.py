"""Handlers of tests/test_automations_immediate_e2e.py's workers: each records what it saw,
and what ``await event.entity()`` loaded, to ``results:<token>`` (the token in the event's data)."""

from __future__ import annotations

import json
from typing import Any

from automation_immediate_models import Memo, Ticket

from earnevents import Event, event_handler, on_event, runtime


async def record(event: Event, handler: str, **extra: Any) -> None:
    entry = {
        "handler": handler,
        "name": event.name,
        "sender": event.sender,
        "data": {key: repr(value) for key, value in event.data.items()},
        "id_type": type(event.data.get("id")).__name__,
        "entity": (event.metadata or {}).get("entity"),
        **extra,
    }
    await runtime.current().redis.rpush(f"results:{event.data['token']}", json.dumps(entry))


async def record_entity(event: Event, handler: str) -> None:
    """Record the document event.entity() loads: its class, status and id (None if deleted)."""
    loaded = await event.entity()
    seen = None
    if loaded is not None:
        seen = {"class": type(loaded).__name__, "id": str(loaded.id), "status": getattr(loaded, "status", None)}
    await record(event, handler, loaded=seen)


@on_event("imm_ticket_opened")
async def ticket_opened(event: Event) -> None:
    await record_entity(event, "ticket_opened")


@on_event("imm_ticket_hot")
async def ticket_hot(event: Event) -> None:
    await record(event, "ticket_hot")


@on_event("imm_ticket_vip")
async def ticket_vip(event: Event) -> None:
    await record_entity(event, "ticket_vip")


@on_event("imm_flagged", entity_type=Ticket)
async def ticket_flagged(event: Event) -> None:
    await record_entity(event, "ticket_flagged")


@on_event("imm_flagged", entity_type="Memo")
async def memo_flagged(event: Event) -> None:
    loaded = await event.entity()
    assert loaded is None or isinstance(loaded, Memo)
    await record_entity(event, "memo_flagged")


@on_event("imm_flagged")
async def any_flagged(event: Event) -> None:
    await record(event, "any_flagged")


@event_handler("ticket.created")
async def ticket_created(event: Event) -> None:
    await record_entity(event, "ticket_created")


@event_handler("ticket.deleted")
async def ticket_deleted(event: Event) -> None:
    await record_entity(event, "ticket_deleted")


@event_handler("ticket.escalated")
async def ticket_escalated(event: Event) -> None:
    """A dispatch_model_event event."""
    await record_entity(event, "ticket_escalated")


@event_handler("imm_plain")
async def plain(event: Event) -> None:
    """An event about no document: entity() refuses it."""
    try:
        await event.entity()
    except ValueError as exc:
        await record(event, "plain", error=str(exc))
    else:
        await record(event, "plain", error=None)
