"""kombu's Redis transport with two repairs: reliable fetch, and malformed items dropped.

**Reliable fetch.** kombu takes a message with BRPOP and only afterwards records it
as unacknowledged; a worker killed in between (the reply can sit unread in its
socket for milliseconds) loses the message for good. Here a consumer of a single
queue takes messages with ``BLMOVE queue -> in-flight list``, which is atomic,
and removes a message from its in-flight list only once kombu has recorded it
as unacknowledged. Every consumer registers its in-flight list and keeps an
"alive" key fresh; live workers return the in-flight lists of consumers whose key
expired to the queue (``worker.consumers``). A worker consuming several queues
falls back to kombu's BRPOP.

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
When the channel stops fetching (its consumer is cancelled, it consumes several
queues, it closes) the buffer is flushed at once.

**Closing.** A channel closing with a fetch in flight (warm shutdown, reconnect)
reads the reply of the command it sent, so kombu's close hands back what it took
as unacknowledged messages; it then returns its in-flight list to the queue. Each
of these steps is logged if it fails, and kombu's own close steps always run.

**Refused items.** Plain kombu and Celery trust queue items: one that is not a
valid message stops the worker ("Unrecoverable error"), loops it, or holds a
prefetch slot for good. Every item is checked first (:func:`.items.check`, the
size before anything is parsed); a refused one is logged once, acknowledged
(forgotten as unacknowledged and taken off the in-flight list) and filed in the
queue's dead-letter list (:mod:`earnevents.deadletters`), in one transaction.
Should kombu or Celery still raise while taking a checked message, or reject
one without requeueing it, the same happens: nothing holds a slot, nothing is
dropped silently. A message is always handled, and recorded as unacknowledged,
as the queue it was taken from.
"""

from __future__ import annotations

import hashlib
import math
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
from kombu.transport import virtual as kombu_virtual
from kombu.utils.json import dumps

from .. import deadletters, keys
from ..config import DEFAULTS
from ..logtext import get_logger
from ..redisurl import UNIX_SOCKET_OPTION
from ..sentinelconn import PrimaryConnection
from . import consumers, items
from .clock import RedisClock

log = get_logger(__name__)

IDLE_WAIT = 5.0
"""Seconds a consumer's BLMOVE blocks on an empty queue before it is sent again (kombu's BRPOP:
1 s): an idle worker's fetch loop wakes, and sends Redis a command, once per IDLE_WAIT. A message
pushed meanwhile ends it at once; a channel closing ends it with CLIENT UNBLOCK."""


