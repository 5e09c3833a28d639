"""Async MongoDB models with lifecycle hooks and model events."""

from .base import BaseModel, Query
from .events import dispatch_model_event
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

__all__ = [
    "BaseModel",
    "Query",
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
