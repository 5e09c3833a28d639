"""The seed's import path: ``from earnevents.base import BaseModel``."""

from .models.base import BaseModel

__all__ = ["BaseModel"]
