"""Failed jobs in a MongoDB collection (PyMongo's async API).

Bounded: each document carries ``expire_at`` (``failed_at`` + ``max_age``, a real
datetime) under a TTL index, so MongoDB deletes it once expired (its TTL monitor
runs every 60 s; lists and counts leave out records older than ``max_age``
meanwhile); and adding one beyond ``max_jobs`` of the queue deletes the oldest.
"""

from __future__ import annotations

import datetime as dt
import json
import re
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
from .selection import JobSelection, checked

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


def literal_pattern(text: str) -> str:
    """A regular expression matching ``text`` itself anywhere: every character that means
    something to a pattern is escaped, for PCRE (MongoDB) and Python's re (nx-27017) alike,
    and NUL (which BSON cannot carry in a pattern) is written as ``\\x00``."""
    return re.escape(text).replace("\x00", "\\x00")


async def _is_nx_27017(col: AsyncCollection[Any]) -> bool:
    """Whether the server is nx-27017 (its buildInfo names its process; MongoDB's does not)."""
    info = await col.database.client.admin.command("buildInfo")
    return info.get("process") == "nx_27017"


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
            # Each serves a filter (none, event name, handler) with the time window as a range
            # and list's order (failed_at, _id) read off the index: no sort in memory, and a
            # deep offset skips index entries. The error text is matched on the documents the
            # index range yields. nx-27017 (the stand-in the tests use) cannot index _id (its
            # writes fail after such an index is made): it gets the indexes without it.
            tiebreak = [] if await _is_nx_27017(col) else [("_id", DESCENDING)]
            for field in (None, "event_name", "handler"):
                prefix = [("queue", ASCENDING)] + ([(field, ASCENDING)] if field else [])
                await col.create_index([*prefix, ("failed_at", DESCENDING), *tiebreak])
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

    def _query(self, selection: JobSelection | None) -> dict[str, Any]:
        """One query for all of ``selection``, values as values: names compared for equality, the
        error text as an escaped pattern (:func:`literal_pattern`), the window a failed_at range
        that never reaches back past ``max_age`` (the TTL monitor may lag a minute)."""
        selection = checked(selection)
        query = self._filter(selection.event_name, selection.handler)
        cutoff = self._cutoff()
        window: dict[str, Any] = {"$gte": cutoff if selection.since is None else max(cutoff, selection.since)}
        if selection.until is not None:
            window["$lte"] = selection.until
        query["failed_at"] = window
        error = names.check_filter(selection.error, "error")
        if error is not None:
            # As _insert stores a text UTF-8 cannot carry (lone surrogates escaped).
            query["error"] = {"$regex": literal_pattern(_text(error))}
        return query

    def _cutoff(self) -> dt.datetime:
        """Records that failed before this are older than ``max_age``."""
        return dt.datetime.fromtimestamp(time.time() - self.max_age, dt.timezone.utc)

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

    def document(self, job: FailedJob) -> dict[str, Any]:
        """The document :meth:`add` stores for ``job`` (when BSON takes its event as it is);
        ``bench/failed_jobs_scale.py`` bulk-inserts these."""
        doc = job.to_doc()
        doc[EXPIRE_AT] = job.failed_at + dt.timedelta(seconds=self.max_age)
        return doc

    async def _insert(self, job: FailedJob) -> None:
        col = await self._col()
        doc = self.document(job)
        try:
            await col.replace_one({"_id": job.id}, doc, upsert=True)
        except _UNSTORABLE as exc:
            log.warning("failed job %s: stored with its event as JSON text (BSON refused it: %s)", job.id, exc)
            await col.replace_one({"_id": _text(job.id)}, _as_json(doc), upsert=True)

    async def list(self, limit: int = 100, offset: int = 0, selection: JobSelection | None = None) -> list[FailedJob]:
        query = self._query(selection)
        if limit <= 0:
            return []
        col = await self._col()
        cursor = col.find(query, sort=[("failed_at", DESCENDING), ("_id", DESCENDING)], skip=offset, limit=limit)
        return [FailedJob.from_doc(doc) async for doc in cursor]

    async def count(self, selection: JobSelection | None = None) -> int:
        col = await self._col()
        return await col.count_documents(self._query(selection))

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