# KEYS: queue, unacked hash, unacked index, this consumer's in-flight list. ARGV: how many
# to take, the maximum message size, the visibility stamp (Redis' time as the channel's
# RedisClock carries it), then delivery tags to acknowledge. Returns {item, delivery tag or
# ""} pairs: "" when the item is not a message this script can record; it then goes to the
# in-flight list, as BLMOVE would put it (refused, or recorded by QoS.append, it is taken off
# there; if the worker dies first, it goes back to the queue). An item over the size limit is
# never looked into. A message is recorded under the queue it was taken from (kombu's restore
# pushes it back there).
#
# The tag is read without decoding the item when the key "delivery_tag" occurs in it once
# (every message kombu or earnevents writes): a quote inside a JSON string is escaped, so
# that one occurrence followed by a colon is the only object key of that name, and its value
# is taken only if it is a plain string (no escapes). Any other item is decoded as before.
# The consumer checks every item in full anyway (items.check); one whose decoded tag is not
# the one recorded (a crafted item: a decoy key, the real one spelled with escapes) it records
# again under its own (Channel._unrecord). Decoding here cost Redis ~20 us a message.
#
# A tag that already has a record (the same item pushed twice, by a foreign publisher or an
# attacker) is never overwritten: the item goes to the in-flight list with no tag, and QoS.append
# records it under a new one (RECORD). Two items sharing a record would share its fate: the
# first acknowledgement would erase the record of the other, lost if its worker then died.
FETCH = """
for i = 4, #ARGV do
  redis.call('ZREM', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
local want = tonumber(ARGV[1])
if want < 1 then return {} end
local items = redis.call('RPOP', KEYS[1], want)
if not items then return {} end
local limit, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local tail = ',"",' .. cjson.encode(KEYS[1]) .. ']'
local function decoded_tag(item)
  local ok, m = pcall(cjson.decode, item)
  local props = ok and type(m) == 'table' and m.properties
  local info = type(props) == 'table' and props.delivery_info
  if type(info) == 'table' and type(props.delivery_tag) == 'string'
      and type(info.exchange) == 'string' and type(info.routing_key) == 'string' then
    return props.delivery_tag
  end
  return ''
end
local function tag_of(item)
  local at = string.find(item, '"delivery_tag"', 1, true)
  if at and not string.find(item, '"delivery_tag"', at + 14, true) then
    local tag = string.match(item, '^"delivery_tag"%s*:%s*"([^"\\\\]+)"', at)
    if tag then return tag end
  end
  return decoded_tag(item)
end
local out = {}
for _, item in ipairs(items) do
  local tag = ''
  if #item <= limit then
    tag = tag_of(item)
    if tag ~= '' then
      if redis.call('HSETNX', KEYS[2], tag, '[' .. item .. tail) == 1 then
        redis.call('ZADD', KEYS[3], now, tag)
      else
        tag = ''
      end
    end
  end
  if tag == '' then redis.call('LPUSH', KEYS[4], item) end
  out[#out + 1] = item
  out[#out + 1] = tag
end
return out
"""

FETCH_SHA = hashlib.sha1(FETCH.encode()).hexdigest()
"""FETCH is sent by this digest (EVALSHA), not as its 1.6 KB of text on every fetch (which
Redis also hashes each time; measured, the script's own work dominates its Redis CPU). A Redis
that does not know it (a restart, SCRIPT FLUSH) answers NOSCRIPT: the script is loaded and
the fetch sent again."""

FETCH_MAX = 64
"""At most this many messages per fetch (fewer when the prefetch limit is lower)."""

