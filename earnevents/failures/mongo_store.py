"""Failed jobs in a MongoDB collection (PyMongo's async API)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from bson.errors import InvalidDocument
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import WriteError

from .. import keys, names
from ..logtext import get_logger
from .record import FailedJob

log = get_logger(__name__)

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
        self, db: Callable[[], AsyncDatabase[Any]], queue: str, collection: str = keys.MONGO_FAILED_COLLECTION
    ) -> None:
        self._db = db
        self.queue = queue
        self._name = collection
        self._indexed: set[int] = set()

    async def _col(self) -> AsyncCollection[Any]:
        col = self._db()[self._name]
        if id(col.database.client) not in self._indexed:
            await col.create_index([("queue", ASCENDING), ("failed_at", DESCENDING)])
            await col.create_index([("queue", ASCENDING), ("event_name", ASCENDING), ("failed_at", DESCENDING)])
            await col.create_index([("queue", ASCENDING), ("handler", ASCENDING), ("failed_at", DESCENDING)])
            self._indexed.add(id(col.database.client))
        return col

    def _filter(self, event_name: str | None, handler: str | None) -> dict[str, Any]:
        query: dict[str, Any] = {"queue": self.queue}
        if names.check_filter(event_name, "event_name") is not None:
            query["event_name"] = event_name
        if names.check_filter(handler, "handler") is not None:
            query["handler"] = handler
        return query

    async def add(self, job: FailedJob) -> None:
        """Upsert ``job``; an event BSON refuses is stored as its JSON wire string instead."""
        col = await self._col()
        doc = job.to_doc()
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
            self._filter(event_name, handler),
            sort=[("failed_at", DESCENDING), ("_id", DESCENDING)],
            skip=offset,
            limit=limit,
        )
        return [FailedJob.from_doc(doc) async for doc in cursor]

    async def count(self, event_name: str | None = None, handler: str | None = None) -> int:
        col = await self._col()
        return await col.count_documents(self._filter(event_name, handler))

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
