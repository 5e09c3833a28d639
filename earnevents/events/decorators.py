"""The seed's import path for lifecycle decorators: ``from earnevents.events.decorators import ...``."""

from ..models.hooks import (
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