# KEYS: unacked hash, unacked index[, in-flight list, queue]. ARGV: delivery tag, record, stamp[,
# item]. Records a message as unacknowledged unless its tag already has a record (returns -1:
# nothing written); with the in-flight list, also takes the item off it and returns the queue's
# length (whether the next fetch may find more), else 0.
RECORD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if #KEYS < 4 then return 0 end
redis.call('LREM', KEYS[3], 1, ARGV[4])
return redis.call('LLEN', KEYS[4])
"""
RECORD_SHA = hashlib.sha1(RECORD.encode()).hexdigest()

_RECORDED = ("", b"")
"""``Channel._taken`` for a message the fetch script already recorded as unacknowledged."""


class QoS(kombu_redis.QoS):
    """Records a message as unacknowledged and takes it off the in-flight list in one
    MULTI/EXEC, so the hand-over is atomic and costs no extra round trip."""

    channel: Channel

    def append(self, message: Any, delivery_tag: str) -> None:
        taken, self.channel._taken = self.channel._taken, None
        if taken is _RECORDED:  # FETCH recorded it: only kombu's in-memory bookkeeping
            super(kombu_redis.QoS, self).append(message, delivery_tag)
            return
        # Not recorded yet: taken by BLMOVE (in the in-flight list), by kombu's own fetch (several
        # queues, ``taken`` None), or left unrecorded by FETCH. One MULTI-like script records it,
        # stamped on Redis' clock, and takes it off the in-flight list.
        info = message.delivery_info  # the consuming queue's (items.check set it), as FETCH records
        script_keys = [self.unacked_key, self.unacked_index_key]
        extra: list[Any] = []
        if taken is not None:
            inflight, item = taken
            script_keys += [inflight, info["routing_key"]]
            extra = [item]
        while True:
            record = dumps([message._raw, info["exchange"], info["routing_key"]])
            left = self.channel._record(script_keys, [delivery_tag, record, self.channel.clock.now(), *extra])
            if left >= 0:
                break
            # Its tag names another record (a copy of a message someone holds): a tag of its own,
            # so that neither acknowledgement can erase the other's record.
            delivery_tag = str(uuid.uuid4())
            message.delivery_tag = message.properties["delivery_tag"] = delivery_tag
            log.warning(
                "message %r on queue %r shares its delivery tag with another unacknowledged one; "
                "recorded under a new tag %r",
                (message.headers or {}).get("id"),
                info["routing_key"],
                delivery_tag,
            )
        if taken is not None:
            self.channel._left = left
        # What kombu's append does after its own writes: the in-memory bookkeeping.
        super(kombu_redis.QoS, self).append(message, delivery_tag)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """Give back the messages unacknowledged for ``visibility_timeout`` on Redis' clock,
        as kombu does on the local one (which may be skewed against the stamping worker's)."""
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):  # kombu's throttle: every interval-th call
            return
        with self.channel.conn_or_acquire() as client:
            older_than = self.channel.clock.now() - self.visibility_timeout
            # Nothing past the timeout (the usual case): no need to take the mutex (three more
            # commands every sweep). One that ages past it right after this is found by the next sweep.
            if not client.zcount(self.unacked_index_key, "-inf", older_than):
                return
            try:
                with kombu_redis.Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    limit = {"offset": start, "num": num} if num else {}  # kombu's unacked_restore_limit
                    due = client.zrange(self.unacked_index_key, older_than, 0, desc=True, byscore=True, **limit)
                    for tag in due:
                        self.restore_by_tag(tag, client)
            except kombu_redis.MutexHeld:  # another worker is restoring
                pass

    def ack(self, delivery_tag: str) -> None:
        if self.channel._buffer_ack(delivery_tag):  # sent with the next fetch
            super(kombu_redis.QoS, self).ack(delivery_tag)
        else:
            super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """kombu's reject; one without requeue (Celery refusing a message it took: unknown
        task, invalid message, undecodable body) also files the message as a dead letter."""
        message = self._delivered.get(delivery_tag) if not requeue else None
        if message is None:
            super().reject(delivery_tag, requeue=requeue)
            return
        queue = (message.delivery_info or {}).get("routing_key") or ""
        task_id = (message.headers or {}).get("id")
        reason = "rejected by the worker without requeueing (see its log)"
        self.channel._drop(
            dumps(message._raw), queue, reason, task_id if isinstance(task_id, str) else None, recorded=delivery_tag
        )
        self.ack_in_memory(delivery_tag)

    def ack_in_memory(self, delivery_tag: str) -> None:
        """kombu's in-memory part of an acknowledgement (frees the prefetch slot)."""
        super(kombu_redis.QoS, self).ack(delivery_tag)


class CheckedMessage(kombu_virtual.Message):
    """kombu's message, built from what :func:`.items.check_decoded` already decoded: the
    body it base64-decoded and its JSON (``Message.decode()`` returns that, as Celery asks
    for it), instead of decoding both again, and the events it carries (``events``). Any
    other payload is built as kombu builds it (``events`` None)."""

    events: tuple[Any, ...] | None = None

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        checked = getattr(channel, "_checked", None)
        if checked is None or checked.message is not payload or checked.body is None:
            super().__init__(payload, channel=channel, **kwargs)
            return
        super().__init__({**payload, "body": ""}, channel=channel, **kwargs)  # "": nothing to decode
        self._raw = payload
        self.body = checked.body
        self._decoded_cache = checked.decoded
        self.events = checked.events


