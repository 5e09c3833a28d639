"""The seed's import paths: ``from earnevents.events import Event, event_handler``."""

from ..event import Event
from ..handlers import event_handler, model_event_handler
from ..models.events import dispatch_model_event

__all__ = ["Event", "event_handler", "model_event_handler", "dispatch_model_event"]
