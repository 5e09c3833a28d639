"""Failed jobs in Redis: one JSON string per job plus sorted-set indexes by time.

Bounded: a queue keeps at most ``max_jobs`` records (adding one more deletes the
oldest, in the same script) and none older than ``max_age`` seconds (not listed
or counted; the record key expires then, its index entries go at the next add).
So a handler failing 1,000 times a second holds Redis at ``max_jobs`` records.

Filters: event name and handler pick the index (one sorted set per name, handler and
pair), the failure-time window is a score range of it (ZREVRANGEBYSCORE / ZCOUNT),
and the error text is matched in Redis by a script reading the error texts of that range
(a hash of id -> error text beside the records), :data:`SCAN_BATCH` per call, at most
``max_jobs`` of them per list or count.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from .. import keys, names
from .base import DEFAULT_MAX_AGE, DEFAULT_MAX_JOBS
from .record import FailedJob
from .selection import JobSelection, checked

TRIM_BATCH = 1000
"""At most this many old records are deleted by one add (and per round of a purge), so
lowering the cap or the age on a full store never makes one script block Redis for long."""

# Deletes one job by id with everything that names it, from the key list filed beside it in
# KEYS[2] (key names come from keys.py, never built here), and its error text in KEYS[3]. A job
# filed before that list existed is taken off the queue's index only and returned, for the
# caller to finish.
_DROP = """
local function drop(id, orphans)
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[3], id)
  local names = redis.call('HGET', KEYS[2], id)
  if not names then
    table.insert(orphans, id)
    return
  end
  for i, name in ipairs(cjson.decode(names)) do
    if i == 1 then redis.call('DEL', name) else redis.call('ZREM', name, id) end
  end
  redis.call('HDEL', KEYS[2], id)
end
"""

# KEYS: queue index, key list hash, error text hash, record key, the job's other indexes.
# ARGV: id, score (failed_at), record JSON, expire-at (unix s), cap, cutoff score (older ones
# go), key list JSON, trim batch, error text. Returns the ids of old-style jobs left to the caller.
ADD_SCRIPT = (
    _DROP
    + """
redis.call('SET', KEYS[4], ARGV[3])
redis.call('EXPIREAT', KEYS[4], ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
for i = 5, #KEYS do redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1]) end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[7])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[9])
local orphans, batch = {}, tonumber(ARGV[8])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[6], 'LIMIT', 0, batch)) do
  drop(id, orphans)
end
local excess = math.min(redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[5]), batch)
if excess > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, excess - 1)) do drop(id, orphans) end
end
return orphans
"""
)

# KEYS: queue index, key list hash, error text hash. ARGV: ids. Returns the ids of old-style jobs left to the caller.
REMOVE_SCRIPT = (
    _DROP
    + """
local orphans = {}
for _, id in ipairs(ARGV) do drop(id, orphans) end
return orphans
"""
)


SCAN_BATCH = 2000
"""Records one call of :data:`SCAN_SCRIPT` reads at most (a few ms of Redis time), so matching
the error text over a full queue never blocks Redis for long."""

# Ranks, not scores, from the top of a score window: ZREVRANGEBYSCORE ... LIMIT offset walks
# past `offset` entries one by one; ZREVRANGE finds a rank in O(log n). KEYS[1]: the index.
# ARGV[1], ARGV[2]: max and min score (inclusive). Sets `first` (the rank of the window's newest
# entry) and `inside` (how many the window holds).
_WINDOW = """
local first = 0
if ARGV[1] ~= '+inf' then first = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf') end
local inside = redis.call('ZCOUNT', KEYS[1], ARGV[2], ARGV[1])
"""

# KEYS: the index. ARGV: max score, min score, offset, limit. Returns the ids of the window's
# jobs from `offset` on, newest first (ties by id, descending).
PAGE_SCRIPT = (
    _WINDOW
    + """
local offset, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local last = math.min(offset + limit, inside) - 1
if last < offset then return {} end
return redis.call('ZREVRANGE', KEYS[1], first + offset, first + last)
"""
)

# The error text of a record (JSON; read for jobs filed before the error text hash), or nil,
# and, when cjson cannot decode it (a lone surrogate escaped), the text still JSON-escaped.
# The record's own "error" key is the last `"error":"` in it: after it come only the
# traceback, attempts, queue and failed_at (plain values; a quote inside a string is escaped).
_ERROR_OF = """
local function error_of(record)
  local start, pos = nil, 1
  while true do
    local s, e = string.find(record, '"error":"', pos, true)
    if not s then break end
    start, pos = e, e + 1
  end
  if start then
    local i = start + 1
    while true do
      local q = string.find(record, '"', i, true)
      if not q then break end
      local backslashes = 0
      while string.byte(record, q - 1 - backslashes) == 92 do backslashes = backslashes + 1 end
      if backslashes % 2 == 0 then
        local raw = string.sub(record, start + 1, q - 1)
        local ok, text = pcall(cjson.decode, '"' .. raw .. '"')
        if ok then return text end
        return nil, raw
      end
      i = q + 1
    end
  end
  local ok, doc = pcall(cjson.decode, record)
  if ok and type(doc) == 'table' and type(doc.error) == 'string' then return doc.error end
  return nil
