"""This process' reliable-fetch consumers, and the return of dead consumers' messages.

A consumer blocking in ``BLMOVE`` (``worker.transport``) keeps the message it took
in an in-flight list of its own until kombu has recorded it as unacknowledged. It
is listed in its queue's consumers set and keeps an "alive" key fresh: the channel
before a ``BLMOVE`` when its last registration is older than a quarter of the TTL,
the keep-alive thread every few seconds; a ``BLMOVE`` blocks at most half the TTL, so
a message only lands in the list while its consumer is listed and alive. When the key
expires (the process died, or stalled longer than the TTL) any live worker returns the
list to the queue and drops the consumer from the set (:data:`RETURN_ORPHANS`); a
stalled consumer that comes back registers again before it takes anything more. A
closing channel returns its own list at once (:func:`hand_back`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import keys


@dataclass(frozen=True)
class Registration:
    """A consumer's alive-key TTL (seconds) and the queues it has in-flight lists for."""

    ttl: float
    queues: frozenset[str]


_lock = threading.Lock()
_live: dict[str, Registration] = {}


def live_consumers() -> dict[str, Registration]:
    """Consumer id -> registration, for every open consumer of this process."""
    with _lock:
        return dict(_live)


def remember(consumer: str, registration: Registration) -> None:
    """Have the keep-alive thread keep ``consumer`` registered from now on."""
    with _lock:
        _live[consumer] = registration


def forget(consumer: str) -> None:
    """Stop keeping ``consumer`` registered (its channel is closing)."""
    with _lock:
        _live.pop(consumer, None)


def register(pipe: Any, consumer: str, registration: Registration) -> None:
    """Queue on ``pipe`` the commands that mark ``consumer`` alive and list it for the sweep.

    The alive key is written first, so a sweep running between the two commands
    finds it and leaves the consumer alone.
    """
    pipe.set(keys.consumer_alive(consumer), 1, px=max(1, int(registration.ttl * 1000)))
    for queue in sorted(registration.queues):
        pipe.sadd(keys.inflight_consumers(queue), consumer)


# A message returned to the queue gets a new delivery tag (the old one plus Redis' time):
# should its consumer only have stalled, it records its own copy under the old tag when it
# resumes, and its acknowledgement must not erase the record of whoever takes this copy.
# The tag is replaced in the item's text, never re-encoded (cjson would round big numbers);
# an item that is not such a message is returned as it is.
_RETAG = """
local function retag(item, suffix)
  local ok, m = pcall(cjson.decode, item)
  if not ok or type(m) ~= 'table' or type(m.properties) ~= 'table' then return item end
  local tag = m.properties.delivery_tag
  if type(tag) ~= 'string' or tag == '' or not tag:match('^[%w%-%.:~]+$') then return item end
  local found = '("delivery_tag"%s*:%s*)"' .. tag:gsub('%p', '%%%0') .. '"'
  local retagged = item:gsub(found, '%1"' .. tag .. '~' .. suffix .. '"', 1)
  return retagged
end
"""

# KEYS: consumers set, queue. ARGV: alive-key prefix, in-flight-list prefix.
RETURN_ORPHANS = (
    _RETAG
    + """
local t = redis.call('TIME')
local suffix = t[1] .. string.format('%06d', tonumber(t[2]))
local returned = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    local list = ARGV[2] .. id
    local item = redis.call('LPOP', list)
    while item do
      redis.call('RPUSH', KEYS[2], retag(item, suffix))
      returned = returned + 1
      item = redis.call('LPOP', list)
    end
    redis.call('SREM', KEYS[1], id)
  end
end
return returned
"""
)


def return_orphans_args(queue: str) -> tuple[list[str], list[str]]:
    """KEYS and ARGV for :data:`RETURN_ORPHANS` on ``queue``."""
    return [keys.inflight_consumers(queue), queue], [keys.consumer_alive(""), keys.inflight_list(queue, "")]


# KEYS: alive key, then (in-flight list, queue) pairs. Returns how many messages were moved.
# The consumer stays in the consumers sets: should a BLMOVE whose reply was lost still
# complete later, the next sweep (its alive key is gone) returns that message too.
_HAND_BACK = """
local returned = 0
for i = 2, #KEYS, 2 do
  while redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT') do returned = returned + 1 end
end
redis.call('DEL', KEYS[1])
return returned
"""


def hand_back(client: Any, consumer: str, queues: Iterable[str]) -> int:
    """Put what ``consumer`` holds in its in-flight lists back at the head of their queues
    and mark it dead; returns how many messages were moved."""
    script_keys = [keys.consumer_alive(consumer)]
    for queue in sorted(queues):
        script_keys += [keys.inflight_list(queue, consumer), queue]
    return int(client.eval(_HAND_BACK, len(script_keys), *script_keys))
