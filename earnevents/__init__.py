"""earnevents: named domain events from async Python, handled by Celery workers.

Application code::

    from earnevents import init, event_bus, Event, event_handler

    await init(redis_uri="redis://localhost:6379/0", event_config={"queue_name": "app:events"})
    await event_bus.publish(Event(name="user.created", data={"email": "a@example.com"}))

Workers: ``celery -A earnevents worker`` (``earnevents.app`` is the Celery app; it
is built on first access, so publishing processes never import the worker side).
The models (``BaseModel``, ``EventDefinition``, ``dispatch_model_event``) are imported on first
access too: they bring pydantic, which a process without models never needs (earnevents.lazy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .bus import EventBus, event_bus
from .config import EventConfig, Settings
from .context import JobContext, current_job
from .deadletters import DeadItem
from .definitions import DefinedEvent, EventRegistry, define_event, registry
from .discovery import autodiscover
from .entities import EntityRef
from .errors import (
    ConfigError,
    DeadItemNotFoundError,
    EarnEventsError,
    EventConditionError,
    EventDefinitionError,
    EventNotFoundError,
    EventTooLargeError,
    EventValidationError,
    HandlerNotFoundError,
    HandlerTimeoutError,
    JobNotFoundError,
    ModelStateError,
    ModelValidationError,
    NotInitializedError,
    OutboxFullError,
    PublishError,
    ReceiverSignatureError,
    UndefinedEventError,
    WorkerLostError,
)
from .event import Event
from .eventlog import EventRecord, HandlerRecord
from .failures import FailedJob
from .handlers import event_handler, model_event_handler, on_event, on_event_cancelled, on_event_created
from .receivers import on
from .retry import RetryPolicy
from .runtime import Environment, close, init

if TYPE_CHECKING:
    from celery import Celery

    from .models import BaseModel, EventDefinition, dispatch_model_event

    app: Celery
    celery: Celery

__version__ = "0.1.0"

__all__ = [
    # setup
    "init",
    "close",
    "Environment",
    "EventConfig",
    "Settings",
    # publishing
    "Event",
    "EventBus",
    "event_bus",
    # the event registry
    "define_event",
    "DefinedEvent",
    "registry",
    "EventRegistry",
    "autodiscover",
    # handling
    "event_handler",
    "model_event_handler",
    "on",
    "on_event",
    "on_event_created",
    "on_event_cancelled",
    "RetryPolicy",
    "current_job",
    "JobContext",
    # models
    "BaseModel",
    "EventDefinition",
    "EntityRef",
    "dispatch_model_event",
    # failed jobs, refused queue items
    "FailedJob",
    "DeadItem",
    # the event log
    "EventRecord",
    "HandlerRecord",
    # errors
    "EarnEventsError",
    "ConfigError",
    "NotInitializedError",
    "PublishError",
    "OutboxFullError",
    "EventTooLargeError",
    "EventValidationError",
    "UndefinedEventError",
    "EventDefinitionError",
    "EventConditionError",
    "JobNotFoundError",
    "EventNotFoundError",
    "DeadItemNotFoundError",
    "HandlerNotFoundError",
    "HandlerTimeoutError",
    "ReceiverSignatureError",
    "ModelValidationError",
    "ModelStateError",
    "WorkerLostError",
    # worker entry point (lazy)
    "app",
    "celery",
]


_MODELS = ("BaseModel", "EventDefinition", "dispatch_model_event")


def __getattr__(name: str) -> Any:
    # `celery -A earnevents` looks up `earnevents.app`, then `earnevents.celery`.
    if name in ("app", "celery"):
        from .worker import app

        return app
    # The models bring pydantic: imported on first use (earnevents.lazy).
    if name in _MODELS:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'earnevents' has no attribute {name!r}")
