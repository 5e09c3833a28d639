"""Job state in Redis: who runs an (event, handler) job now, and which jobs completed.

Two kinds of keys:

- ``keys.job_claims``, per event, a hash of handler digest -> ``<starts>:<copy id>``
  while a message runs that job: the message with that copy id claimed it, and
  ``starts`` counts the deliveries of that message in which the job started. A field
  exists only while its job is in flight (an empty hash is no key at all).
- Completion records under ``keys.dedup_buckets``, kept for the dedup ``window``
  (default 24 h) so a redelivered or duplicated message skips the jobs that completed:
  a 64-bit digest per job in small integer sets, sharded and bucketed by completion
  time (see :data:`WRITE`), ~8-10 bytes per job instead of a key per event.

A worker claims every job of a message in one atomic script (:data:`CLAIM`) before
running any: a job that completed, or that another copy of the message holds, is
skipped. A fresh claim counts as the job's first start. The same message redelivered
(it keeps its copy id, ``message.COPY_ID``, when it is given back to the queue, while
its delivery tag changes) takes over its own claims: that
is how a job whose worker died runs again. A take-over counts nothing by itself; the
worker records each start (:meth:`Completions.started`) right before running the
job, so only the jobs that were running when a process died count that delivery.
Completion (:meth:`Completions.mark`) and settling a failure
(:meth:`Completions.release` before a retry is scheduled, :meth:`Completions.settled`
once it is, or once the failure is recorded) end the claim. A settled job is also marked
settled for that copy id: if that message comes back (its acknowledgement was lost), it
skips the job rather than run it beside its retry or after its failure was recorded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript, Script

from .. import keys
from ..groupcommit import GroupCommit
from ..logtext import get_logger

log = get_logger(__name__)

COMPLETED = 0
"""Claim result: the job completed before (within the window); skip it."""

HELD = -1
"""Claim result: another copy of the message (another copy id) runs the job; skip it."""

SETTLED = -2
"""Claim result: this message settled the job as failed before (its retry scheduled or its
failure recorded; the acknowledgement was then lost); skip it. Another copy (the retry,
``retry_job``) claims it as usual."""

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
"""Bytes of a handler's digest naming its claim in a ``keys.job_claims`` hash."""

BUCKETS_PER_WINDOW = 24
"""Completion records are kept in time buckets of ``window / BUCKETS_PER_WINDOW`` (1 h for
24 h): a record lives its window plus at most one bucket, and a check reads the buckets
from its event's timestamp on (normally one or two)."""

CLOCK_SLACK = 300.0
"""Seconds a publisher's clock may be ahead of Redis' and a completion still be found
from its event's timestamp (a check reads buckets from ``timestamp - CLOCK_SLACK``)."""

SET_MAX_INTSET_ENTRIES = 512
"""Redis' default ``set-max-intset-entries``: up to it a set of integers is an intset,
8 bytes per member; above it, a hash table (~60 bytes each). Read from Redis when allowed."""

FILL = 0.5
"""Share of the intset limit a bucket's shards are sized for (from the previous bucket's
count), leaving room for the rate to double before a shard fills."""


def digest(handler: str) -> bytes:
    """The handler's fixed-size name digest naming its claim in :func:`keys.job_claims`."""
    return hashlib.blake2b(handler.encode("utf-8"), digest_size=DIGEST_SIZE).digest()


def job_record(event_id: str, handler: str) -> tuple[str, int]:
    """The (member, shard selector) recording that the job (``event_id``, ``handler``) completed.

    The member: a 64-bit digest of the pair as a signed integer in decimal (so its set
    stays an intset). The selector: 32 bits of a digest of the event id alone, so all
    jobs of an event share a shard and one SMISMEMBER checks them. A job is taken for
    another only if its member equals one in the sets its check reads: odds of 2**-64
    per member there, a few hundred to a thousand (see the README).
    """
    raw = hashlib.blake2b(f"{event_id}\0{handler}".encode(), digest_size=8).digest()
    return str(int.from_bytes(raw, "big", signed=True)), shard_selector(event_id)


