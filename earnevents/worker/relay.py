"""Worker bootstep that relays the MongoDB outbox to Redis once Redis is reachable.

Events published while Redis was down wait in MongoDB (``earnevents.outbox``).
Every worker with a MongoDB configured polls for them; one at a time per queue
(a Redis lock) pushes them in publish order, immediate ones onto the queue and
delayed ones into the delay schedule, then deletes them from the outbox. The
relay runs in a thread of the worker's main process, so it uses PyMongo's and
redis-py's blocking clients.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .. import keys, message, outbox, redisurl, schedule
from ..logtext import get_logger
from . import appsettings
from .periodic import RELEASE_LOCK, PeriodicThread, ThreadStep, consumed_queues

log = get_logger(__name__)

INTERVAL = 1.0
"""Seconds between a worker's checks of the MongoDB outbox."""

BATCH = 500
LOCK_MS = 30_000


class Relay(PeriodicThread):
    """Moves ``queues``' outbox documents to Redis every ``interval`` seconds."""

    what = "outbox relay"

    def __init__(self, redis_uri: str, mongo_uri: str, database: str, queues: list[str], interval: float) -> None:
        super().__init__(interval)
        self.queues = queues
        self._redis = redisurl.sync_client(redis_uri, socket_timeout=5, socket_connect_timeout=5)
        self._add = self._redis.register_script(schedule.ADD_SCRIPT)
        self._release = self._redis.register_script(RELEASE_LOCK)
        from pymongo import MongoClient  # only with a MongoDB configured (a faster start without one)

        self._mongo: MongoClient[Any] = MongoClient(mongo_uri, tz_aware=True, serverSelectionTimeoutMS=5000)
        self._col = self._mongo[database][outbox.COLLECTION]

    def close(self) -> None:
        self._redis.close()
        self._mongo.close()

    def tick(self) -> None:
        self.relay_once()

    def relay_once(self) -> int:
        """Relay every waiting document of every queue; returns how many were relayed."""
        return sum(self._relay_queue(queue) for queue in self.queues)

    def _relay_queue(self, queue: str) -> int:
        if self._col.find_one({"queue": queue}, {"_id": 1}) is None:
            return 0
        token = uuid.uuid4().hex
        lock = keys.outbox_lock(queue)
        if not self._redis.set(lock, token, nx=True, px=LOCK_MS):
            return 0  # another worker is relaying this queue
        relayed = 0
        try:
            while not self._stop.is_set():
                docs = list(self._col.find({"queue": queue}).sort(outbox.ORDER).limit(BATCH))
                if not docs:
                    break
                self._push(queue, docs)
                # Pushed first, deleted second: a crash in between relays again (at least once).
                self._col.delete_many({"_id": {"$in": [d["_id"] for d in docs]}})
                relayed += len(docs)
                self._redis.pexpire(lock, LOCK_MS)
        finally:
            self._release(keys=[lock], args=[token])
        if relayed:
            log.info("relayed %d event(s) from the MongoDB outbox to %s", relayed, queue)
        return relayed

    def _push(self, queue: str, docs: list[dict[str, Any]]) -> None:
        now = time.time()
        pipe = self._redis.pipeline(transaction=True)
        for doc in docs:
            due = doc.get("due")
            if due is not None and due > now:
                script_keys, argv = schedule.add_args(queue, [(doc["_id"], doc["name"], doc["message"])], at=due)
                self._add(keys=script_keys, args=argv, client=pipe)
            else:
                # A copy of its own at each push: relayed again after a crash between the push
                # and the delete, the two copies still run each handler once.
                pipe.lpush(queue, message.new_copy(doc["message"]))
        pipe.execute()


class RelayStep(ThreadStep):
    """Celery worker bootstep owning one :class:`Relay`, when a MongoDB is configured."""

    label = "earnevents outbox relay"

    def create(self, worker: Any) -> Relay | None:
        settings = appsettings.settings_of(worker.app)
        if not settings.mongo_uri:
            return None
        return Relay(settings.redis_uri, settings.mongo_uri, settings.database, consumed_queues(worker), INTERVAL)