end
"""

# KEYS: the index, the error text hash. ARGV: max score, min score, start (rank in the
# window), how many to read (unpack's limit: at most 8000), the error text (UTF-8), record key
# prefix, matches wanted (0: count only), the error text JSON-escaped. Reads the window's ids
# from `start` on (newest first), their error texts in one HMGET (the record of a job filed
# before that hash existed), and stops after `wanted` matches. Returns {ids read, matches,
# the matching ids (when wanted > 0)...}.
SCAN_SCRIPT = (
    _WINDOW
    + _ERROR_OF
    + """
local start, size = tonumber(ARGV[3]), tonumber(ARGV[4])
local last = math.min(start + size, inside) - 1
if last < start then return {0, 0} end
local ids = redis.call('ZREVRANGE', KEYS[1], first + start, first + last)
local errors = redis.call('HMGET', KEYS[2], unpack(ids))
local needle, prefix, wanted = ARGV[5], ARGV[6], tonumber(ARGV[7])
local out, read, matches = {0, 0}, 0, 0
for i, id in ipairs(ids) do
  read = read + 1
  local text, escaped = errors[i], nil
  if not text then
    local record = redis.call('GET', prefix .. id)
    if record then text, escaped = error_of(record) end
  end
  if text or escaped then
    if (text and string.find(text, needle, 1, true)) or (escaped and string.find(escaped, ARGV[8], 1, true)) then
      matches = matches + 1
      if wanted > 0 then
        table.insert(out, id)
        if matches >= wanted then break end
      end
    end
  end
