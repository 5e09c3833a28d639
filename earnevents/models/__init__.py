"""Async MongoDB models with lifecycle hooks and model events.

- ``base``: :class:`BaseModel` (fields, CRUD, changed-field saves, collection names)
- ``hooks``: the lifecycle decorators, the hook registry and the runner around writes
- ``events``: :func:`dispatch_model_event` and the automatic ``_events``
- ``automations``: :class:`EventDefinition`: conditional and date-scheduled events a model declares
- ``query``: what ``Model.find()`` returns
- ``fields``: the MISSING marker, BSON conversions, validation messages

``BaseModel`` (a pydantic model) is imported on first use: a worker whose handlers define no
model never imports pydantic (earnevents.lazy).
"""

from typing import TYPE_CHECKING, Any

from .automations import EventDefinition
from .events import dispatch_model_event
from .fields import MISSING
from .hooks import (
    after_create,
    after_delete,
    after_save,
    after_update,
    after_write,
    before_create,
    before_delete,
    before_save,
    before_update,
    before_write,
)
from .query import Query

if TYPE_CHECKING:
    from .base import BaseModel

__all__ = [
    "BaseModel",
    "EventDefinition",
    "Query",
    "MISSING",
    "dispatch_model_event",
    "before_create",
    "after_create",
    "before_update",
    "after_update",
    "before_write",
    "after_write",
    "before_delete",
    "after_delete",
    "before_save",
    "after_save",
]


def __getattr__(name: str) -> Any:
    if name == "BaseModel":
        from .base import BaseModel

        return BaseModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
