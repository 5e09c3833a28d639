"""Model event handlers for worker tests (EARNEVENTS_HANDLER_MODULES=model_handlers)."""

from __future__ import annotations

import json

from e2e_handlers import _record

from earnevents import Event, model_event_handler, runtime


async def record_as(key: str, event: Event, handler: str, **extra: object) -> None:
    """Models have no token field: tests put theirs in a field and name it here."""
    await runtime.current().redis.rpush(f"results:{key}", json.dumps(_record(event, handler, **extra)))


@model_event_handler("User", "created")
async def user_created(event: Event) -> None:
    await record_as(event.data["username"], event, "user_created")


@model_event_handler("Gadget", "updated")
async def gadget_updated(event: Event) -> None:
    await record_as(event.data["name"], event, "gadget_updated", changed=event.metadata.get("changed_fields"))
