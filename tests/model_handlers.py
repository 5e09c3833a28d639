"""Model event handlers the worker tests' workers import (EARNEVENTS_HANDLER_MODULES=model_handlers).

Each records what it saw to the Redis list ``results:<token>``, the token being the
Parcel's ``token`` field, so a test observes the worker through Redis only.
"""

from __future__ import annotations

import json
import os
from typing import Any

from model_fixtures import Parcel

from earnevents import Event, model_event_handler, runtime


async def record(event: Event, handler: str, **extra: Any) -> None:
    entry = {
        "handler": handler,
        "name": event.name,
        "pid": os.getpid(),
        "types": {key: type(value).__name__ for key, value in event.data.items()},
        "repr": {key: repr(value) for key, value in event.data.items()},
        "metadata": event.metadata,
        **extra,
    }
    await runtime.current().redis.rpush(f"results:{event.data['token']}", json.dumps(entry))


@model_event_handler("Parcel", "created")
async def parcel_created(event: Event) -> None:
    await record(event, "parcel_created")


@model_event_handler(Parcel, "updated")
async def parcel_updated(event: Event) -> None:
    await record(event, "parcel_updated")


@model_event_handler("Parcel", "inspected")
async def parcel_inspected(event: Event) -> None:
    """Loads the parcel from MongoDB in the worker: models work in handlers too."""
    parcel = await Parcel.get(event.data["id"])
    loaded = None if parcel is None else {key: repr(value) for key, value in parcel.to_dict().items()}
    await record(event, "parcel_inspected", loaded=loaded)


@model_event_handler("Parcel", "lost")
async def parcel_lost(event: Event) -> None:
    attempt = await runtime.current().redis.incr(f"tries:{event.id}")
    await record(event, "parcel_lost", attempt=attempt)
    raise LookupError(f"parcel {event.data['id']} is lost")
