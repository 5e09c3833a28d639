"""Sending active runs' messages again from MongoDB, after Redis lost them.

MongoDB is the source of truth for runs; Redis holds only what moves them on: a
running run's step message on the queue, a sleeping or waiting run's wake-up in the
delay schedule (:func:`engine.outgoing`). When Redis loses its data (a flush, a
failover to an empty replica, no persistence), :func:`reschedule` sends them all again:
the workers' rebuilder (``earnevents.worker.workflow_rebuild``) calls it at start and
whenever the marker :func:`keys.workflows_rebuilt` is gone. Sending again is harmless:
a wake-up already pending keeps its time and message, and a message for a version the
run has left is dropped by the worker that takes it (after sending the current one).

It takes its own clients, not the runtime's: the worker's main process has none.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from .. import keys, schedule
from ..logtext import get_logger
from .engine import Outgoing, outgoing
from .runs import ACTIVE, Run

log = get_logger(__name__)

GUARD_MS = 86_400_000
"""The longest one rebuild may take before it cannot tell whether Redis lost its data."""

MARK_MEMBER = "runs"
"""What :func:`reschedule` adds to the marker set when it is done."""


@dataclass(frozen=True)
class Rescheduled:
    """What :func:`reschedule` sent for one queue."""

    queue: str
    running: int
    """Step messages of running runs put on the queue again."""
    wake_ups: int
    """Wake-ups (sleeps' ends, wait timeouts, retries) put in the schedule (one pending already is left as it is)."""
    marked: bool
    """False when Redis lost its data while it ran: the next check does it again."""


async def reschedule(redis: Redis, db: Any, queue: str, *, batch: int = 500) -> Rescheduled:
    """Send the messages of ``queue``'s active runs again, then mark ``queue`` rebuilt unless
    Redis lost its data meanwhile (the guard key is gone)."""
    guard = keys.workflows_rebuilding(queue, uuid.uuid4().hex)
    await redis.set(guard, queue, px=GUARD_MS)
    running = wake_ups = 0
    pending: list[Outgoing] = []
    cursor = db[keys.MONGO_WORKFLOW_RUNS].find({"status": {"$in": list(ACTIVE)}, "queue": queue})
    async for doc in cursor:
        out = outgoing(Run.from_doc(doc))
        if out is None:
            continue
        pending.append(out)
        if out.at is None:
            running += 1
        else:
            wake_ups += 1
        if len(pending) >= batch:
            await _send(redis, queue, pending)
            pending = []
    await _send(redis, queue, pending)
    marked = bool(await redis.eval(schedule.MARK_REBUILT_SCRIPT, 2, guard, keys.workflows_rebuilt(queue), MARK_MEMBER))
    if not marked:
        log.warning(
            "Redis lost its data while the workflow runs of %s were sent again: not marked, so the workers "
            "send them again",
            queue,
        )
    log.info(
        "workflow runs of %s sent again from MongoDB: %d running step(s), %d wake-up(s)",
        queue,
        running,
        wake_ups,
    )
    return Rescheduled(queue, running, wake_ups, marked)


async def _send(redis: Redis, queue: str, outs: list[Outgoing]) -> None:
    if not outs:
        return
    pipe = redis.pipeline(transaction=False)
    for out in outs:
        if out.at is None:
            pipe.lpush(queue, out.triple[2])
        else:  # a wake-up pending already (Redis kept it, or the run moved on meanwhile) stays as it is
            script_keys, argv = schedule.add_args(queue, [out.triple], at=out.at, only_new=True)
            pipe.eval(schedule.ADD_SCRIPT, len(script_keys), *script_keys, *argv)
    await pipe.execute()
