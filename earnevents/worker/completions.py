"""Job state in Redis: who runs an (event, handler) job now, and which jobs completed.

One hash per event (``keys.job_state``), one field per handler:

- absent: nobody runs the job and it has not completed (or the window is over);
- ``<deliveries>:<nonce>:<delivery tag>``: the message with that delivery tag claimed
  the job and runs it; ``deliveries`` counts how many times that message got this far;
- ``d``: the job completed; kept for the dedup ``window`` (default 24 h) so a
  redelivered or duplicated message skips it.

A worker claims every job of a message in one atomic script (:data:`CLAIM`) before
running any: a job that completed, or that another copy of the message holds, is
skipped. The same message redelivered (kombu keeps its delivery tag when it puts
it back) takes over its own claim: that is how a job whose worker died runs again,
and how its deliveries are counted. Completion (:meth:`Completions.mark`) and
settling a failure (:meth:`Completions.release`) end the claim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from .. import keys
from ..groupcommit import GroupCommit

COMPLETED = 0
"""Claim result: the job completed before (within the window); skip it."""

HELD = -1
"""Claim result: another copy of the message (another delivery tag) runs the job; skip it."""

CLAIM_TTL = 86400.0
"""Seconds a claimed job's hash lives at least (longer if the window is longer).

Only a claim nobody ends (its message acknowledged without settling it, which the
worker never does on purpose) lasts that long; a dead worker's claim is taken over
by its own redelivered message, not left to expire.
"""

DONE = "d"

# KEYS: one job-state hash per event. ARGV: delivery tag, nonce of this delivery,
# claim TTL (ms), then per KEY: the number of handlers, then their names.
# Returns one integer per handler: 0 completed, -1 held by another message, n >= 1:
# claimed, for the n-th delivery of this message. The same nonce again (a retried
# call whose reply was lost) returns the same n instead of counting a new delivery.
CLAIM = """
local tag, nonce, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out, a = {}, 4
for k = 1, #KEYS do
  local n = tonumber(ARGV[a])
  a = a + 1
  local claimed = false
  for _ = 1, n do
    local handler = ARGV[a]
    a = a + 1
    local state = redis.call('HGET', KEYS[k], handler)
    local result = 1
    if state == 'd' then
      result = 0
    elseif state then
      local count, held_nonce, holder = string.match(state, '^(%d+):([^:]*):(.*)$')
      if holder == tag then
        result = tonumber(count) + ((held_nonce == nonce) and 0 or 1)
      elseif holder then
        result = -1
      end
    end
    if result > 0 then
      redis.call('HSET', KEYS[k], handler, result .. ':' .. nonce .. ':' .. tag)
      claimed = true
    end
    out[#out + 1] = result
  end
  if claimed and redis.call('PTTL', KEYS[k]) < ttl then
    redis.call('PEXPIRE', KEYS[k], ttl)
  end
end
return out
"""

# KEYS: job-state hashes, one per item (may repeat). ARGV: window (ms), then per KEY:
# handler, delivery tag, 'd' (completed) or 'r' (release). 'd' with a window marks the
# job completed; otherwise the claim is dropped if that delivery tag holds it. A hash
# left without claims expires after the window (an empty hash is gone at once).
WRITE = """
local window = tonumber(ARGV[1])
for i = 1, #KEYS do
  local key, handler, tag, op = KEYS[i], ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  if op == 'd' and window > 0 then
    redis.call('HSET', key, handler, 'd')
  else
    local state = redis.call('HGET', key, handler)
    if state and state ~= 'd' and string.match(state, '^%d+:[^:]*:(.*)$') == tag then
      redis.call('HDEL', key, handler)
    end
  end
  if window > 0 and redis.call('EXISTS', key) == 1 then
    local claims = false
    for _, v in ipairs(redis.call('HVALS', key)) do
      if v ~= 'd' then claims = true break end
    end
    if not claims or redis.call('PTTL', key) < window then
      redis.call('PEXPIRE', key, window)
    end
  end
end
return 1
"""


class Completions:
    """Claims, completion marks and releases on ``earnevents:job:<event id>`` hashes."""

    def __init__(self, client: Callable[[], aioredis.Redis], window: float) -> None:
        self._client = client
        self.window = window
        self._commit = GroupCommit(self._write)
        self._claim: AsyncScript | None = None
        self._write_script: AsyncScript | None = None

    def _scripts(self) -> tuple[AsyncScript, AsyncScript]:
        if self._claim is None or self._write_script is None:
            client = self._client()
            self._claim = AsyncScript(client, CLAIM)
            self._write_script = AsyncScript(client, WRITE)
        return self._claim, self._write_script

    async def claim(self, tag: str, nonce: str, jobs: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, int]]:
        """Claim the jobs of one message (delivery ``tag``): (event id, handlers) pairs.

        One round trip for the whole message. For each pair, maps every handler to
        :data:`COMPLETED`, :data:`HELD` or the delivery count of the claim taken.
        ``nonce`` identifies this delivery: calling again with it (after an error)
        does not count another delivery.
        """
        jobs = [(event_id, list(handlers)) for event_id, handlers in jobs]
        if not any(handlers for _, handlers in jobs):
            return [{} for _ in jobs]
        args: list[str | int] = [tag, nonce, int(max(self.window, CLAIM_TTL) * 1000)]
        for _, handlers in jobs:
            args.append(len(handlers))
            args.extend(handlers)
        script, _ = self._scripts()
        results = iter(
            await script(keys=[keys.job_state(event_id) for event_id, _ in jobs], args=args, client=self._client())
        )
        return [{name: int(next(results)) for name in handlers} for _, handlers in jobs]

    async def mark(self, event_id: str, handlers: Iterable[str], tag: str) -> None:
        """Remember that ``handlers`` completed for ``event_id``; ends their claims.

        With a window of 0 nothing is remembered: only the claims are dropped.
        Concurrent calls share round trips (the handlers of a packed message finish
        together): the first call writes at once, calls arriving meanwhile are
        written together right after it, and each returns once its own are stored.
        """
        items = [(event_id, name, tag, "d") for name in handlers]
        if items:
            await self._commit(items)

    async def release(self, event_id: str, handlers: Iterable[str], tag: str) -> None:
        """End the claims ``tag`` holds on these jobs, which did not complete (they failed)."""
        items = [(event_id, name, tag, "r") for name in handlers]
        if items:
            await self._commit(items)

    async def _write(self, items: list[tuple[str, str, str, str]]) -> None:
        args: list[str | int] = [int(self.window * 1000)]
        for _, handler, tag, op in items:
            args += [handler, tag, op]
        _, script = self._scripts()
        await script(keys=[keys.job_state(event_id) for event_id, *_ in items], args=args, client=self._client())
