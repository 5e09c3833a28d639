"""The delay schedule: messages parked in Redis until due, then moved to the queue.

A delayed message lives in Redis, never in a worker's memory as a Celery ETA:

- ``scheduled`` (sorted set): message id -> due time (unix seconds);
- ``scheduled:messages`` (hash): message id -> the Celery message;
- ``scheduled:names`` (hash): message id -> event name, and one sorted set per
  event name, so pending events can be listed by name.

Relative delays are measured on Redis' own clock (TIME), so publishers and
workers with skewed clocks agree on when a message is due. Adding, moving and
cancelling are each one Lua script: with many workers each due message reaches
the queue exactly once, and a cancelled one never does.

Workers do not poll the schedule on a fixed beat: moving returns the earliest due
time left, and a script that adds a message due before every pending one
PUBLISHes its due time on ``keys.scheduled_wake_channel(queue)``, waking the
workers' schedulers (``worker.scheduler``) in time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import keys, message
from .entities import EntityRef
from .event import Event

MAX_DELAY = 10 * 365.25 * 86400
"""The furthest ahead an event may be scheduled, in seconds: 10 years (``delay`` or ``at``)."""

# Lua shared by the scripts that add to the schedule: before they write, the earliest due time
# pending (nil: none); after, a PUBLISH of the new due time on the wake channel when it comes
# before that one, so that sleeping schedulers wake for it (and only then: a publisher adding
# messages due later than the earliest wakes no one). pcall: a user whose ACL denies PUBLISH
# still schedules; the workers then find the message at their next recheck.
_HEAD = "local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]\n"
_WAKE = "if not head or tonumber(due) < tonumber(head) then redis.pcall('PUBLISH', KEYS[4], tostring(due)) end\n"

# KEYS: zset, messages, names, wake channel. ARGV: name-index prefix, "rel"|"abs"|"abs-new",
# seconds, then (id, name, message) triples. "abs-new" leaves an id that is pending already as it is.
ADD_SCRIPT = (
    """
local due = tonumber(ARGV[3])
if ARGV[2] == 'rel' then
  local t = redis.call('TIME')
  due = due + tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""
    + _HEAD
    + """
local only_new = ARGV[2] == 'abs-new'
local added = false
for i = 4, #ARGV, 3 do
  if not only_new or not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], due, ARGV[i])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', ARGV[1] .. ARGV[i + 1], due, ARGV[i])
    added = true
  end
end
if added then
"""
    + _WAKE
    + """
end
return tostring(due)
"""
)

# KEYS: zset, messages, names, queue list. ARGV: name-index prefix, most messages to move.
# Returns {how many were moved, Redis' time now, the earliest due time still pending or ""}
# (times as strings: Lua numbers reach redis-py as integers); with nothing due, the last is
# when to come back.
MOVE_DUE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
if not head or tonumber(head) > now then return {0, tostring(now), head or ''} end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local msg = redis.call('HGET', KEYS[2], id)
  if msg then redis.call('LPUSH', KEYS[4], msg) end
  local name = redis.call('HGET', KEYS[3], id)
  if name then redis.call('ZREM', ARGV[1] .. name, id) end