def shard_selector(event_id: str) -> int:
    """32 bits picking the shard of the event's completion records (by its count of shards)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=4).digest(), "big")


def bucket_ms(window: float) -> int:
    """Milliseconds per completion bucket for this dedup ``window`` (seconds)."""
    return max(1, int(window * 1000) // BUCKETS_PER_WINDOW)


# Completion records. A completed job (event, handler) is the member of its 128-bit digest
# (job_record) in an integer set `<prefix><bucket>:<generation>:<shard>`, bucket = Redis
# time // bucket length when it completed; each set expires one window after its bucket
# ends. Redis stores a set of up to set-max-intset-entries integers as a sorted array of
# 8-byte integers (intset): ~8 bytes per job. Each bucket's hash `<prefix><bucket>` holds
# its last generation g, each generation's shard count n<g> (n0 sized when the bucket
# starts, from the previous bucket's count) and its record count c. When a shard is full
# a new generation with more shards starts (a burst, or the first bucket after a quiet
# one): the check reads every generation of a bucket, so it never misses a record, and
# the sets stay intsets.
# ARGV of DONE: the key prefix, window (ms), bucket length (ms).
_DONE = f"""
local slack = {int(CLOCK_SLACK * 1000)}
local prefix, window, blen = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local metas = {{}}
-- A bucket's shard count per generation ({{}} for generation 0 at [1]...), false: none.
local function meta(b)
  local m = metas[b]
  if m == nil then
    -- One read of the whole (small) hash: g, c and n<g> for each generation.
    local v, h = redis.call('HGETALL', prefix .. b), {{}}
    for i = 1, #v, 2 do h[v[i]] = v[i + 1] end
    m = false
    if h.g then
      m = {{}}
      for g = 0, tonumber(h.g) do m[g + 1] = tonumber(h['n' .. g]) end
    end
    metas[b] = m
  end
  return m
end
local function shard(b, g, n, sel)
  return prefix .. b .. ':' .. g .. ':' .. (sel % n)
