"""Async Redis and MongoDB clients, created lazily and bound to the running loop.

Neither client connects at creation, so ``init()`` works while the servers are
down. asyncio clients belong to the event loop they were first used on; when the
running loop changes (a new ``asyncio.run``, a test's fresh loop) a new client is
made for it instead of failing with "attached to a different loop".
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import redisurl
from .config import Settings
from .logtext import get_logger
from .outbox import REDIS_BUDGET as OUTBOX_REDIS_BUDGET

if TYPE_CHECKING:  # pymongo is imported with the first MongoDB client (a faster start without one)
    from pymongo import AsyncMongoClient
    from pymongo.asynchronous.database import AsyncDatabase

log = get_logger(__name__)

REDIS_SOCKET_TIMEOUT = 5.0
"""Seconds one Redis command may take; publish retries around it (tenacity)."""

MONGO_SERVER_SELECTION_MS = 10_000
"""Milliseconds a MongoDB operation waits for a reachable server before failing."""


def redis_timeout(settings: Settings) -> float:
    """Seconds one Redis command may take: never outlasting publish's budget (shorter with an
    outbox to fall back to)."""
    budget = settings.event.publish_timeout
    if settings.outbox:
        budget = min(budget, OUTBOX_REDIS_BUDGET)
    return min(REDIS_SOCKET_TIMEOUT, budget)


class Connections:
    """The process' clients for one :class:`~earnevents.config.Settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._redis: tuple[asyncio.AbstractEventLoop, aioredis.Redis] | None = None
        self._bounded: tuple[asyncio.AbstractEventLoop, aioredis.Redis] | None = None
        self._mongo: tuple[asyncio.AbstractEventLoop, AsyncMongoClient[Any]] | None = None

    def redis(self) -> aioredis.Redis:
        """The Redis client for the running loop (bytes responses)."""
        loop = asyncio.get_running_loop()
        if self._redis is None or self._redis[0] is not loop:
            self._redis = (loop, self._new_redis(redis_timeout(self.settings)))
        return self._redis[1]

    def bounded_redis(self) -> aioredis.Redis:
        """A Redis client for commands the caller bounds itself (``asyncio.timeout``, as
        ``bus.enqueue`` does): the same but for no per-command socket timeout, with which
        redis-py runs each send as a task of its own under ``wait_for`` and each read under
        a timer: a publish then costs about a third fewer event-loop iterations."""
        loop = asyncio.get_running_loop()
        if self._bounded is None or self._bounded[0] is not loop:
            self._bounded = (loop, self._new_redis(None))
        return self._bounded[1]

    def _new_redis(self, socket_timeout: float | None) -> aioredis.Redis:
        return redisurl.async_client(
            self.settings.redis_uri,
            socket_connect_timeout=redis_timeout(self.settings),
            socket_timeout=socket_timeout,
            # No retry inside redis-py: it would send a command again after a lost reply,
            # and a publish pushed twice by it would be two identical copies. Callers
            # retry (publish with a copy of its own: bus.enqueue), bounded by their budget.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )

    @property
    def has_mongo(self) -> bool:
        return self.settings.mongo_uri is not None

    def mongo(self) -> AsyncMongoClient[Any]:
        """The MongoDB client for the running loop; only when a mongo_uri is configured."""
        if self.settings.mongo_uri is None:
            raise RuntimeError("no mongo_uri configured: pass mongo_uri to init() or set EARNEVENTS_MONGO_URI")
        loop = asyncio.get_running_loop()
        if self._mongo is None or self._mongo[0] is not loop:
            from pymongo import AsyncMongoClient

            client: AsyncMongoClient[Any] = AsyncMongoClient(
                self.settings.mongo_uri,
                tz_aware=True,
                uuidRepresentation="standard",
                serverSelectionTimeoutMS=MONGO_SERVER_SELECTION_MS,
            )
            self._mongo = (loop, client)
        return self._mongo[1]

    def db(self) -> AsyncDatabase[Any]:
        """The configured MongoDB database."""
        return self.mongo()[self.settings.database]

    async def aclose(self) -> None:
        """Close the clients that belong to the running loop; forget the others."""
        loop = asyncio.get_running_loop()
        redis_entries, mongo_entry = (self._redis, self._bounded), self._mongo
        self._redis = self._bounded = self._mongo = None
        for redis_entry in redis_entries:
            if redis_entry is not None and redis_entry[0] is loop:
                await redis_entry[1].aclose()
        if mongo_entry is not None and mongo_entry[0] is loop:
            await mongo_entry[1].close()
