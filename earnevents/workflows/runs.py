"""Workflow runs in MongoDB (``earnevents_workflow_runs``): the record and its transitions.

A run document is the source of truth. Every change is one compare-and-set on its
``version`` (and, where it matters, its ``status``): of two changes racing for one
run (a signal and its timeout, a retry and a cancel) exactly one applies, the other
finds no document and leaves nothing but a history line. Times are unix seconds
(floats) and history lines JSON strings, so the record reads the same on every
MongoDB-compatible server.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bson

from .. import keys, runtime
from ..errors import EarnEventsError

RUNNING, SLEEPING, WAITING, COMPLETED, FAILED, CANCELLED = (
    "running",
    "sleeping",
    "waiting",
    "completed",
    "failed",
    "cancelled",
)
STATUSES = (RUNNING, SLEEPING, WAITING, COMPLETED, FAILED, CANCELLED)
FINAL = (COMPLETED, FAILED, CANCELLED)
ACTIVE = (RUNNING, SLEEPING, WAITING)

START = "start"
"""``waiting_for["kind"]`` of a run an ``@event_workflow`` created for a later start: it is
``waiting`` until ``wake_at``, then starts its start step (no signal or event wakes it)."""

HISTORY_MAX = 200
"""History lines a run keeps (the newest); ``history_dropped`` counts the others."""

CONTEXT_MAX_BYTES = 8 * 1024 * 1024
"""The largest Context (as BSON) a step may leave: half of MongoDB's 16 MiB document limit,
leaving room for the run's history and a signal's payload merged into it."""


class ContextTooLargeError(EarnEventsError, ValueError):
    """A step left a Context larger than :data:`CONTEXT_MAX_BYTES`: it is the step's failure
    (the Context saved before the step is kept), not a run no write can move on."""


def check_context_size(context: Mapping[str, Any], step: str) -> None:
    """ContextTooLargeError when ``context`` is over :data:`CONTEXT_MAX_BYTES` as BSON."""
    size = len(bson.encode(context))
    if size > CONTEXT_MAX_BYTES:
        raise ContextTooLargeError(
            f"step {step} left a Context of {size:,} bytes as BSON, over the {CONTEXT_MAX_BYTES:,} a run may "
            "save (MongoDB's document limit is 16 MiB): keep large data elsewhere and its id in the Context"
        )


@dataclass(frozen=True)
class Run:
    """One run of a workflow, as stored."""

    id: str
    workflow: str
    status: str
    step: str
    version: int
    """Counts every change: each message of the run names the version it was sent for."""
    visit: int
    """Counts step entries (start, goto, wake-up, resume), not retries: :func:`current_step_key`."""
    context: dict[str, Any]
    attempts: int = 0
    """Tries of the current step visit that failed so far."""
    waiting_for: dict[str, Any] | None = None
    wake_at: float | None = None
    step_started_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None
    entity: dict[str, str] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    history_dropped: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    queue: str = ""

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Run:
        history = [json.loads(line) if isinstance(line, str) else dict(line) for line in doc.get("history") or []]
        return cls(
            id=doc["_id"],
            workflow=doc["workflow"],
            status=doc["status"],
            step=doc["step"],
            version=int(doc["version"]),
            visit=int(doc.get("visit") or 0),
            context=dict(doc.get("context") or {}),
            attempts=int(doc.get("attempts") or 0),
            waiting_for=doc.get("waiting_for"),
            wake_at=doc.get("wake_at"),
            step_started_at=doc.get("step_started_at"),
            result=doc.get("result"),
            error=doc.get("error"),
            traceback=doc.get("traceback"),
            entity=doc.get("entity"),
            history=history,
            history_dropped=max(0, int(doc.get("history_count") or 0) - len(history)),
            created_at=float(doc.get("created_at") or 0.0),
            updated_at=float(doc.get("updated_at") or 0.0),
            queue=doc.get("queue") or "",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, for the CLI's ``--json``."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def start_wait(event_name: str, start_step: str, offset_minutes: float) -> dict[str, Any]:
    """``waiting_for`` of a run created to start later: the event it starts on (``name``, the
    trigger's event, ``offset_minutes`` from its time) and the step it starts at (``then``)."""
    return {"kind": START, "name": event_name, "then": start_step, "offset_minutes": offset_minutes}


def waits_to_start(run: Run) -> bool:
    """Whether ``run`` is waiting for its start (not for a signal or an event)."""
    return run.status == WAITING and (run.waiting_for or {}).get("kind") == START


def new_run_id() -> str:
    return uuid.uuid4().hex


def line(what: str, **details: Any) -> dict[str, Any]:
    """One history line: what happened, when, and its details."""
    return {"at": time.time(), "what": what, **{k: v for k, v in details.items() if v is not None}}


def collection() -> Any:
    return runtime.current().db[keys.MONGO_WORKFLOW_RUNS]


async def insert(doc: dict[str, Any], first: dict[str, Any]) -> None:
    now = time.time()
    doc.update(
        version=0,
        history=[json.dumps(first, default=str)],
        history_count=1,
        created_at=now,
        updated_at=now,
    )
    await collection().insert_one(doc)


async def get(run_id: str) -> Run | None:
    if not isinstance(run_id, str):
        raise TypeError(f"run_id must be a str, got {type(run_id).__name__}")
    doc = await collection().find_one({"_id": run_id})
    return None if doc is None else Run.from_doc(doc)


async def transition(
    run: Run,
    statuses: tuple[str, ...],
    changes: Mapping[str, Any],
    entry: dict[str, Any],
    *,
    new_visit: bool = False,
) -> Run | None:
    """Apply ``changes`` if the run is still at ``run.version`` in one of ``statuses``;
    the run after it, or None when another change came first."""
    from pymongo import ReturnDocument  # workflows run on MongoDB: imported there, not at every start

    increments = {"version": 1, "history_count": 1}
    if new_visit:
        increments["visit"] = 1
    doc = await collection().find_one_and_update(
        {"_id": run.id, "version": run.version, "status": {"$in": list(statuses)}},
        {
            "$set": {**changes, "updated_at": time.time()},
            "$inc": increments,
            "$push": {"history": {"$each": [json.dumps(entry, default=str)], "$slice": -HISTORY_MAX}},
        },
        return_document=ReturnDocument.AFTER,
    )
    return None if doc is None else Run.from_doc(doc)


async def note(run_id: str, entry: dict[str, Any]) -> None:
    """Add a history line without changing the run (the loser of a race says so)."""
    await collection().update_one(
        {"_id": run_id},
        {
            "$inc": {"history_count": 1},
            "$push": {"history": {"$each": [json.dumps(entry, default=str)], "$slice": -HISTORY_MAX}},
        },
    )


async def find(
    workflow: str | None = None,
    status: str | None = None,
    entity: Mapping[str, str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Run]:
    """Runs, newest first, filtered by workflow name, status and entity (model, id)."""
    query: dict[str, Any] = {}
    for what, value in (("workflow", workflow), ("status", status)):
        if value is not None:
            if not isinstance(value, str):
                raise TypeError(f"{what} must be a str, got {type(value).__name__}")
            query[what] = value
    if entity is not None:
        model, record_id = entity.get("model"), entity.get("id")
        if not isinstance(model, str) or not isinstance(record_id, str):
            raise TypeError("entity must be {'model': str, 'id': str}")
        query["entity.model"], query["entity.id"] = model, record_id
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must not be negative")
    if limit == 0:
        return []
    cursor = collection().find(query).sort([("created_at", -1), ("_id", 1)]).skip(offset).limit(limit)
    return [Run.from_doc(doc) async for doc in cursor]


async def waiting_for(kind: str, name: str, run_id: str | None = None) -> list[Run]:
    """The runs waiting for the signal or event ``name`` (one run, with ``run_id``); never a
    run waiting for its start, whatever its trigger's name (its kind is :data:`START`)."""
    if kind == START:
        return []
    query: dict[str, Any] = {"status": WAITING, "waiting_for.kind": kind, "waiting_for.name": name}
    if run_id is not None:
        query["_id"] = run_id
    return [Run.from_doc(doc) async for doc in collection().find(query)]


async def active() -> list[Run]:
    """Every run that is running, sleeping or waiting (to schedule their messages again)."""
    return [Run.from_doc(doc) async for doc in collection().find({"status": {"$in": list(ACTIVE)}})]
