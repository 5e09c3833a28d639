"""The worker's side of workflow recovery: sending active runs' messages again when Redis lost them.

:class:`Rebuilder` (a thread in every worker's main process) notices when Redis no longer
holds the marker :func:`keys.workflows_rebuilt` of a queue the worker consumes (a first
start, a flush, a failover to an empty replica) and, one worker at a time under a lock,
sends the messages of that queue's running, sleeping and waiting runs again from MongoDB
(:func:`earnevents.workflows.recovery.reschedule`). It needs no workflow module: the
messages are built from the run documents alone.
"""

from __future__ import annotations

import functools
from typing import Any

from .. import keys
from ..logtext import get_logger
from ..workflows import recovery
from . import appsettings
from .periodic import ThreadStep, consumed_queues
from .restore import RestoreThread

log = get_logger(__name__)

INTERVAL = 1.0
"""Seconds between a worker's checks that Redis still holds its queues' workflow messages."""


class Rebuilder(RestoreThread):
    """Sends ``queues``' active workflow runs' messages again whenever Redis has lost them."""

    what = "workflow rebuilder"

    def __init__(self, redis_uri: str, mongo_uri: str, database: str, queues: list[str], interval: float) -> None:
        super().__init__(redis_uri, mongo_uri, database, interval)
        self.queues = queues

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
            with self.locked(keys.workflows_lock(queue)) as held:
                if not held or self._redis.exists(keys.workflows_rebuilt(queue)):
                    continue  # another worker rebuilds it, or finished just before
                log.info(  # at a first start as after a loss: the rebuild's own line says what it sent
                    "Redis holds no mark that the workflow runs of %s have their messages (a first start, or "
                    "Redis lost its data): sending them again from MongoDB",
                    queue,
                )
                done.append(self.run_with_clients(functools.partial(_reschedule, queue)))
        return done


async def _reschedule(queue: str, redis: Any, db: Any) -> recovery.Rescheduled:
    return await recovery.reschedule(redis, db, queue)


class WorkflowRebuildStep(ThreadStep):
    """Celery worker bootstep owning one :class:`Rebuilder` for the queues the worker consumes,
    when a MongoDB (where runs live) is configured."""

    label = "earnevents workflow rebuilder"

    def create(self, worker: Any) -> Rebuilder | None:
        settings = appsettings.settings_of(worker.app)
        if not settings.mongo_uri:
            return None
        return Rebuilder(settings.redis_uri, settings.mongo_uri, settings.database, consumed_queues(worker), INTERVAL)
