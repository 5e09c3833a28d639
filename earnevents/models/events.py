"""Model events: ``dispatch_model_event`` and the opt-in automatic events of ``_events``."""

from __future__ import annotations

from collections.abc import Sequence
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
    """The instance's fields, with their Python types, plus ``id``."""
    data = {} if instance is None else instance.to_dict()
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
    """Publish ``<model>.<action>`` (``OrderItem`` -> ``order_item.shipped``) with the
    instance's fields plus ``id`` = ``record_id``; ``model`` is a class or its name.

    Returns the event id. ``delay`` (seconds) schedules it, as for ``event_bus.publish``.
    The event's sender is ``model`` (a class: its qualified name), and
    ``metadata["entity"]`` names the document (model name, ``str(record_id)``), so a
    handler can ``await event.entity()``.
    """
    model_name = model if isinstance(model, str) else getattr(model, "__name__", None)
    metadata = None
    if isinstance(model_name, str) and record_id is not None:
        metadata = {"entity": {"model": model_name, "id": str(record_id)}}
    event = Event(name=model_event_name(model, action), data=model_data(instance, record_id), metadata=metadata)
    return await event_bus.publish(event, delay=delay, sender=model)


async def publish_automatic(instance: BaseModel, action: str, changed_fields: Sequence[str] | None = None) -> None:
    """Publish ``<model>.<action>`` if the model lists ``action`` in ``_events``.

    ``id`` is the stored id as a string, as the seed's ``dispatch_model_event(..., str(self.id), ...)``
    sends it, so a handler sees the same ``id`` from either; metadata names the model, the
    entity (``event.entity()``) and, for updates, the changed fields; the sender is the model class.
    """
    model = type(instance)
    if action not in model._events:
        return
    metadata: dict[str, Any] = {"model": model.__name__, "entity": {"model": model.__name__, "id": str(instance.id)}}
    if changed_fields is not None:
        metadata["changed_fields"] = list(changed_fields)
    event = Event(name=model_event_name(model, action), data=model_data(instance, str(instance.id)), metadata=metadata)
    await runtime.current().event_bus.publish(event, sender=model)
