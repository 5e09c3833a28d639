"""kombu's Redis transport with two repairs: reliable fetch, and malformed items dropped.

**Reliable fetch.** kombu takes a message with BRPOP and only afterwards records it
as unacknowledged; a worker killed in between (the reply can sit unread in its
socket for milliseconds) loses the message for good. Here a consumer of a single
queue takes messages with ``BLMOVE queue -> in-flight list``, which is atomic,
and removes a message from its in-flight list only once kombu has recorded it
as unacknowledged. Every consumer registers its in-flight list and keeps an
"alive" key fresh (from the keep-alive thread); live workers return the
in-flight lists of consumers whose key expired to the queue (:func:`return_orphans`).
A worker consuming several queues falls back to kombu's BRPOP.

**Malformed items.** Plain kombu parses queue items inside the worker's event
loop; an item that is not a kombu message raises there and Celery stops the
whole worker ("Unrecoverable error"). Such items are logged and dropped instead.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps, loads

from .. import keys

log = logging.getLogger(__name__)

_live_lock = threading.Lock()
_live: dict[str, float] = {}
"""Consumer ids of this process -> their alive TTL in seconds (for the keep-alive thread)."""


def live_consumers() -> dict[str, float]:
    with _live_lock:
        return dict(_live)


# KEYS: consumers set, queue. ARGV: alive-key prefix, in-flight-list prefix.
RETURN_ORPHANS = """
local returned = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    local list = ARGV[2] .. id
    while redis.call('LMOVE', list, KEYS[2], 'LEFT', 'RIGHT') do returned = returned + 1 end
    redis.call('SREM', KEYS[1], id)
  end
end
return returned
"""


def return_orphans_args(queue: str) -> tuple[list[str], list[str]]:
    """KEYS and ARGV for :data:`RETURN_ORPHANS` on ``queue``."""
    return [keys.inflight_consumers(queue), queue], [keys.consumer_alive(""), keys.inflight_list(queue, "")]


def envelope_problem(message: Any) -> str | None:
    """Why ``message`` (a parsed queue item) is not a kombu message, or None if it is."""
    if not isinstance(message, dict):
        return f"a JSON {type(message).__name__}, not an object"
    properties = message.get("properties")
    if not isinstance(properties, dict) or not isinstance(properties.get("delivery_tag"), str):
        return "no properties.delivery_tag"
    if not isinstance(message.get("headers", {}), dict):
        return "headers is not an object"
    body = message.get("body")
    if not isinstance(body, str):
        return "no string body"
    if properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "body is not valid base64"
    return None


class QoS(kombu_redis.QoS):
    """Records a message as unacknowledged and takes it off the in-flight list in one
    MULTI/EXEC, so the hand-over is atomic and costs no extra round trip."""

    channel: Channel

    def append(self, message: Any, delivery_tag: str) -> None:
        taken, self.channel._taken = self.channel._taken, None
        if taken is None:  # kombu's own fetch (several queues)
            super().append(message, delivery_tag)
            return
        inflight, item = taken
        info = message.delivery_info
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, dumps([message._raw, info["exchange"], info["routing_key"]]))
            pipe.lrem(inflight, 1, item)
            pipe.execute()
        # What kombu's append does after its own writes: the in-memory bookkeeping.
        super(kombu_redis.QoS, self).append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    """A Redis channel with reliable fetch for a single queue and malformed items dropped."""

    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handlers = {**self.handlers, "BRPOP": self._read_or_drop}
        self.consumer_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._reliable_queue: str | None = None
        self._taken: tuple[str, bytes] | None = None  # (in-flight list, item) until QoS.append
        self._inflight_queues: set[str] = set()
        self._sync_client: Any = None

    # --- one client per channel --------------------------------------------------

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """kombu builds a new ``redis.Redis`` around its pool for every ack and every
        unacked write (a fifth of the consumer's time in a profile); one per pool does."""
        if client:
            yield client
            return
        pool = self.pool
        cached = self._sync_client
        if cached is None or cached.connection_pool is not pool:
            cached = self._sync_client = self._create_client()
        yield cached

    # --- reliable fetch ------------------------------------------------------------

    def _register_inflight(self, queue: str) -> None:
        if queue in self._inflight_queues:
            return
        ttl = max(2.0, float(self.visibility_timeout))
        with self.conn_or_acquire() as client:
            client.set(keys.consumer_alive(self.consumer_id), 1, px=int(ttl * 1000))
            client.sadd(keys.inflight_consumers(queue), self.consumer_id)
        with _live_lock:
            _live[self.consumer_id] = ttl
        self._inflight_queues.add(queue)

    def _brpop_start(self, timeout: float | None = None) -> None:
        if len(self.active_queues) != 1 or len(self.priority_steps) != 1 or self.global_keyprefix:
            self._reliable_queue = None
            return super()._brpop_start(timeout)  # type: ignore[no-any-return]
        queues = self._queue_cycle.consume(1)
        if not queues:
            return None
        queue = queues[0]
        self._register_inflight(queue)
        self._reliable_queue = queue
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu's own use
        wait = self.brpop_timeout if timeout is None else timeout
        self.client.connection.send_command(
            "BLMOVE", queue, keys.inflight_list(queue, self.consumer_id), "RIGHT", "LEFT", wait or 0
        )
        return None

    def _brpop_read(self, **options: Any) -> bool:
        queue = self._reliable_queue
        if queue is None:
            return bool(super()._brpop_read(**options))
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if item is None:
                raise Empty()
            self._queue_cycle.rotate(queue)
            inflight = keys.inflight_list(queue, self.consumer_id)
            self._taken = (inflight, item)
            try:
                self.connection._deliver(loads(item.decode() if isinstance(item, bytes) else item), queue)
            except (ValueError, TypeError) as exc:  # not JSON: drop it (see _read_or_drop)
                log.error("dropped an item on the queue that is not a message: %r", exc)
            if self._taken is not None:  # dropped, not delivered: QoS.append did not take it off
                self._taken = None
                with self.conn_or_acquire() as client:
                    client.lrem(inflight, 1, item)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's own use
            self._reliable_queue = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def close(self) -> None:
        with _live_lock:
            _live.pop(self.consumer_id, None)
        super().close()

    # --- malformed items -------------------------------------------------------------

    def _read_or_drop(self, **options: Any) -> bool:
        try:
            return bool(self._brpop_read(**options))
        except (ValueError, TypeError) as exc:  # JSON/UTF-8 decoding; KeyError stays kombu's
            log.error("dropped an item on the queue that is not a message: %r", exc)
            return False


class Transport(kombu_redis.Transport):
    """Use with ``broker_transport='earnevents.worker.transport:Transport'``."""

    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        problem = envelope_problem(message)
        if problem is not None:
            log.error("dropped an item on queue %r that is not a message (%s): %.200r", queue, problem, message)
            return
        super()._deliver(message, queue)