end
-- Which of one event's members (its selector sel) completed within the window: a table
-- of index -> true. Looks from `since` (ms, -1: unknown) on, and in the last `slack` ms at
-- least (a publisher's clock ahead of Redis' by more); one SMISMEMBER per set read.
local function done(members, sel, since)
  local found, ask, at = {{}}, members, nil
  local first = now - window
  if since >= 0 then first = math.max(first, math.min(since, now - slack)) end
  for b = math.floor(now / blen), math.floor(first / blen), -1 do
    local m = meta(b)
    if m then
      for g = #m, 1, -1 do
        local key, hit = shard(b, g - 1, m[g], sel), false
        if #ask == 1 then
          if redis.call('SISMEMBER', key, ask[1]) == 1 then found[at and at[1] or 1] = true; hit = true end
        else
          local r = redis.call('SMISMEMBER', key, unpack(ask))
          for j = 1, #r do
            if r[j] == 1 then found[at and at[j] or j] = true; hit = true end
          end
        end
        if hit then
          ask, at = {{}}, {{}}
          for i = 1, #members do
            if not found[i] then ask[#ask + 1] = members[i]; at[#at + 1] = i end
          end
          if #ask == 0 then return found end
        end
      end
    end
  end
  return found
end
"""

# Handlers are named by digest in the claims hash: shorter, and the values stored stay
# small (Redis reuses a script's argument objects, with their allocation, for later
# values). KEYS: per event, its claims hash. ARGV: 1 unused, claim TTL (ms), the
# completion key prefix, window (ms; 0: no completion is checked), bucket length (ms),
# then per event: the copy id of its message, since when to look (ms, -1: the whole
# window), its shard selector, the number of handlers, then per handler its digest and
# record member. Events are claimed in order, so of two copies of one event in the same
# call the first claims and the second finds its jobs held. Returns one integer per
# handler: 0 completed, -1 held by another message, -2 settled as failed by this message
# (see WRITE's 'f'), 1 claimed now (its first start), n >= 2: this message's own
# claim taken over, n - 1 starts so far.
CLAIM = (
    _DONE
    + """
local ttl = tonumber(ARGV[2])
local out, a = {}, 6
for k = 1, #KEYS do
  local claims = KEYS[k]
  local tag, since, sel, n = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local digests, members = {}, {}
  for i = 1, n do
    digests[i], members[i] = ARGV[a + 2 + 2 * i], ARGV[a + 3 + 2 * i]
  end
  a = a + 4 + 2 * n
  local found = {}
  if window > 0 and n > 0 then found = done(members, sel, since) end
  local settled = n > 0 and redis.call('HEXISTS', claims, 'f') == 1
  local claimed = false
  for i = 1, n do
    local digest = digests[i]
    local result = 1
    if found[i] then
      result = 0
    elseif settled and redis.call('HEXISTS', claims, 'f' .. digest .. tag) == 1 then
      result = -2
    elseif redis.call('HSETNX', claims, digest, '1:' .. tag) == 1 then
      claimed = true
    else
      local starts, holder = string.match(redis.call('HGET', claims, digest), '^(%d+):(.*)$')
      if holder == tag then
        result = tonumber(starts) + 1
      elseif holder then
        result = -1
      else
        redis.call('HSET', claims, digest, '1:' .. tag)
        claimed = true
      end
    end
    out[#out + 1] = result
  end
  -- Every claims hash gets its TTL from the claim that creates it, in the same script.
  if claimed then redis.call('PEXPIRE', claims, ttl) end
end
return out
"""
)

# Whether one job completed (tests and tools). ARGV: as CLAIM's first five, then the
# member and shard selector.
CHECK = (
    _DONE
    + """
if done({ARGV[6]}, tonumber(ARGV[7]), -1)[1] then return 1 end
return 0
"""
)

# KEYS: per item, the event's claims hash (may repeat). ARGV: 1 unused, the claim TTL
# (ms), the completion key prefix, window (ms), bucket length (ms), the intset limit, the
# fill the shards are sized for; then per item: handler digest, copy id, 'd' (completed),
# 'r' (release), 'f' (settled as failed) or a number (the job starts for that time), record
# member and shard selector. 'd' with a window records the completion in the current bucket
# (a job completed twice, which the claims make rare, is recorded twice: memory, not a
# miss); 'd', 'r' and 'f' end the claim, a number updates it, if that copy id holds it.
# 'f' also marks the job settled for that copy id, in the same hash: a field 'f' .. digest
# .. copy id (never 8 bytes long, as a claim's digest is), and the field 'f' saying the
# event has such marks (one HEXISTS per event in CLAIM, the usual case). The same message
# back skips the job; any other copy (its retry, `retry_job`) claims it as usual, and
# leaves the mark alone.
WRITE = (
    _DONE
    + """
local most, fill = tonumber(ARGV[6]), tonumber(ARGV[7])
local b = math.floor(now / blen)
local expires = (b + 1) * blen + window
local function record(member, sel)
  local m = meta(b)
  if not m then
    -- A new bucket: shards for the previous bucket's count at `fill` of the limit.
    local before = tonumber(redis.call('HGET', prefix .. (b - 1), 'c') or '0')
    m = {math.max(1, math.ceil(before / (most * fill)))}
    metas[b] = m
    redis.call('HSET', prefix .. b, 'g', 0, 'n0', m[1], 'c', 0)
    redis.call('PEXPIREAT', prefix .. b, expires)
  end
  local key = shard(b, #m - 1, m[#m], sel)
  local size = redis.call('SCARD', key)
  if size >= most then
    -- This shard is full: a new generation (the check reads all), sized for the rest of
    -- the bucket at the rate so far, 2 to 16 times the shards of the last one.
    local count = tonumber(redis.call('HGET', prefix .. b, 'c'))
    local elapsed = math.max(1, now - b * blen)
    local n = math.ceil(count * (blen - elapsed) / elapsed / (most * fill))
    n = math.min(16 * m[#m], math.max(2 * m[#m], n))
    m[#m + 1] = n
    redis.call('HSET', prefix .. b, 'g', #m - 1, 'n' .. (#m - 1), n)
    key = shard(b, #m - 1, n, sel)
    size = redis.call('SCARD', key)
  end
  if redis.call('SADD', key, member) == 1 then
    if size == 0 then redis.call('PEXPIREAT', key, expires) end
    redis.call('HINCRBY', prefix .. b, 'c', 1)
  end
end
local a = 8
for i = 1, #KEYS do
  local digest, tag, op, member, sel = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4])
  a = a + 5
  if op == 'd' and window > 0 then record(member, sel) end
  local state = redis.call('HGET', KEYS[i], digest)
  if op == 'f' then
    redis.call('HSET', KEYS[i], 'f', 1, 'f' .. digest .. tag, 1)
    if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
  end
  if state and string.match(state, '^%d+:(.*)$') == tag then
    if tonumber(op) then
      redis.call('HSET', KEYS[i], digest, op .. ':' .. tag)
    else
      redis.call('HDEL', KEYS[i], digest)
    end
  end
end
return 1
"""
)


_ClaimItem = tuple[str, str, list[str], float | None]
"""One event of a claim: the message's copy id, the event id, its handlers, its timestamp."""

_WriteItem = tuple[str, str, str, str]
"""One job of a write: event id, handler, copy id, op ('d', 'r', 'f' or a start count)."""


def check_args(window: float, event_id: str, handler: str) -> list[str | int]:
    """ARGV of :data:`CHECK` for the job (``event_id``, ``handler``) and this dedup ``window``."""
    blen = bucket_ms(window)
    return ["", 0, keys.dedup_buckets(blen), int(window * 1000), blen, *job_record(event_id, handler)]


def recorded(client: redis.Redis, window: float, event_id: str, handler: str) -> bool:
    """Whether Redis (a sync ``client``) records the job as completed within ``window`` seconds."""
    return bool(client.eval(CHECK, 0, *check_args(window, event_id, handler)))


# The scripts, hashed once at import (in a worker's main process, before its pool processes
# are forked): redis-py hashes a script when it wraps it, with OpenSSL's SHA-1, whose first
# call would bring ~0.8 MiB of OpenSSL's code into each pool process (issue 15, target 9).
# Callers always name the client (``client=``): the wrappers serve every client of a process.
_ASYNC_SCRIPTS = (AsyncScript(cast(Any, None), CLAIM.encode()), AsyncScript(cast(Any, None), WRITE.encode()))
_BLOCKING_SCRIPTS = (Script(cast(Any, None), CLAIM.encode()), Script(cast(Any, None), WRITE.encode()))


class Completions:
    """Claims, completion marks and releases of (event, handler) jobs in Redis.

    The async methods run on the worker's loop. ``blocking``, a blocking client for the
    same Redis, serves :meth:`claim_blocking` and :meth:`mark_blocking`: the same scripts,
    called from a task thread running plain ``def`` handlers, which then need no hop to
    the loop for their bookkeeping.
    """

    def __init__(
        self, client: Callable[[], aioredis.Redis], window: float, blocking: redis.Redis | None = None
    ) -> None:
        self._client = client
        self.window = window
        self._bucket = bucket_ms(window)
        self._commit: GroupCommit[_WriteItem, None] = GroupCommit(self._write)
        self._claims: GroupCommit[_ClaimItem, dict[str, int]] = GroupCommit(self._claim_send)
        self._most: int | None = None
        self._blocking = blocking

    def _scripts(self) -> tuple[AsyncScript, AsyncScript]:
        return _ASYNC_SCRIPTS

    def _blocking_client(self) -> tuple[redis.Redis, Script, Script]:
        if self._blocking is None:
            raise RuntimeError("no blocking Redis client: use the async methods")
        return self._blocking, *_BLOCKING_SCRIPTS

    def _common(self, tag: str) -> list[str | bytes | int]:
        """ARGV shared by the scripts: copy id, claim TTL, key prefix, window, bucket length."""
        ttl = int(max(self.window, CLAIM_TTL) * 1000)
        return [tag, ttl, keys.dedup_buckets(self._bucket), int(self.window * 1000), self._bucket]

    async def _intset_limit(self) -> int:
        """Members per shard: Redis' ``set-max-intset-entries``, at most its default.

        Larger intsets would save little (a key's overhead is ~1% at 512) and cost a
        longer copy per insert. Read once per process (one round trip before the first
        write); where CONFIG is denied or renamed (managed Redis), the default.
        """
        if self._most is None:
            try:
                found = await self._client().config_get("set-max-intset-entries")
                self._most = self._limit_from(found)
            except redis.ResponseError as exc:  # an error reply; a connection error propagates
                self._most = self._refused(exc)
        return max(1, min(self._most, SET_MAX_INTSET_ENTRIES))

    def _intset_limit_blocking(self) -> int:
        """:meth:`_intset_limit` on the blocking client."""
        if self._most is None:
            client, _, _ = self._blocking_client()
            try:
                self._most = self._limit_from(client.config_get("set-max-intset-entries"))
            except redis.ResponseError as exc:
                self._most = self._refused(exc)
        return max(1, min(self._most, SET_MAX_INTSET_ENTRIES))

    @staticmethod
    def _limit_from(found: Mapping[Any, Any]) -> int:
        value = found.get("set-max-intset-entries")
        return SET_MAX_INTSET_ENTRIES if value is None else int(value)

    @staticmethod
    def _refused(exc: redis.ResponseError) -> int:
        log.debug("CONFIG GET set-max-intset-entries refused (%s); assuming %d", exc, SET_MAX_INTSET_ENTRIES)
        return SET_MAX_INTSET_ENTRIES

    @staticmethod
    def _claim_items(
        tag: str, jobs: Sequence[tuple[str, Sequence[str]]], since: Sequence[float | None] | None
    ) -> list[_ClaimItem]:
        """One message's (event id, handlers) pairs as :data:`CLAIM` items (empty if it has no jobs)."""
        pairs = [(event_id, list(handlers)) for event_id, handlers in jobs]
        if not any(handlers for _, handlers in pairs):
            return []
        starts = list(since) if since is not None else [None] * len(pairs)
        return [(tag, event_id, handlers, at) for (event_id, handlers), at in zip(pairs, starts, strict=True)]

    def _claim_args(self, items: Sequence[_ClaimItem]) -> tuple[list[str], list[str | bytes | int]]:
        """KEYS and ARGV of :data:`CLAIM` for these items (of one message or several)."""
        event_keys: list[str] = []
        args = self._common("")
        for tag, event_id, handlers, at in items:
            event_keys.append(keys.job_claims(event_id))
            since_ms = -1 if at is None else max(0, int((at - CLOCK_SLACK) * 1000))
            args += [tag, since_ms, shard_selector(event_id), len(handlers)]
            for name in handlers:
                args += [digest(name), job_record(event_id, name)[0]]
        return event_keys, args

    @staticmethod
    def _claim_results(items: Sequence[_ClaimItem], flat: Iterable[Any]) -> list[dict[str, int]]:
        """The script's one integer per handler, as one mapping per item."""
        results = iter(flat)
        return [{name: int(next(results)) for name in handlers} for _, _, handlers, _ in items]

    async def _claim_send(self, items: list[_ClaimItem], _deadline: float) -> list[dict[str, int]]:
        event_keys, args = self._claim_args(items)
        script, _ = self._scripts()
        return self._claim_results(items, await script(keys=event_keys, args=args, client=self._client()))

    async def claim(
        self,
        tag: str,
        jobs: Sequence[tuple[str, Sequence[str]]],
        since: Sequence[float | None] | None = None,
    ) -> list[dict[str, int]]:
        """Claim the jobs of one message (copy id ``tag``): (event id, handlers) pairs.

        One script for the whole message, shared with the messages claiming at the same
        time on this loop (a group commit: ``-P threads`` runs many at once). For each
        pair, maps every handler to :data:`COMPLETED`, :data:`HELD`, :data:`SETTLED`,
        :data:`FRESH` or, for a take-over of this message's own claim, the number its next
        start would be.
        Calling again (after an error) counts nothing: at worst a fresh claim comes back
        as a take-over. ``since`` gives each event's timestamp (unix seconds): completions
        are looked for from it (less :data:`CLOCK_SLACK`) on; without it, in the whole window.
        """
        items = self._claim_items(tag, jobs, since)
        if not items:
            return [{} for _ in jobs]
        return await self._claims(items)

    def claim_blocking(
        self,
        tag: str,
        jobs: Sequence[tuple[str, Sequence[str]]],
        since: Sequence[float | None] | None = None,
    ) -> list[dict[str, int]]:
        """:meth:`claim` on the blocking client, in the calling thread (the same script)."""
        items = self._claim_items(tag, jobs, since)
        if not items:
            return [{} for _ in jobs]
        event_keys, args = self._claim_args(items)
        client, script, _ = self._blocking_client()
        return self._claim_results(items, script(keys=event_keys, args=args, client=client))

    async def recorded(self, event_id: str, handler: str) -> bool:
        """Whether the job is recorded as completed within the window (for tests and tools)."""
        return bool(await self._client().eval(CHECK, 0, *check_args(self.window, event_id, handler)))

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

    def mark_blocking(self, event_id: str, handlers: Iterable[str], tag: str) -> None:
        """:meth:`mark` on the blocking client, in the calling thread: one round trip of its own."""
        items = [(event_id, name, tag, "d") for name in handlers]
        if items:
            client, _, script = self._blocking_client()
            limit = self._intset_limit_blocking() if self.window > 0 else 1
            event_keys, args = self._write_args(items, limit)
            script(keys=event_keys, args=args, client=client)

    async def started(self, event_id: str, handler: str, tag: str, starts: int) -> None:
        """Record that the job starts for the ``starts``-th time (after a take-over)."""
        await self._commit([(event_id, handler, tag, str(starts))])

    async def release(self, event_id: str, handlers: Iterable[str], tag: str) -> None:
        """End the claims ``tag`` holds on these jobs, which did not complete (they failed)."""
        items = [(event_id, name, tag, "r") for name in handlers]
        if items:
            await self._commit(items)

    async def settled(self, event_id: str, handlers: Iterable[str], tag: str) -> None:
        """Mark these jobs settled as failed by the message ``tag`` (a retry scheduled, or the
        failure recorded): that message, should it come back, skips them (:data:`SETTLED`).
        Ends the claims ``tag`` holds on them; another message's claim is left alone."""
        items = [(event_id, name, tag, "f") for name in handlers]
        if items:
            await self._commit(items)

    def _write_args(self, items: list[_WriteItem], limit: int) -> tuple[list[str], list[str | bytes | int | float]]:
        """KEYS and ARGV of :data:`WRITE` for these (event id, handler, copy id, op) items."""
        event_keys: list[str] = []
        args: list[str | bytes | int | float] = [*self._common(""), limit, FILL]
        for event_id, handler, tag, op in items:
            event_keys.append(keys.job_claims(event_id))
            args += [digest(handler), tag, op, *job_record(event_id, handler)]
        return event_keys, args

    async def _write(self, items: list[_WriteItem], _deadline: float) -> None:
        event_keys, args = self._write_args(items, await self._intset_limit() if self.window > 0 else 1)
        _, script = self._scripts()
        await script(keys=event_keys, args=args, client=self._client())
