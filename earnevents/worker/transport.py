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

**Fast fetch.** While the queue has messages, a consumer takes them with one Lua
script per round trip (:data:`FETCH`): it pops as many as the prefetch limit
allows, records them as unacknowledged in the same atomic step (no in-flight
list needed), and applies the acknowledgements buffered since the last fetch.
kombu spends two synchronous round trips per message on that bookkeeping (one
to record it, one to acknowledge it); here the consumer thread never waits on
Redis while messages flow. When the script finds the queue empty the consumer
flushes its buffered acknowledgements and blocks in ``BLMOVE`` as above.
An acknowledgement sits in the buffer at most until the next fetch; a worker
killed in that moment leaves the message to be redelivered after the visibility
timeout, where the completion records (``worker.completions``) skip its handlers.

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

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps, loads

from .. import keys
from ..redisurl import UNIX_SOCKET_OPTION

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


# KEYS: queue, unacked hash, unacked index. ARGV: how many to take, then delivery tags
# to acknowledge. Returns {item, delivery tag or ""} pairs: "" when the item is not a
# message this script can record (kombu's own append then records it, or it is dropped).
FETCH = """
for i = 2, #ARGV do
  redis.call('ZREM', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
local want = tonumber(ARGV[1])
if want < 1 then return {} end
local items = redis.call('RPOP', KEYS[1], want)
if not items then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for _, item in ipairs(items) do
  local tag = ''
  local ok, m = pcall(cjson.decode, item)
  local props = ok and type(m) == 'table' and m.properties
  local info = type(props) == 'table' and props.delivery_info
  if type(info) == 'table' and type(props.delivery_tag) == 'string'
      and type(info.exchange) == 'string' and type(info.routing_key) == 'string' then
    tag = props.delivery_tag
    redis.call('HSET', KEYS[2], tag,
      '[' .. item .. ',' .. cjson.encode(info.exchange) .. ',' .. cjson.encode(info.routing_key) .. ']')
    redis.call('ZADD', KEYS[3], now, tag)
  end
  out[#out + 1] = item
  out[#out + 1] = tag
end
return out
"""

FETCH_MAX = 64
"""At most this many messages per fetch (fewer when the prefetch limit is lower)."""