end
redis.call('ZREM', KEYS[1], unpack(ids))
redis.call('HDEL', KEYS[2], unpack(ids))
redis.call('HDEL', KEYS[3], unpack(ids))
head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
return {#ids, tostring(now), head or ''}
"""

# KEYS: zset, messages, names. ARGV: name-index prefix, id. Returns its due time (a string) if it
# was pending, else 0.
CANCEL_SCRIPT = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not due then return 0 end
redis.call('ZREM', KEYS[1], ARGV[2])
local name = redis.call('HGET', KEYS[3], ARGV[2])
if name then redis.call('ZREM', ARGV[1] .. name, ARGV[2]) end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return due
"""

# KEYS: zset, messages, names, wake channel. ARGV: name-index prefix, the due time the id must
# still have (as read before), the new due time, then one (id, name, message) triple. Returns 1
# if it was moved, 0 if the id is no longer pending at that due time (a write moved or cancelled
# it since).
RESCHEDULE_IF_SCRIPT = (
    """
local was = redis.call('ZSCORE', KEYS[1], ARGV[4])
if not was or tonumber(was) ~= tonumber(ARGV[2]) then return 0 end
local due = ARGV[3]
"""
    + _HEAD
    + """
local name = redis.call('HGET', KEYS[3], ARGV[4])
if name then redis.call('ZREM', ARGV[1] .. name, ARGV[4]) end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[6])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', ARGV[1] .. ARGV[5], ARGV[3], ARGV[4])
"""
    + _WAKE
    + """
return 1
"""
)


# KEYS: a rebuild's guard key (set when it began), the rebuilt marker set. ARGV: the member
# to add. Marks the rebuild done if the guard is still there, i.e. Redis did not lose its
# data (and what the rebuild had put back before then) while it ran. Returns 1 if marked.
MARK_REBUILT_SCRIPT = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""


def schedule_keys(queue: str) -> list[str]:
    return [keys.scheduled_zset(queue), keys.scheduled_payloads(queue), keys.scheduled_names(queue)]


def _adding_keys(queue: str) -> list[str]:
    """KEYS of the scripts that add to the schedule: :func:`schedule_keys` and the wake channel."""
    return [*schedule_keys(queue), keys.scheduled_wake_channel(queue)]


def add_args(
    queue: str,
    messages: Sequence[tuple[str, str, str]],
    *,
    delay: float | None = None,
    at: float | None = None,
    only_new: bool = False,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for :data:`ADD_SCRIPT`: park ``(id, event name, message)`` triples
    ``delay`` seconds from now (Redis' clock) or at unix time ``at``; with ``only_new``
    (``at`` only), ids already pending keep their time and message."""
    if (delay is None) == (at is None):
        raise ValueError("give exactly one of delay and at")
    if only_new and at is None:
        raise ValueError("only_new takes at, not delay")
    mode, when = ("rel", delay) if delay is not None else ("abs-new" if only_new else "abs", at)
    argv: list[Any] = [keys.scheduled_by_event(queue, ""), mode, repr(float(when))]  # type: ignore[arg-type]
    for triple in messages:
        argv.extend(triple)
    return _adding_keys(queue), argv


def move_args(queue: str, batch: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for :data:`MOVE_DUE_SCRIPT` (the wake channel is no key of it)."""
    return [*schedule_keys(queue), queue], [keys.scheduled_by_event(queue, ""), batch]


def reschedule_if_args(
    queue: str, triple: tuple[str, str, str], *, was: float, at: float
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for :data:`RESCHEDULE_IF_SCRIPT`: move the pending ``(id, event name,
    message)`` to unix time ``at`` with that message, if it is still due at ``was``."""
    return _adding_keys(queue), [keys.scheduled_by_event(queue, ""), repr(float(was)), repr(float(at)), *triple]


def cancel_args(queue: str, message_id: str) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for :data:`CANCEL_SCRIPT`."""
    return schedule_keys(queue), [keys.scheduled_by_event(queue, ""), message_id]


@dataclass(frozen=True)
class ScheduledEvent:
    """A message waiting in the schedule: a delayed event, or a handler's pending retry."""

    id: str
    """The message id; for a delayed event, the event's id (what ``cancel`` takes)."""
    event: Event
    due_at: dt.datetime
    handler: str | None
    """None: every handler of the event; else the one handler a retry is for."""
    attempt: int

    @property
    def entity(self) -> EntityRef | None:
        """For a model's scheduled event (``EventDefinition(date_field=...)``): the document
        it is for; None for other messages."""
        return self.event.entity_ref

    @classmethod
    def from_message(cls, message_id: str, payload: str | bytes, due: float) -> ScheduledEvent:
        event_wire, kwargs = message.parse(payload)
        return cls(
            id=message_id,
            event=Event.from_wire(event_wire),
            due_at=dt.datetime.fromtimestamp(due, dt.timezone.utc),
            handler=kwargs.get("handler"),
            attempt=int(kwargs.get("attempt") or 0),
        )
