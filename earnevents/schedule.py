"""The delay schedule: messages parked in Redis until due, then moved to the queue.

A delayed message lives in a sorted set (score: due time) plus a hash (id ->
message), never in a worker's memory as a Celery ETA. Both scripts read Redis'
own clock (TIME), so publishers and workers on machines with skewed clocks agree
on when a message is due. Moving is one Lua script, so with many workers each due
message reaches the queue exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import keys

# KEYS: zset, hash. ARGV: delay seconds, then (id, message) pairs.
ADD_SCRIPT = """
local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], due, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return tostring(due)
"""

# KEYS: zset, hash, queue list. ARGV: most messages to move.
MOVE_DUE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #ids == 0 then return 0 end
for _, id in ipairs(ids) do
  local message = redis.call('HGET', KEYS[2], id)
  if message then redis.call('LPUSH', KEYS[3], message) end
end
redis.call('ZREM', KEYS[1], unpack(ids))
redis.call('HDEL', KEYS[2], unpack(ids))
return #ids
"""


def add_args(queue: str, delay: float, messages: Sequence[tuple[str, str]]) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for :data:`ADD_SCRIPT`: park ``(id, message)`` pairs ``delay`` seconds."""
    argv: list[Any] = [repr(float(delay))]
    for message_id, message in messages:
        argv.extend((message_id, message))
    return [keys.scheduled_zset(queue), keys.scheduled_payloads(queue)], argv


def move_keys(queue: str) -> list[str]:
    """KEYS for :data:`MOVE_DUE_SCRIPT`."""
    return [keys.scheduled_zset(queue), keys.scheduled_payloads(queue), queue]
