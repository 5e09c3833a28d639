"""Failed jobs in a MongoDB collection (PyMongo's async API).

Bounded: each document carries ``expire_at`` (``failed_at`` + ``max_age``, a real
datetime) under a TTL index, so MongoDB deletes it once expired (its TTL monitor
runs every 60 s; lists and counts leave out records older than ``max_age``
meanwhile); and adding one beyond ``max_jobs`` of the queue deletes the oldest.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

from bson.errors import InvalidDocument
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import WriteError

from .. import keys, names
from ..logtext import get_logger
from .base import DEFAULT_MAX_AGE, DEFAULT_MAX_JOBS
from .record import FailedJob

log = get_logger(__name__)

EXPIRE_AT = "expire_at"
"""Field (a datetime) under the TTL index: when MongoDB deletes the record."""

TRIM_BATCH = 1000
"""At most this many of the oldest records are deleted by one add, so lowering the cap on a
full collection spreads the work over the following failures."""

EVENT_AS_JSON = "event_json"
"""Field set to True when ``event`` is stored as its JSON wire form in a string (see add)."""

# What BSON or the server refuses in a document (a key with NUL, "$" or ".", an int beyond
# 64 bits, a string that is not valid UTF-8): properties of the data, not of the moment.
_UNSTORABLE = (InvalidDocument, OverflowError, UnicodeError, WriteError)


def _text(value: str) -> str:
    """``value`` with anything UTF-8 cannot carry (lone surrogates) escaped."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _as_json(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the event as its JSON wire string: storable whatever the event holds."""
    out = {k: _text(v) if isinstance(v, str) else v for k, v in doc.items()}
    out["event"] = json.dumps(doc["event"], separators=(",", ":"))  # ASCII, so valid UTF-8
    out[EVENT_AS_JSON] = True
    return out


class MongoFailureStore:
    """Used when a mongo_uri is configured; documents keyed by job id, lists show ``queue``'s."""

    def __init__(
        self,
        db: Callable[[], AsyncDatabase[Any]],
        queue: str,
        collection: str = keys.MONGO_FAILED_COLLECTION,
        *,
        max_jobs: int = DEFAULT_MAX_JOBS,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        self._db = db
        self.queue = queue
        self._name = collection
        self.max_jobs = max_jobs
        self.max_age = max_age
        self._indexed: set[int] = set()

    async def _col(self) -> AsyncCollection[Any]:
        col = self._db()[self._name]
        if id(col.database.client) not in self._indexed:
            await col.create_index([("queue", ASCENDING), ("failed_at", DESCENDING)])
            await col.create_index([("queue", ASCENDING), ("event_name", ASCENDING), ("failed_at", DESCENDING)])
            await col.create_index([("queue", ASCENDING), ("handler", ASCENDING), ("failed_at", DESCENDING)])
            # Per-document expiry (expireAfterSeconds=0 on a datetime of its own), so changing
            # EARNEVENTS_FAILED_MAX_AGE never conflicts with an existing index's options.
            await col.create_index([(EXPIRE_AT, ASCENDING)], expireAfterSeconds=0)
            self._indexed.add(id(col.database.client))
        return col

    def _filter(self, event_name: str | None, handler: str | None) -> dict[str, Any]:
        query: dict[str, Any] = {"queue": self.queue}
        if names.check_filter(event_name, "event_name") is not None:
            query["event_name"] = event_name
        if names.check_filter(handler, "handler") is not None:
            query["handler"] = handler
        return query

    def _cutoff(self) -> dt.datetime:
        """Records that failed before this are older than ``max_age``."""
        return dt.datetime.fromtimestamp(time.time() - self.max_age, dt.timezone.utc)

    def _live(self, query: dict[str, Any]) -> dict[str, Any]:
        """``query`` without records older than ``max_age`` (the TTL monitor may lag a minute)."""
        return {**query, "failed_at": {"$gte": self._cutoff()}}

    async def add(self, job: FailedJob) -> None:
        """Upsert ``job``; an event BSON refuses is stored as its JSON wire string instead.
        Then delete the queue's oldest records beyond ``max_jobs``."""
        await self._insert(job)
        await self._trim(job.queue)

    async def _trim(self, queue: str) -> None:
        col = await self._col()
        excess = min(await col.count_documents({"queue": queue}) - self.max_jobs, TRIM_BATCH)
        if excess <= 0:
            return
        oldest = col.find(
            {"queue": queue}, {"_id": 1}, sort=[("failed_at", ASCENDING), ("_id", ASCENDING)], limit=excess
        )
        ids = [doc["_id"] async for doc in oldest]
        await col.delete_many({"_id": {"$in": ids}})

    async def purge(
        self, older_than: float | None = None, event_name: str | None = None, handler: str | None = None
    ) -> int:
        col = await self._col()
        query = self._filter(event_name, handler)
        if older_than is not None:
            query["failed_at"] = {"$lt": dt.datetime.fromtimestamp(time.time() - older_than, dt.timezone.utc)}
        result = await col.delete_many(query)
        return result.deleted_count

    async def _insert(self, job: FailedJob) -> None:
        col = await self._col()
        doc = job.to_doc()
        doc[EXPIRE_AT] = job.failed_at + dt.timedelta(seconds=self.max_age)
        try:
            await col.replace_one({"_id": job.id}, doc, upsert=True)
        except _UNSTORABLE as exc:
            log.warning("failed job %s: stored with its event as JSON text (BSON refused it: %s)", job.id, exc)
            await col.replace_one({"_id": _text(job.id)}, _as_json(doc), upsert=True)

    async def list(
        self, limit: int = 100, offset: int = 0, event_name: str | None = None, handler: str | None = None
    ) -> list[FailedJob]:
        if limit <= 0:
            return []
        col = await self._col()
        cursor = col.find(
            self._live(self._filter(event_name, handler)),
            sort=[("failed_at", DESCENDING), ("_id", DESCENDING)],
            skip=offset,
            limit=limit,
        )
        return [FailedJob.from_doc(doc) async for doc in cursor]

    async def count(self, event_name: str | None = None, handler: str | None = None) -> int:
        col = await self._col()
        return await col.count_documents(self._live(self._filter(event_name, handler)))

    async def get(self, job_id: str) -> FailedJob | None:
        if not names.is_record_id(job_id, "job_id"):
            return None
        col = await self._col()
        doc = await col.find_one({"_id": job_id})
        return None if doc is None else FailedJob.from_doc(doc)

    async def take(self, job_id: str) -> FailedJob | None:
        if not names.is_record_id(job_id, "job_id"):
            return None
        col = await self._col()
        doc = await col.find_one_and_delete({"_id": job_id})
        return None if doc is None else FailedJob.from_doc(doc)

    async def remove(self, job_id: str) -> bool:
        if not names.is_record_id(job_id, "job_id"):
            return False
        col = await self._col()
        result = await col.delete_one({"_id": job_id})
        return result.deleted_count == 1