_RECORDED = ("", b"")
"""``Channel._taken`` for a message the fetch script already recorded as unacknowledged."""


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
        if taken is None:  # kombu's own fetch (several queues), or not recordable by FETCH
            super().append(message, delivery_tag)
            return
        if taken is _RECORDED:  # FETCH recorded it: only kombu's in-memory bookkeeping
            super(kombu_redis.QoS, self).append(message, delivery_tag)
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

    def ack(self, delivery_tag: str) -> None:
        if self.channel._buffer_ack(delivery_tag):  # sent with the next fetch
            super(kombu_redis.QoS, self).ack(delivery_tag)
        else:
            super().ack(delivery_tag)


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
        self._fast = False  # True: the next fetch is FETCH (the queue had messages)
        self._acks: list[str] = []  # acknowledgements waiting for the next FETCH
        self._acks_sent: list[str] = []  # those carried by the FETCH in flight
        self._acks_lock = threading.Lock()  # acks come from pool threads with -P threads
        self._fast_unavailable = False

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

    def _buffer_ack(self, delivery_tag: str) -> bool:
        """Keep ``delivery_tag``'s acknowledgement for the next FETCH; False: ack it now."""
        with self._acks_lock:
            if not self._fast:
                return False
            self._acks.append(delivery_tag)
            return True

    def _flush_acks(self) -> None:
        """Acknowledge the buffered tags now (before blocking, and on close)."""
        with self._acks_lock:
            self._fast = False
            tags, self._acks = self._acks, []
        if tags:
            self._forget_unacked(tags)

    def _forget_unacked(self, tags: list[str]) -> None:
        """Remove ``tags`` from kombu's unacknowledged records (what an ack does)."""
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            pipe.zrem(self.unacked_index_key, *tags)
            pipe.hdel(self.unacked_key, *tags)
            pipe.execute()

    def _deliver_item(self, item: bytes | str, queue: str) -> None:
        """Hand a queue item to kombu; one that is not JSON is logged and dropped."""
        try:
            self.connection._deliver(loads(item.decode() if isinstance(item, bytes) else item), queue)
        except (ValueError, TypeError) as exc:  # not JSON: drop it (see _read_or_drop)
            log.error("dropped an item on the queue that is not a message: %r", exc)

    def _brpop_start(self, timeout: float | None = None) -> None:
        if len(self.active_queues) != 1 or len(self.priority_steps) != 1 or self.global_keyprefix:
            self._reliable_queue = None
            self._flush_acks()
            return super()._brpop_start(timeout)  # type: ignore[no-any-return]
        queues = self._queue_cycle.consume(1)
        if not queues:
            return None
        queue = queues[0]
        self._register_inflight(queue)
        self._reliable_queue = queue
        connection = self.client.connection
        if self._fast:
            want = self.qos.can_consume_max_estimate()
            want = FETCH_MAX if want is None else max(1, min(FETCH_MAX, want))
            with self._acks_lock:
                self._acks_sent, self._acks = self._acks, []
            connection.send_command(
                "EVAL", FETCH, 3, queue, self.unacked_key, self.unacked_index_key, want, *self._acks_sent
            )
        else:
            self._flush_acks()
            wait = self.brpop_timeout if timeout is None else timeout
            connection.send_command(
                "BLMOVE", queue, keys.inflight_list(queue, self.consumer_id), "RIGHT", "LEFT", wait or 0
            )
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu's own use
        return None

    def _brpop_read(self, **options: Any) -> bool:
        queue = self._reliable_queue
        if queue is None:
            return bool(super()._brpop_read(**options))
        try:
            if self._fast:
                return self._read_fetched(queue, **options)
            return self._read_moved(queue, **options)
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's own use
            self._reliable_queue = None
            self._taken = None  # never left over for a later delivery, even after an error
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _read_fetched(self, queue: str, **options: Any) -> bool:
        """The reply of FETCH: up to ``want`` messages, already recorded as unacknowledged."""
        try:
            reply = self.client.parse_response(self.client.connection, "EVAL", **options)
        except self.connection_errors:
            self.client.connection.disconnect()
            raise  # the carried acks are lost: those messages come back and are skipped
        except self.ResponseError as exc:  # e.g. Redis < 6.2 (no RPOP count): kombu's way from now on
            log.warning("fast fetch unavailable (%s); taking one message per round trip", exc)
            with self._acks_lock:  # the script did not run: its acks go out before the next BLMOVE
                self._acks[:0] = self._acks_sent
                self._fast = False
                self._fast_unavailable = True
            return False
        finally:
            self._acks_sent = []
        if not reply:
            with self._acks_lock:
                self._fast = False  # empty: block in BLMOVE next (after flushing acks)
            raise Empty()
        self._queue_cycle.rotate(queue)
        for item, tag in zip(reply[::2], reply[1::2], strict=True):
            self._taken = _RECORDED if tag else None
            self._deliver_item(item, queue)
            if self._taken is not None and tag:  # recorded, then dropped as malformed
                self._forget_unacked([tag])
            self._taken = None
        return True

    def _read_moved(self, queue: str, **options: Any) -> bool:
        """The reply of BLMOVE: one message, in this consumer's in-flight list."""
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
        self._deliver_item(item, queue)
        if self._taken is not None:  # dropped, not delivered: QoS.append did not take it off
            self._taken = None
            with self.conn_or_acquire() as client:
                client.lrem(inflight, 1, item)
        with self._acks_lock:
            self._fast = not self._fast_unavailable  # the queue had a message: try FETCH next
        return True

    def close(self) -> None:
        with _live_lock:
            _live.pop(self.consumer_id, None)
        try:
            self._flush_acks()
        except Exception:  # Redis gone: those messages come back and are skipped
            log.warning("could not send buffered acknowledgements at close", exc_info=True)
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


# --- other ways to reach Redis (earnevents.redisurl.broker picks the transport) ----------


class UnixSocketChannel(Channel):
    """:class:`Channel` over a Unix socket named by the ``earnevents_unix_socket`` option."""

    connection_class = redis.UnixDomainSocketConnection  # type: ignore[assignment]

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = super()._connparams(asynchronous)
        for tcp_only in ("host", "port", "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options"):
            params.pop(tcp_only, None)
        params["path"] = self.connection.client.transport_options[UNIX_SOCKET_OPTION]
        return params


class UnixSocketTransport(Transport):
    """earnevents' transport to a Redis on a Unix socket (``unix:///path?db=N``)."""

    Channel = UnixSocketChannel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """:class:`Channel` (reliable fetch, malformed items dropped) on the primary that Redis
    Sentinel names: kombu's sentinel channel supplies the connection pool."""


class SentinelTransport(Transport):
    """earnevents' transport through Redis Sentinel (``sentinel://h:p;sentinel://h2:p2``)."""

    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port  # type: ignore[assignment]
