"""Worker bootstep that moves due messages from the delay schedule onto the queue.

It runs in every worker (the main process, a thread of its own), so delayed
events and retry waits need no ``celery beat`` and no ETA messages held in worker
memory. Several workers polling the same schedule is safe: the move is one Lua
script, so each due message is enqueued once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import bootsteps

from .. import schedule

log = logging.getLogger(__name__)

BATCH = 500
"""Most messages moved by one script call; a full batch is followed at once by another."""


class Mover:
    """Polls the schedules of ``queues`` every ``interval`` seconds in a daemon thread."""

    def __init__(self, redis_uri: str, queues: list[str], interval: float) -> None:
        self.queues = queues
        self.interval = interval
        self._client = redis.Redis.from_url(redis_uri, socket_timeout=5, socket_connect_timeout=5)
        self._script = self._client.register_script(schedule.MOVE_DUE_SCRIPT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="earnevents-scheduler", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._client.close()

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

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                moved = self.move_due()
            except redis.RedisError as exc:
                if not self._failing:
                    log.warning("delay scheduler cannot reach Redis (%r); retrying every %gs", exc, self.interval)
                self._failing = True
            else:
                if self._failing:
                    log.info("delay scheduler reached Redis again")
                self._failing = False
                if moved:
                    log.debug("delay scheduler enqueued %d due message(s)", moved)
            self._stop.wait(self.interval)


class SchedulerStep(bootsteps.StartStopStep):
    """Celery worker bootstep owning one :class:`Mover`."""

    label = "earnevents scheduler"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.mover: Mover | None = None

    def start(self, worker: Any) -> None:
        app = worker.app
        queues = sorted(app.amqp.queues.consume_from or [app.conf.task_default_queue])
        interval = app.conf.get("earnevents_scheduler_interval", 0.2)
        self.mover = Mover(app.conf.broker_url, queues, interval)
        self.mover.start()
        log.info("delay scheduler serving %s every %gs", ", ".join(queues), interval)

    def stop(self, worker: Any) -> None:
        if self.mover is not None:
            self.mover.stop()
            self.mover = None

    shutdown = stop
