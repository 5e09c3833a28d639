"""The worker's side of workflow recovery: sending active runs' messages again when Redis lost them.

:class:`Rebuilder` (a thread in every worker's main process) notices when Redis no longer
holds the marker :func:`keys.workflows_rebuilt` of a queue the worker consumes (a first
start, a flush, a failover to an empty replica) and, one worker at a time under a lock,
sends the messages of that queue's running, sleeping and waiting runs again from MongoDB
(:func:`earnevents.workflows.recovery.reschedule`). It needs no workflow module: the
messages are built from the run documents alone.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from pymongo import AsyncMongoClient

from .. import keys, redisurl
from ..logtext import get_logger
from ..workflows import recovery
from . import appsettings
from .periodic import RELEASE_LOCK, PeriodicThread, ThreadStep, consumed_queues

log = get_logger(__name__)

INTERVAL = 1.0
"""Seconds between a worker's checks that Redis still holds its queues' workflow messages."""

LOCK_MS = 300_000
"""How long one worker's rebuild may hold a queue's lock before another may take over."""


class Rebuilder(PeriodicThread):
    """Sends ``queues``' active workflow runs' messages again whenever Redis has lost them."""

    what = "workflow rebuilder"

    def __init__(self, redis_uri: str, mongo_uri: str, database: str, queues: list[str], interval: float) -> None:
        super().__init__(interval)
        self.queues = queues
        self._redis_uri = redis_uri
        self._mongo_uri = mongo_uri
        self._database = database
        self._redis = redisurl.sync_client(redis_uri, socket_timeout=5, socket_connect_timeout=5)
        self._release = self._redis.register_script(RELEASE_LOCK)

    def close(self) -> None:
        self._redis.close()

    def missing(self) -> list[str]:
        """The queues whose marker is gone (never rebuilt, or Redis lost its data)."""
        pipe = self._redis.pipeline(transaction=False)
        for queue in self.queues:
            pipe.exists(keys.workflows_rebuilt(queue))
        return [queue for queue, found in zip(self.queues, pipe.execute(), strict=True) if not found]

    def tick(self) -> None:
        self.rebuild_missing()

    def rebuild_missing(self) -> list[recovery.Rescheduled]:
        """Rebuild the queues :meth:`missing` names that no other worker is rebuilding."""
        done = []
        for queue in self.missing():
            token = uuid.uuid4().hex
            lock = keys.workflows_lock(queue)
            if not self._redis.set(lock, token, nx=True, px=LOCK_MS):
                continue  # another worker rebuilds it
            try:
                if self._redis.exists(keys.workflows_rebuilt(queue)):
                    continue  # that worker finished just before
                log.info(  # at a first start as after a loss: the rebuild's own line says what it sent
                    "Redis holds no mark that the workflow runs of %s have their messages (a first start, or "
                    "Redis lost its data): sending them again from MongoDB",
                    queue,
                )
                done.append(asyncio.run(self._rebuild(queue)))
            finally:
                self._release(keys=[lock], args=[token])
        return done

    async def _rebuild(self, queue: str) -> recovery.Rescheduled:
        redis = redisurl.async_client(self._redis_uri, socket_timeout=10, socket_connect_timeout=5)
        mongo: AsyncMongoClient[Any] = AsyncMongoClient(self._mongo_uri, tz_aware=True, serverSelectionTimeoutMS=5000)
        try:
            return await recovery.reschedule(redis, mongo[self._database], queue)
        finally:
            await redis.aclose()
            await mongo.close()


class WorkflowRebuildStep(ThreadStep):
    """Celery worker bootstep owning one :class:`Rebuilder` for the queues the worker consumes,
    when a MongoDB (where runs live) is configured."""

    label = "earnevents workflow rebuilder"

    def create(self, worker: Any) -> Rebuilder | None:
        settings = appsettings.settings_of(worker.app)
        if not settings.mongo_uri:
            return None
        return Rebuilder(settings.redis_uri, settings.mongo_uri, settings.database, consumed_queues(worker), INTERVAL)
