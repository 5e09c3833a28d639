"""Dead letters: queue items workers refused, kept per queue for an operator to inspect.

A worker refuses an item that is not a message it can run safely (not JSON, a
compressed or oversized body, a missing id, an ``eta``, ...). It acknowledges the
item so it holds no prefetch slot, logs it once, and files it here with the
reason: nothing is dropped silently. Each queue keeps at most ``dead_letter_max``
records (EARNEVENTS_DEAD_LETTER_MAX), the oldest dropped first; a record keeps at
most :data:`RAW_MAX` bytes of the item (``truncated`` says when it keeps less).

Workers write with their synchronous Redis client (:func:`add_args` and
:data:`ADD_SCRIPT`, inside the transaction that also forgets the item); the event
bus and the ``earnevents dead`` command read with the asyncio client.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any, cast

from . import keys, names

RAW_MAX = 64 * 1024
"""At most this many bytes of a refused item are kept (never decompressed)."""

# KEYS: dead index, dead items. ARGV: id, score (unix time), record JSON, cap.
ADD_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if excess > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[1], 0, excess - 1)) do
    redis.call('ZREM', KEYS[1], old)
    redis.call('HDEL', KEYS[2], old)
  end
end
return excess
"""

# KEYS: dead index, dead items. ARGV: id. Returns 1 if it was there.
REMOVE_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('HDEL', KEYS[2], ARGV[1])
"""


@dataclass(frozen=True)
class DeadItem:
    """One refused queue item: why, when, and (up to :data:`RAW_MAX` bytes of) what."""

    id: str
    """This record's id (the item's own task id may be missing or not unique)."""
    queue: str
    """The queue the item was taken from."""
    reason: str
    """Why the worker refused it."""
    dropped_at: dt.datetime
    """When the worker refused it (aware, UTC)."""
    size: int
    """The item's full size in bytes."""
    raw: str
    """The item as taken from the queue, cut at :data:`RAW_MAX` bytes; bytes that are not
    UTF-8 appear as U+FFFD."""
    truncated: bool
    """True when ``raw`` is only the item's first :data:`RAW_MAX` bytes."""
    task_id: str | None = None
    """The item's ``headers.id`` when it has a string one, to find it in worker logs."""

    @classmethod
    def new(cls, item: bytes | str, queue: str, reason: str, task_id: str | None = None) -> DeadItem:
        """The record of ``item``, refused from ``queue`` now for ``reason``."""
        data = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
        kept = data[:RAW_MAX]
        return cls(
            id=uuid.uuid4().hex,
            queue=queue,
            reason=reason,
            dropped_at=dt.datetime.now(dt.timezone.utc),
            size=len(data),
            raw=kept.decode("utf-8", "replace"),
            truncated=len(data) > RAW_MAX,
            task_id=task_id,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "queue": self.queue,
                "reason": self.reason,
                "dropped_at": self.dropped_at.isoformat(),
                "size": self.size,
                "raw": self.raw,
                "truncated": self.truncated,
                "task_id": self.task_id,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> DeadItem:
        data: dict[str, Any] = json.loads(text)
        return cls(
            id=data["id"],
            queue=data["queue"],
            reason=data["reason"],
            dropped_at=dt.datetime.fromisoformat(data["dropped_at"]),
            size=int(data["size"]),
            raw=data["raw"],
            truncated=bool(data["truncated"]),
            task_id=data.get("task_id"),
        )


def add_args(item: DeadItem, cap: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for :data:`ADD_SCRIPT`: file ``item``, keeping at most ``cap`` records."""
    return (
        [keys.dead_index(item.queue), keys.dead_items(item.queue)],
        [item.id, item.dropped_at.timestamp(), item.to_json(), max(1, cap)],
    )


async def list_items(client: Any, queue: str, limit: int, offset: int) -> list[DeadItem]:
    """``queue``'s dead items, newest first."""
    if limit == 0:
        return []
    ids = cast("list[bytes]", await client.zrevrange(keys.dead_index(queue), offset, offset + limit - 1))
    if not ids:
        return []
    records = await client.hmget(keys.dead_items(queue), ids)
    return [DeadItem.from_json(record) for record in records if record is not None]


async def count(client: Any, queue: str) -> int:
    return int(await client.zcard(keys.dead_index(queue)))


async def get(client: Any, queue: str, item_id: str) -> DeadItem | None:
    """One record; None when there is none with that id (TypeError for a non-str id)."""
    if not names.is_record_id(item_id, "item_id"):
        return None
    record = await client.hget(keys.dead_items(queue), item_id)
    return None if record is None else DeadItem.from_json(record)


async def remove(client: Any, queue: str, item_id: str) -> bool:
    """Delete one record; False when there was none with that id (TypeError for a non-str id)."""
    if not names.is_record_id(item_id, "item_id"):
        return False
    removed = await client.eval(REMOVE_SCRIPT, 2, keys.dead_index(queue), keys.dead_items(queue), item_id)
    return bool(removed)
