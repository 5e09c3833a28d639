"""Model events: ``dispatch_model_event`` and the opt-in automatic events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import runtime
from ..bus import EventBus
from ..event import Event
from ..handlers import model_event_name

if TYPE_CHECKING:
    from .base import BaseModel

ACTIONS = ("created", "updated", "deleted")
"""What a model's ``_events`` may list."""


def model_data(instance: BaseModel | None, record_id: Any) -> dict[str, Any]:
    """The instance's fields (with their types) plus ``id``."""
    data = {} if instance is None else {k: v for k, v in instance.to_dict().items() if k != "id"}
    data["id"] = record_id
    return data


async def dispatch_model_event(
    event_bus: EventBus,
    model: type | str,
    action: str,
    record_id: Any,
    instance: BaseModel | None = None,
    delay: float | None = None,
) -> str:
    """Publish ``<model>.<action>`` (``User`` -> ``user.created``) with the instance's
    fields plus ``id``; returns the event id. ``model`` is a class or its name."""
    event = Event(name=model_event_name(model, action), data=model_data(instance, record_id))
    return await event_bus.publish(event, delay=delay)


async def publish_model_event(instance: BaseModel, action: str, changed_fields: list[str] | None = None) -> str:
    """An automatic event (the model lists ``action`` in ``_events``)."""
    metadata: dict[str, Any] = {"model": type(instance).__name__}
    if changed_fields is not None:
        metadata["changed_fields"] = changed_fields
    event = Event(
        name=model_event_name(type(instance), action),
        data=model_data(instance, str(instance.id)),
        metadata=metadata,
    )
    return await runtime.current().event_bus.publish(event)
