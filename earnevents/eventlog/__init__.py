"""The event log: every published event with the outcome of each of its handlers.

Stored in MongoDB (collection ``earnevents_events``) when a mongo_uri is configured,
else in Redis; the API is the same (``event_bus.get_event``, ``find_events``, ``replay``).
Publishers record events in the background (:mod:`.recorder`); workers record their
handlers' outcomes from a writer thread of their own (``earnevents.worker.eventlog``).
"""

from typing import TYPE_CHECKING, Any

from .base import EventLogStore
from .record import EVENT_STATUSES, HANDLER_STATUSES, EventRecord, HandlerRecord
from .redis_store import RedisEventLog

if TYPE_CHECKING:
    from .mongo_store import MongoEventLog

__all__ = [
    "EVENT_STATUSES",
    "HANDLER_STATUSES",
    "EventLogStore",
    "EventRecord",
    "HandlerRecord",
    "MongoEventLog",
    "RedisEventLog",
]


def __getattr__(name: str) -> Any:
    # The MongoDB store imports pymongo: only where one is used (a faster start without MongoDB).
    if name == "MongoEventLog":
        from .mongo_store import MongoEventLog

        return MongoEventLog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
