"""Job state in Redis: who runs an (event, handler) job now, and which jobs completed.

Two keys per event:

- ``keys.job_claims``, a hash of handler digest -> ``<starts>:<copy id>`` while a
  message runs that job: the message with that copy id claimed it, and ``starts``
  counts the deliveries of that message in which the job started. A field exists only
  while its job is in flight (an empty hash is no key at all).
- ``keys.completed``, a string of :data:`DIGEST_SIZE`-byte digests of the handlers
  that completed, kept for the dedup ``window`` (default 24 h) so a redelivered or
  duplicated message skips them: one short string per event, however many handlers.

A worker claims every job of a message in one atomic script (:data:`CLAIM`) before
running any: a job that completed, or that another copy of the message holds, is
skipped. A fresh claim counts as the job's first start. The same message redelivered
(it keeps its copy id, ``message.COPY_ID``, when it is given back to the queue, while
its delivery tag changes) takes over its own claims: that
is how a job whose worker died runs again. A take-over counts nothing by itself; the
worker records each start (:meth:`Completions.started`) right before running the
job, so only the jobs that were running when a process died count that delivery.
Completion (:meth:`Completions.mark`) and settling a failure
(:meth:`Completions.release`) end the claim.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from .. import keys
from ..groupcommit import GroupCommit

COMPLETED = 0
"""Claim result: the job completed before (within the window); skip it."""

HELD = -1
"""Claim result: another copy of the message (another copy id) runs the job; skip it."""

FRESH = 1
"""Claim result: claimed now, and counted as the job's first start. A result above this
is a take-over by the same message: the number its next start would be."""

CLAIM_TTL = 86400.0
"""Seconds a claim lives at most (longer if the window is longer): a bound on memory.

Only a claim nobody ends (its message acknowledged without settling it, which the
worker never does on purpose) lasts that long; a dead worker's claim is taken over
by its own redelivered message, not left to expire. A handler still running after
this long may be started by another copy of its message.
"""

DIGEST_SIZE = 8
"""Bytes of a handler's digest in a completion string (64 bits: two handlers of one
event sharing a digest, which would make one skip the other, has odds of 2**-64)."""


def digest(handler: str) -> bytes:
    """The handler's fixed-size name digest in :func:`keys.completed` strings."""
    return hashlib.blake2b(handler.encode("utf-8"), digest_size=DIGEST_SIZE).digest()


def completed_in(marks: bytes | None, handler: str) -> bool:
    """Whether the completion string ``marks`` (a ``GET`` of ``keys.completed``) names ``handler``."""
    mine = digest(handler)
    data = marks or b""
    return any(data[i : i + DIGEST_SIZE] == mine for i in range(0, len(data), DIGEST_SIZE))


# The completion string is read digest by digest (never searched as a whole: a match
# across two digests would be a false "completed").
_DONE = f"""
local function done(marks, digest)
  if not marks then return false end
  for i = 1, #marks, {DIGEST_SIZE} do
    if string.sub(marks, i, i + {DIGEST_SIZE - 1}) == digest then return true end
  end
  return false
end
"""

# Handlers are named by digest in both keys: shorter, and the values stored stay small
# (Redis reuses a script's argument objects, with their allocation, for later values).
# KEYS: per event, its completion string and its claims hash. ARGV: the copy id, claim
# TTL (ms), then per event: the number of handlers, then their digests. Returns one
# integer per handler: 0 completed, -1 held by another message, 1 claimed now (its first
# start), n >= 2: this message's own claim taken over, n - 1 starts so far.
CLAIM = (
    _DONE
    + """
local tag, ttl = ARGV[1], tonumber(ARGV[2])
local out, a = {}, 3
for k = 1, #KEYS, 2 do
  local marks = redis.call('GET', KEYS[k])
  local claims = KEYS[k + 1]
  local n = tonumber(ARGV[a])
  a = a + 1
  local claimed = false
  for _ = 1, n do
    local digest = ARGV[a]
    a = a + 1
    local result = 1
    if done(marks, digest) then
      result = 0
    else
      local state = redis.call('HGET', claims, digest)
      if state then
        local starts, holder = string.match(state, '^(%d+):(.*)$')
        if holder == tag then
          result = tonumber(starts) + 1
        elseif holder then
          result = -1
        end
      end
    end
    if result == 1 then
      redis.call('HSET', claims, digest, '1:' .. tag)
      claimed = true
    end
    out[#out + 1] = result
  end
  if claimed and redis.call('PTTL', claims) < ttl then
    redis.call('PEXPIRE', claims, ttl)
  end
end
return out
"""
)