class Channel(kombu_redis.Channel):
    """A Redis channel with reliable fetch for a single queue and malformed items dropped."""

    QoS = QoS
    Message = CheckedMessage

    max_message_size = int(DEFAULTS["EARNEVENTS_MAX_MESSAGE_SIZE"])
    """Larger queue items are refused unparsed (transport option ``max_message_size``)."""
    dead_letter_max = int(DEFAULTS["EARNEVENTS_DEAD_LETTER_MAX"])
    """Dead letters kept per queue (transport option ``dead_letter_max``)."""
    from_transport_options = (  # type: ignore[assignment]  # kombu types it as its exact tuple
        *kombu_redis.Channel.from_transport_options,
        "max_message_size",
        "dead_letter_max",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handlers = {**self.handlers, "BRPOP": self._read_or_drop}
        self.consumer_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._reliable_queue: str | None = None
        self._taken: tuple[str, bytes | str] | None = None  # (in-flight list, item) until QoS.append
        self._checked: items.Checked | None = None  # the message being delivered (CheckedMessage)
        self._left: int | None = None  # the queue's length when QoS.append recorded a BLMOVE's message
        self._inflight_queues: frozenset[str] = frozenset()
        self._registered_at = float("-inf")  # time.monotonic() of the last registration
        self._sent: str | None = None  # the fetch command whose reply is awaited
        self._blmove_client: tuple[Any, int | None] | None = None  # (socket, CLIENT ID) of the BLMOVE connection
        self.clock = RedisClock(self._redis_time)  # for visibility stamps (QoS)
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
        """List this consumer for ``queue``'s orphan sweep and mark it alive, unless that was
        done less than a quarter of the TTL ago. Called before each BLMOVE: a worker that
        stalled longer than the TTL was swept as dead, and must be listed again before it
        takes anything into its in-flight list (a BLMOVE ends well within the TTL)."""
        ttl = self._alive_ttl()
        now = time.monotonic()
        if queue in self._inflight_queues and now - self._registered_at < ttl / 4:
            return
        registration = consumers.Registration(ttl, self._inflight_queues | {queue})
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            consumers.register(pipe, self.consumer_id, registration)
            pipe.execute()
        consumers.remember(self.consumer_id, registration)
        self._inflight_queues = registration.queues
        self._registered_at = now

    def _alive_ttl(self) -> float:
        """Seconds this consumer's alive key lives unless refreshed."""
        return max(2.0, float(self.visibility_timeout))

    def _redis_time(self) -> tuple[int, int]:
        with self.conn_or_acquire() as client:
            return client.time()  # type: ignore[no-any-return]

    def _buffer_ack(self, delivery_tag: str) -> bool:
        """Keep ``delivery_tag``'s acknowledgement for the next FETCH; False: ack it now."""
        with self._acks_lock:
            if not self._fast:
                return False
            self._acks.append(delivery_tag)
            return True

    def _flush_acks(self) -> None:
        """Acknowledge the buffered tags now (before blocking, and when fetching stops);
        on failure they stay buffered for the next flush, and the error is raised."""
        with self._acks_lock:
            self._fast = False
            tags, self._acks = self._acks, []
        if not tags:
            return
        try:
            self._forget_unacked(tags)
        except BaseException:
            with self._acks_lock:
                self._acks[:0] = tags
            raise

    def _stop_fast_fetch(self) -> None:
        """No fetch will carry the buffered acknowledgements (consumer cancelled, several
        queues, closing): send them now, and acknowledge directly from now on."""
        try:
            self._flush_acks()
        except Exception:  # Redis gone: kept for the next flush; else redelivered and skipped
            log.warning("could not send %d buffered acknowledgement(s)", len(self._acks), exc_info=True)

    def _single_queue(self) -> bool:
        """Whether the channel fetches with FETCH/BLMOVE (else kombu's BRPOP)."""
        return len(self.active_queues) == 1 and len(self.priority_steps) == 1 and not self.global_keyprefix

    def _record(self, script_keys: list[str], args: list[Any]) -> int:
        """Run :data:`RECORD` (by its digest; loaded first if Redis does not know it)."""
        with self.conn_or_acquire() as client:
            try:
                return int(client.evalsha(RECORD_SHA, len(script_keys), *script_keys, *args))
            except redis.exceptions.NoScriptError:
                return int(client.eval(RECORD, len(script_keys), *script_keys, *args))

    def _forget_unacked(self, tags: list[str]) -> None:
        """Remove ``tags`` from kombu's unacknowledged records (what an ack does)."""
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            pipe.zrem(self.unacked_index_key, *tags)
            pipe.hdel(self.unacked_key, *tags)
            pipe.execute()

    def _deliver_item(self, item: bytes | str, queue: str, *, recorded: str = "", inflight: str | None = None) -> bool:
        """Check a queue item and hand it to kombu, or refuse it (see :meth:`_drop`).

        ``recorded``: the delivery tag FETCH recorded it under as unacknowledged;
        ``inflight``: the in-flight list BLMOVE put it in. True: delivered.
        """
        result = items.check_decoded(item, queue, int(self.max_message_size))
        if isinstance(result, items.Refused):
            self._drop(item, queue, result.reason, result.task_id, recorded=recorded, inflight=inflight)
            return False
        checked = result.message
        tag = checked["properties"]["delivery_tag"]
        if recorded and recorded != tag:  # FETCH read another "delivery_tag" key (a crafted item)
            inflight, recorded = self._unrecord(item, queue, recorded), ""
        self._taken = _RECORDED if recorded else (inflight, item) if inflight is not None else None
        self._checked = result
        try:
            self.connection._deliver_checked(checked, queue)
            return True
        except self.connection_errors:
            raise
        except Exception as exc:
            # kombu or Celery choked on a checked message: acknowledge it (free its slot) and
            # keep it, rather than let it stop, loop or stall the worker.
            reason = f"the worker could not take it: {exc!r}"
            if self._taken is not None:  # before QoS.append: not recorded by kombu yet
                self._drop(item, queue, reason, checked["headers"]["id"], recorded=recorded, inflight=inflight)
            elif tag in self.qos._delivered and tag not in self.qos._dirty:
                self._drop(item, queue, reason, checked["headers"]["id"], recorded=tag)
                self.qos.ack_in_memory(tag)
            else:  # already acknowledged or rejected by the consumer
                log.error("error after taking message %r from %r: %r", tag, queue, exc, exc_info=True)
            return False
        finally:
            self._taken = None
            self._checked = None

    def _unrecord(self, item: bytes | str, queue: str, recorded: str) -> str:
        """Move an item FETCH recorded under a tag that is not its own to the in-flight list,
        as BLMOVE would have put it (one transaction), for QoS.append to record it by its
        own tag. Returns the in-flight list."""
        self._register_inflight(queue)
        inflight = keys.inflight_list(queue, self.consumer_id)
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=True)
            pipe.zrem(self.unacked_index_key, recorded)
            pipe.hdel(self.unacked_key, recorded)
            pipe.lpush(inflight, item)
            pipe.execute()
        return inflight

    def _drop(
        self,
        item: bytes | str,
        queue: str,
        reason: str,
        task_id: str | None = None,
        *,
        recorded: str = "",
        inflight: str | None = None,
    ) -> None:
        """Refuse a queue item: log it once and, in one transaction, file it as a dead
        letter, forget its unacknowledged record and take it off the in-flight list."""
        dead = deadletters.DeadItem.new(item, queue, reason, task_id)
        log.error(
            "dropped an item on queue %r (%r): task id %r, %d bytes; kept as dead item %s",
            queue,
            reason,
            task_id,
            dead.size,
            dead.id,
        )
        script_keys, argv = deadletters.add_args(dead, int(self.dead_letter_max))
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=True)
            pipe.eval(deadletters.ADD_SCRIPT, len(script_keys), *script_keys, *argv)
            if recorded:
                pipe.zrem(self.unacked_index_key, recorded)
                pipe.hdel(self.unacked_key, recorded)
            if inflight is not None:
                pipe.lrem(inflight, 1, item)
            pipe.execute()

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self._single_queue():
            self._reliable_queue = None
            self._flush_acks()
            return super()._brpop_start(timeout)  # type: ignore[no-any-return]
        queues = self._queue_cycle.consume(1)
        if not queues:
            return None
        queue = queues[0]
        self._reliable_queue = queue
        connection = self.client.connection
        if self._fast:
            want = self.qos.can_consume_max_estimate()
            want = FETCH_MAX if want is None else max(1, min(FETCH_MAX, want))
            stamp = repr(self.clock.now())  # before the acks are taken: it may read Redis' clock
            with self._acks_lock:
                self._acks_sent, self._acks = self._acks, []
            connection.send_command(
                "EVALSHA",
                FETCH_SHA,
                4,
                queue,
                self.unacked_key,
                self.unacked_index_key,
                keys.inflight_list(queue, self.consumer_id),
                want,
                int(self.max_message_size),
                stamp,
                *self._acks_sent,
            )
            self._sent = "EVAL"
        else:
            self._flush_acks()
            self._register_inflight(queue)
            wait = max(self.brpop_timeout or 0, IDLE_WAIT) if timeout is None else timeout
            # Never block past half the alive TTL (a long polling_interval would): the move must
            # land while this consumer is surely listed and alive, or the sweep could miss it.
            wait = min(wait or math.inf, self._alive_ttl() / 2)
            self._learn_client_id(connection)
            connection.send_command("BLMOVE", queue, keys.inflight_list(queue, self.consumer_id), "RIGHT", "LEFT", wait)
            self._sent = "BLMOVE"
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu's own use
        return None

    def _brpop_read(self, **options: Any) -> bool:
        queue, sent = self._reliable_queue, self._sent
        if queue is None:
            return self._read_popped(**options)
        try:
            # The command sent decides, not ``_fast``: a cancel or close may have changed it since.
            if sent == "EVAL":
                return self._read_fetched(queue, **options)
            return self._read_moved(queue, **options)
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's own use
            self._reliable_queue = None
            self._sent = None
            self._taken = None  # never left over for a later delivery, even after an error
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()
            if not self._single_queue():  # e.g. cancelled while the fetch was in flight
                self._stop_fast_fetch()

    def _read_popped(self, **options: Any) -> bool:
        """kombu's BRPOP read (several queues), with the item checked like the others."""
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not reply:
                raise Empty()
            dest, item = reply
            queue = (dest.decode() if isinstance(dest, bytes) else dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            self._deliver_item(item, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's own use
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
        except self.ResponseError as exc:
            if isinstance(exc, redis.exceptions.NoScriptError):  # Redis restarted or flushed its scripts: load it again
                with self._acks_lock:  # the script did not run: its acks go with the next fetch
                    self._acks[:0] = self._acks_sent
                with self.conn_or_acquire() as client:
                    client.script_load(FETCH)
                return False
            # e.g. Redis < 6.2 (no RPOP count): kombu's way from now on
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
        inflight = keys.inflight_list(queue, self.consumer_id)
        for item, tag in zip(reply[::2], reply[1::2], strict=True):
            if tag:
                self._deliver_item(item, queue, recorded=tag.decode() if isinstance(tag, bytes) else tag)
            else:  # not recordable by the script: in the in-flight list, as after BLMOVE
                self._deliver_item(item, queue, inflight=inflight)
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
        self._left = None
        self._deliver_item(item, queue, inflight=keys.inflight_list(queue, self.consumer_id))
        # FETCH next if the queue had more when this message was recorded (or if that is not
        # known); else block again at once: a FETCH finding the queue empty would cost a round
        # trip and a script per message when messages come one at a time.
        more = self._left is None or self._left > 0
        with self._acks_lock:
            self._fast = more and not self._fast_unavailable
        return True

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        """kombu's restore, under a new delivery tag. A worker that stalled past the
        visibility timeout and then acknowledges its copy must not erase the record of
        the worker that took the restored one (kombu reuses the tag for both)."""
        properties = payload.get("properties") if isinstance(payload, dict) else None
        if isinstance(properties, dict):
            properties["delivery_tag"] = str(uuid.uuid4())
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)

    def _basic_cancel(self, consumer_tag: str) -> Any:
        try:
            return super()._basic_cancel(consumer_tag)
        finally:
            self._stop_fast_fetch()  # e.g. `celery control cancel_consumer`

    def close(self) -> None:
        """Hand back what the channel holds, then kombu's close (always, whatever failed)."""
        consumers.forget(self.consumer_id)
        try:
            if not self.closed:
                self._closing = True
                self._finish_fetch()
                self._stop_fast_fetch()
                self._hand_back_inflight()
        finally:
            super().close()

    def _learn_client_id(self, connection: Any) -> None:
        """Remember the CLIENT ID of ``connection`` (once per socket), for :meth:`_unblock`."""
        if connection._sock is None:
            connection.connect()
        if self._blmove_client is None or self._blmove_client[0] is not connection._sock:
            connection.send_command("CLIENT", "ID")
            try:
                client_id = int(connection.read_response())
            except redis.ResponseError:  # an ACL or a renamed command: closes wait for the reply
                client_id = None
            self._blmove_client = (connection._sock, client_id)

    def _unblock(self) -> None:
        """End the BLMOVE in flight now (it replies nil, or what it took just before): a close
        need not wait up to IDLE_WAIT for it. If Redis refuses (an ACL without CLIENT UNBLOCK),
        the reply comes within IDLE_WAIT anyway."""
        blocked, connection = self._blmove_client, self._in_poll
        if blocked is None or blocked[1] is None or getattr(connection, "_sock", None) is not blocked[0]:
            return
        try:
            with self.conn_or_acquire() as client:
                client.execute_command("CLIENT", "UNBLOCK", blocked[1])
        except Exception:
            log.debug("could not end the BLMOVE in flight at close; waiting for its reply", exc_info=True)

    def _finish_fetch(self) -> None:
        """Read the reply of the fetch in flight, if any: what it took reaches kombu as
        delivered (or, with no consumer left, rejected) messages, which its close restores."""
        if not self._in_poll:
            return
        try:
            if self._sent == "BLMOVE":
                self._unblock()
            self._brpop_read()
        except Empty:
            pass
        except Exception:  # e.g. the connection broke: what FETCH took is recorded as unacked
            log.warning("could not read the reply of the fetch in flight at close", exc_info=True)
        finally:
            self._in_poll = None  # type: ignore[assignment]  # never read again by kombu's close

    def _hand_back_inflight(self) -> None:
        """Return this consumer's in-flight lists to their queues at once, rather than after
        its alive key expires: a message there was taken but never reached kombu."""
        if not self._inflight_queues:
            return
        try:
            with self.conn_or_acquire() as client:
                returned = consumers.hand_back(client, self.consumer_id, self._inflight_queues)
        except Exception:  # Redis gone: the orphan sweep returns them once the alive key expires
            log.warning("could not return the in-flight messages at close", exc_info=True)
            return
        if returned:
            log.info("returned %d in-flight message(s) to the queue at close", returned)

    # --- refused items -------------------------------------------------------------

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
        """Messages that did not come through :func:`.items.check` (kombu's fanout
        channels): a malformed one is logged and dropped, never fatal."""
        problem = items.envelope_problem(message)
        if problem is not None:
            log.error("dropped an item on queue %r that is not a message (%s): %.200r", queue, problem, message)
            return
        super()._deliver(message, queue)

    def _deliver_checked(self, message: dict[str, Any], queue: str) -> None:
        """Hand a message :func:`.items.check` accepted to its consumer."""
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

    from_transport_options = (  # type: ignore[assignment]  # both bases' options: the sentinel ones and ours
        *Channel.from_transport_options,
        *(o for o in kombu_redis.SentinelChannel.from_transport_options if o not in Channel.from_transport_options),
    )
    connection_class = PrimaryConnection  # follows a failover on NOREPLICAS too (sentinelconn)


class SentinelTransport(Transport):
    """earnevents' transport through Redis Sentinel (``sentinel://h:p;sentinel://h2:p2``)."""

    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port  # type: ignore[assignment]
