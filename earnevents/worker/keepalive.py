"""Worker bootstep that keeps this worker's messages and consumers visibly alive.

kombu's Redis transport gives a message back to the queue when it has been
unacknowledged for ``visibility_timeout`` seconds, assuming its worker died. That
forces a choice between slow recovery (a long timeout) and long handlers running
twice (a short one). This step removes the dilemma: every ``visibility_timeout/4``
seconds it re-stamps, in kombu's unacked index (:data:`keys.UNACKED_INDEX`), the delivery time of each
message this worker has reserved or is running. Only messages of dead workers
age past the timeout, so it can be short (default 40 s) while a ten-minute
handler is never redelivered.

The same thread refreshes the "alive" keys of this process' consumers, lists them
again in their queues' consumers sets (a worker that stalled longer than the TTL
was swept as dead and dropped from them), and returns the in-flight lists of
consumers that died (``worker.consumers``) to the queue.
"""

from __future__ import annotations

from typing import Any

from celery.worker import state

from .. import keys, redisurl
from ..logtext import get_logger
from . import appsettings, consumers
from .clock import RedisClock
from .consumers import RETURN_ORPHANS, return_orphans_args
from .periodic import PeriodicThread, ThreadStep, consumed_queues

log = get_logger(__name__)


def held_delivery_tags() -> list[str]:
    """Delivery tags of the messages this worker process has reserved or is running."""
    for _ in range(3):
        try:
            requests = list(state.requests.values())
            break
        except RuntimeError:  # the consumer changed the dict mid-copy; try again
            continue
    else:
        return []
    tags = []
    for request in requests:
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if isinstance(tag, str):
            tags.append(tag)
    return tags


class KeepAlive(PeriodicThread):
    """Re-stamps held messages and live consumers, returns dead consumers' messages."""

    what = "keep-alive"

    def __init__(self, redis_uri: str, index_key: str, interval: float, queues: list[str]) -> None:
        super().__init__(interval)
        self.index_key = index_key
        self.queues = queues
        self._client = redisurl.sync_client(redis_uri, socket_timeout=5, socket_connect_timeout=5)
        self._return_orphans = self._client.register_script(RETURN_ORPHANS)
        self._clock = RedisClock(self._client.time)  # the clock of every visibility stamp

    def close(self) -> None:
        self._client.close()

    def refresh(self) -> int:
        """Stamp every held message with Redis' current time; returns how many were held."""
        tags = held_delivery_tags()
        pipe = self._client.pipeline(transaction=False)
        if tags:
            # XX: never re-create an entry kombu removed on acknowledgement.
            pipe.zadd(self.index_key, dict.fromkeys(tags, self._clock.now()), xx=True)
        for consumer, registration in consumers.live_consumers().items():
            consumers.register(pipe, consumer, registration)
        pipe.execute()
        return len(tags)

    def return_orphans(self) -> int:
        """Put back on their queue the in-flight messages of consumers that died."""
        returned = 0
        for queue in self.queues:
            script_keys, argv = return_orphans_args(queue)
            returned += int(self._return_orphans(keys=script_keys, args=argv))
        if returned:
            log.warning("returned %d message(s) taken by dead consumers to the queue", returned)
        return returned

    def tick(self) -> None:
        self.refresh()
        self.return_orphans()


class KeepAliveStep(ThreadStep):
    """Celery worker bootstep owning one :class:`KeepAlive`."""

    label = "earnevents keep-alive"

    def create(self, worker: Any) -> KeepAlive:
        conf = worker.app.conf
        options = conf.broker_transport_options or {}
        visibility = float(options.get("visibility_timeout", 3600))
        index_key = options.get("unacked_index_key", keys.UNACKED_INDEX)
        redis_uri = appsettings.settings_of(worker.app).redis_uri
        return KeepAlive(redis_uri, index_key, max(0.5, visibility / 4), consumed_queues(worker))
