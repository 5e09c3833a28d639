"""Failed-job records and the stores that keep them (MongoDB when configured, else Redis)."""

from .base import FailureStore
from .mongo_store import MongoFailureStore
from .record import FailedJob
from .redis_store import RedisFailureStore

__all__ = ["FailedJob", "FailureStore", "MongoFailureStore", "RedisFailureStore"]
