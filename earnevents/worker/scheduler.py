"""Worker bootstep that moves due messages from the delay schedule onto the queue.

It runs in every worker (the main process, a thread of its own), so delayed
events and retry waits need no ``celery beat`` and no ETA messages held in worker
memory. Several workers polling the same schedule is safe: the move is one Lua
script, so each due message is enqueued once.
"""

from __future__ import annotations

from typing import Any

from .. import redisurl, schedule
from ..logtext import get_logger
from . import appsettings
from .periodic import PeriodicThread, ThreadStep, consumed_queues

log = get_logger(__name__)

BATCH = 500
"""Most messages moved by one script call; a full batch is followed at once by another."""


class Mover(PeriodicThread):
    """Moves the due messages of ``queues``' schedules every ``interval`` seconds."""

    what = "delay scheduler"

    def __init__(self, redis_uri: str, queues: list[str], interval: float) -> None:
        super().__init__(interval)
        self.queues = queues
        self._client = redisurl.sync_client(redis_uri, socket_timeout=5, socket_connect_timeout=5)
        self._script = self._client.register_script(schedule.MOVE_DUE_SCRIPT)

    def move_due(self) -> int:
        """Move every due message now; returns how many were moved."""
        moved = 0
        for queue in self.queues:
            while True:
                script_keys, argv = schedule.move_args(queue, BATCH)
                count = int(self._script(keys=script_keys, args=argv))
                moved += count
                if count < BATCH:
                    break
        return moved

    def tick(self) -> None:
        moved = self.move_due()
        if moved:
            log.debug("delay scheduler enqueued %d due message(s)", moved)

    def close(self) -> None:
        self._client.close()


class SchedulerStep(ThreadStep):
    """Celery worker bootstep owning one :class:`Mover`."""

    label = "earnevents scheduler"

    def create(self, worker: Any) -> Mover:
        queues = consumed_queues(worker)
        settings = appsettings.settings_of(worker.app)
        interval = settings.scheduler_interval
        log.info("delay scheduler serving %s every %gs", ", ".join(queues), interval)
        return Mover(settings.redis_uri, queues, interval)
