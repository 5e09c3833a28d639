"""What the worker threads restoring lost Redis state from MongoDB share.

Two such threads run in every worker's main process: ``occurrences.Rebuilder`` (models'
scheduled events) and ``workflow_rebuild.Rebuilder`` (workflow runs' messages). Each checks
a marker in Redis every second; when it is gone (a first start, a flush, a failover to an
empty replica) one worker at a time, under a lock, rebuilds from MongoDB with clients of its
own (the main process has no earnevents runtime), in a short-lived event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from .. import redisurl
from .periodic import RELEASE_LOCK, PeriodicThread

T = TypeVar("T")

LOCK_MS = 300_000
"""How long one worker's rebuild may hold its lock before another may take over."""


class RestoreThread(PeriodicThread):
    """A periodic thread with a blocking Redis client, a lock, and a way to run async work
    against fresh asyncio Redis and MongoDB clients."""

    def __init__(self, redis_uri: str, mongo_uri: str, database: str, interval: float) -> None:
        super().__init__(interval)
        self._redis_uri = redis_uri
        self._mongo_uri = mongo_uri
        self._database = database
        self._redis = redisurl.sync_client(redis_uri, socket_timeout=5, socket_connect_timeout=5)
        self._release = self._redis.register_script(RELEASE_LOCK)

    def close(self) -> None:
        self._redis.close()

    @contextlib.contextmanager
    def locked(self, lock: str) -> Iterator[bool]:
        """Hold ``lock`` (True) while the block runs, or False if another worker holds it."""
        token = uuid.uuid4().hex
        if not self._redis.set(lock, token, nx=True, px=LOCK_MS):
            yield False
            return
        try:
            yield True
        finally:
            self._release(keys=[lock], args=[token])

    def run_with_clients(self, work: Callable[[Any, Any], Awaitable[T]]) -> T:
        """``await work(redis, db)`` in a loop of its own, with clients made for it and closed after."""

        async def run() -> T:
            redis = redisurl.async_client(self._redis_uri, socket_timeout=10, socket_connect_timeout=5)
            from pymongo import AsyncMongoClient  # only with a MongoDB configured (a faster start without one)

            mongo: AsyncMongoClient[Any] = AsyncMongoClient(
                self._mongo_uri, tz_aware=True, serverSelectionTimeoutMS=5000
            )
            try:
                return await work(redis, mongo[self._database])
            finally:
                await redis.aclose()
                await mongo.close()

        return asyncio.run(run())