# KEYS: per item, the event's completion string and claims hash (may repeat). ARGV:
# window (ms), then per item: handler digest, copy id, and 'd' (completed), 'r'
# (release) or a number (the job starts for that time). 'd' with a window adds the
# digest to the completion string (SET, not APPEND: a short value stays embedded in its
# key). 'd' and 'r' end the claim, a number updates it, if that copy id holds it.
WRITE = (
    _DONE
    + """
local window = tonumber(ARGV[1])
for i = 1, #KEYS, 2 do
  local a = (i + 1) * 3 / 2 - 1
  local digest, tag, op = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  if op == 'd' and window > 0 then
    local marks = redis.call('GET', KEYS[i])
    if not done(marks, digest) then marks = (marks or '') .. digest end
    redis.call('SET', KEYS[i], marks, 'PX', window)
  end
  local state = redis.call('HGET', KEYS[i + 1], digest)
  if state and string.match(state, '^%d+:(.*)$') == tag then
    if tonumber(op) then
      redis.call('HSET', KEYS[i + 1], digest, op .. ':' .. tag)
    else
      redis.call('HDEL', KEYS[i + 1], digest)
    end
  end
end
return 1
"""
)


class Completions:
    """Claims, completion marks and releases of (event, handler) jobs in Redis."""

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

    async def claim(self, tag: str, jobs: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, int]]:
        """Claim the jobs of one message (copy id ``tag``): (event id, handlers) pairs.

        One round trip for the whole message. For each pair, maps every handler to
        :data:`COMPLETED`, :data:`HELD`, :data:`FRESH` or, for a take-over of this
        message's own claim, the number its next start would be. Calling again (after
        an error) counts nothing: at worst a fresh claim comes back as a take-over.
        """
        pairs = [(event_id, list(handlers)) for event_id, handlers in jobs]
        if not any(handlers for _, handlers in pairs):
            return [{} for _ in pairs]
        event_keys: list[str] = []
        args: list[str | bytes | int] = [tag, int(max(self.window, CLAIM_TTL) * 1000)]
        for event_id, handlers in pairs:
            event_keys += [keys.completed(event_id), keys.job_claims(event_id)]
            args.append(len(handlers))
            args += [digest(name) for name in handlers]
        script, _ = self._scripts()
        results = iter(await script(keys=event_keys, args=args, client=self._client()))
        return [{name: int(next(results)) for name in handlers} for _, handlers in pairs]

    async def mark(self, event_id: str, handlers: Iterable[str], tag: str) -> None:
        """Remember that ``handlers`` completed for ``event_id``; ends their claims.

        With a window of 0 nothing is remembered: only the claims end.
        Concurrent calls share round trips (the handlers of a packed message finish
        together): the first call writes at once, calls arriving meanwhile are
        written together right after it, and each returns once its own are stored.
        """
        items = [(event_id, name, tag, "d") for name in handlers]
        if items:
            await self._commit(items)

    async def started(self, event_id: str, handler: str, tag: str, starts: int) -> None:
        """Record that the job starts for the ``starts``-th time (after a take-over)."""
        await self._commit([(event_id, handler, tag, str(starts))])

    async def release(self, event_id: str, handlers: Iterable[str], tag: str) -> None:
        """End the claims ``tag`` holds on these jobs, which did not complete (they failed)."""
        items = [(event_id, name, tag, "r") for name in handlers]
        if items:
            await self._commit(items)

    async def _write(self, items: list[tuple[str, str, str, str]], _deadline: float) -> None:
        event_keys: list[str] = []
        args: list[str | bytes | int] = [int(self.window * 1000)]
        for event_id, handler, tag, op in items:
            event_keys += [keys.completed(event_id), keys.job_claims(event_id)]
            args += [digest(handler), tag, op]
        _, script = self._scripts()
        await script(keys=event_keys, args=args, client=self._client())