end
out[1], out[2] = read, matches
return out
"""
)


def _dumps(job: FailedJob) -> str:
    doc = job.to_doc()
    doc["failed_at"] = job.failed_at.isoformat()
    return json.dumps(doc, separators=(",", ":"))


class RedisFailureStore:
    """Used when no MongoDB is configured. Lists show ``queue``'s jobs, newest first."""

    def __init__(
        self,
        client: Callable[[], aioredis.Redis],
        queue: str,
        *,
        max_jobs: int = DEFAULT_MAX_JOBS,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        self._client = client
        self.queue = queue
        self.max_jobs = max_jobs
        self.max_age = max_age

    def _cutoff(self) -> float:
        """Scores (failure times) below this are older than ``max_age``."""
        return time.time() - self.max_age

    @staticmethod
    def _indexes(job: FailedJob) -> list[str]:
        q, name, handler = job.queue, job.event.name, job.handler
        return [
            keys.failed_index(q),
            keys.failed_by_event(q, name),
            keys.failed_by_handler(q, handler),
            keys.failed_by_event_handler(q, name, handler),
        ]

    async def add(self, job: FailedJob) -> None:
        """Keep ``job``; in the same script, delete the queue's records beyond the cap or age."""
        score = job.failed_at.timestamp()
        main, *others = self._indexes(job)
        record_key = keys.failed_job(job.id)
        script_keys = [main, keys.failed_keys(job.queue), keys.failed_errors(job.queue), record_key, *others]
        argv: list[str | bytes | int | float] = [
            job.id,
            repr(score),
            _dumps(job),
            max(1, math.ceil(score + self.max_age)),
            self.max_jobs,
            repr(self._cutoff()),
            json.dumps([record_key, *others]),
            TRIM_BATCH,
            job.error.encode("utf-8", "surrogatepass"),
        ]
        orphans = await self._client().eval(ADD_SCRIPT, len(script_keys), *script_keys, *argv)
        await self._finish(orphans)

    async def _finish(self, orphans: Sequence[Any], index: str | None = None) -> None:
        """Delete what the scripts left: jobs filed before the key list existed (off the queue
        index already), and, when paging through ``index``, their entries there."""
        for raw in orphans:
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            job = await self.get(job_id)
            pipe = self._client().pipeline(transaction=True)
            pipe.delete(keys.failed_job(job_id))
            for name in self._indexes(job) if job is not None else []:
                pipe.zrem(name, job_id)
            if index is not None:
                pipe.zrem(index, job_id)
            await pipe.execute()

    async def purge(
        self, older_than: float | None = None, event_name: str | None = None, handler: str | None = None
    ) -> int:
        """Delete the queue's jobs (of one event and/or handler) that failed more than
        ``older_than`` seconds ago (None: all); returns how many."""
        client = self._client()
        index = self._index(event_name, handler)
        upper = "+inf" if older_than is None else f"({time.time() - older_than!r}"
        removed = 0
        while True:
            ids = await client.zrangebyscore(index, "-inf", upper, start=0, num=TRIM_BATCH)
            if not ids:
                return removed
            script_keys = [keys.failed_index(self.queue), keys.failed_keys(self.queue), keys.failed_errors(self.queue)]
            orphans = await client.eval(REMOVE_SCRIPT, len(script_keys), *script_keys, *ids)
            await self._finish(orphans, index)
            removed += len(ids)

    def _index(self, event_name: str | None, handler: str | None) -> str:
        q = self.queue
        names.check_filter(event_name, "event_name")
        names.check_filter(handler, "handler")
        if event_name is not None and handler is not None:
            return keys.failed_by_event_handler(q, event_name, handler)
        if event_name is not None:
            return keys.failed_by_event(q, event_name)
        if handler is not None:
            return keys.failed_by_handler(q, handler)
        return keys.failed_index(q)

    def _range(self, selection: JobSelection) -> tuple[str, str, str]:
        """The index, max and min scores (inclusive) for ``selection``'s names and window."""
        index = self._index(selection.event_name, selection.handler)
        low = self._cutoff()
        if selection.since is not None:
            low = max(low, selection.since.timestamp())
        high = "+inf" if selection.until is None else repr(selection.until.timestamp())
        return index, high, repr(low)

    async def list(self, limit: int = 100, offset: int = 0, selection: JobSelection | None = None) -> list[FailedJob]:
        selection = checked(selection)
        index, high, low = self._range(selection)
        error = names.check_filter(selection.error, "error")
        if limit <= 0:
            return []
        client = self._client()
        ids: Sequence[Any]
        if error is None:
            ids = await client.eval(PAGE_SCRIPT, 1, index, high, low, offset, limit)
        else:
            ids = (await self._scan(index, high, low, error, offset + limit))[offset:]
        if not ids:
            return []
        raw = await client.mget([keys.failed_job(i.decode() if isinstance(i, bytes) else str(i)) for i in ids])
        return [FailedJob.from_doc(json.loads(r)) for r in raw if r is not None]

    async def count(self, selection: JobSelection | None = None) -> int:
        selection = checked(selection)
        index, high, low = self._range(selection)
        error = names.check_filter(selection.error, "error")
        if error is None:
            return int(await self._client().zcount(index, low, high))
        matches = 0
        async for _, found in self._scan_batches(index, high, low, error, 0):
            matches += found
        return matches

    async def _scan(self, index: str, high: str, low: str, error: str, wanted: int) -> Sequence[Any]:
        """The first ``wanted`` ids of the range whose record's error text contains ``error``."""
        ids: list[Any] = []
        async for batch, _ in self._scan_batches(index, high, low, error, wanted):
            ids.extend(batch)
            if len(ids) >= wanted:
                break
        return ids[:wanted]

    async def _scan_batches(
        self, index: str, high: str, low: str, error: str, wanted: int
    ) -> AsyncIterator[tuple[Sequence[Any], int]]:
        """(matching ids, how many matched) per call of :data:`SCAN_SCRIPT`, newest first, over at
        most ``max_jobs`` ids of the range; ``wanted`` 0 counts only (no ids)."""
        client = self._client()
        needle = error.encode("utf-8", "surrogatepass")
        escaped = json.dumps(error)[1:-1]
        prefix = keys.failed_job("")
        start, found = 0, 0
        while start < self.max_jobs:
            size = min(SCAN_BATCH, self.max_jobs - start)
            left = 0 if wanted == 0 else wanted - found
            read, matched, *ids = await client.eval(
                SCAN_SCRIPT,
                2,
                index,
                keys.failed_errors(self.queue),
                high,
                low,
                start,
                size,
                needle,
                prefix,
                left,
                escaped,
            )
            found += int(matched)
            yield ids, int(matched)
            if int(read) < size:
                return
            start += int(read)

    async def get(self, job_id: str) -> FailedJob | None:
        if not names.is_record_id(job_id, "job_id"):
            return None
        raw = await self._client().get(keys.failed_job(job_id))
        return None if raw is None else FailedJob.from_doc(json.loads(raw))

    async def take(self, job_id: str) -> FailedJob | None:
        job = await self.get(job_id)
        if job is None:
            return None
        pipe = self._client().pipeline(transaction=True)
        pipe.delete(keys.failed_job(job_id))
        for index in self._indexes(job):
            pipe.zrem(index, job_id)
        pipe.hdel(keys.failed_keys(job.queue), job_id)
        pipe.hdel(keys.failed_errors(job.queue), job_id)
        deleted: list[Any] = await pipe.execute()
        # The DEL inside MULTI decides between concurrent takers.
        return job if deleted[0] == 1 else None

    async def remove(self, job_id: str) -> bool:
        return await self.take(job_id) is not None
