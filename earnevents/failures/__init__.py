"""Failed-job records and the stores that keep them (MongoDB when configured, else Redis)."""

from typing import TYPE_CHECKING, Any

from .base import FailureStore
from .record import FailedJob
from .redis_store import RedisFailureStore

if TYPE_CHECKING:
    from .mongo_store import MongoFailureStore

__all__ = ["FailedJob", "FailureStore", "MongoFailureStore", "RedisFailureStore"]


def __getattr__(name: str) -> Any:
    # The MongoDB store imports pymongo: only where one is used (a faster start without MongoDB).
    if name == "MongoFailureStore":
        from .mongo_store import MongoFailureStore

        return MongoFailureStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
