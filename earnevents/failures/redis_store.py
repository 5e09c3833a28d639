"""Failed jobs in Redis: one JSON string per job plus sorted-set indexes by time."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from .. import keys, names
from .record import FailedJob


def _dumps(job: FailedJob) -> str:
    doc = job.to_doc()
    doc["failed_at"] = job.failed_at.isoformat()
    return json.dumps(doc, separators=(",", ":"))


class RedisFailureStore:
    """Used when no MongoDB is configured. Lists show ``queue``'s jobs, newest first."""

    def __init__(self, client: Callable[[], aioredis.Redis], queue: str) -> None:
        self._client = client
        self.queue = queue

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
        score = job.failed_at.timestamp()
        pipe = self._client().pipeline(transaction=True)
        pipe.set(keys.failed_job(job.id), _dumps(job))
        for index in self._indexes(job):
            pipe.zadd(index, {job.id: score})
        await pipe.execute()

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

    async def list(
        self, limit: int = 100, offset: int = 0, event_name: str | None = None, handler: str | None = None
    ) -> list[FailedJob]:
        if limit <= 0:
            return []
        client = self._client()
        ids = await client.zrevrange(self._index(event_name, handler), offset, offset + limit - 1)
        if not ids:
            return []
        raw = await client.mget([keys.failed_job(i.decode() if isinstance(i, bytes) else str(i)) for i in ids])
        return [FailedJob.from_doc(json.loads(r)) for r in raw if r is not None]

    async def count(self, event_name: str | None = None, handler: str | None = None) -> int:
        return int(await self._client().zcard(self._index(event_name, handler)))

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
        deleted: list[Any] = await pipe.execute()
        # The DEL inside MULTI decides between concurrent takers.
        return job if deleted[0] == 1 else None

    async def remove(self, job_id: str) -> bool:
        return await self.take(job_id) is not None
