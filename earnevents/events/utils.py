"""The seed's import path: ``from earnevents.events.utils import dispatch_model_event``."""

from ..models.events import dispatch_model_event

__all__ = ["dispatch_model_event"]
