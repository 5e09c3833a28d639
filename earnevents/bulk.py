"""Retrying or removing every failed job a selection matches, in batches, with progress.

The ids are read first (:func:`matching_ids`): retrying or removing shifts the pages of
the list, so acting while walking would skip jobs. Then :func:`run` acts on them
:data:`BATCH` at a time, :data:`CONCURRENCY` of a batch at once, counting in a
:class:`Progress` that a caller may read at any moment (the dashboard's progress page
does, while the bulk runs as a background task). A job gone since its id was read
(retried or removed by someone else) is counted, not an error; another error stops the
bulk after the batch it happened in.

``earnevents failed retry|remove --all`` reads its ids with :func:`matching_ids` and acts
with :func:`act_for` too, in its own batches (its progress bar on the terminal).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .bus import event_bus
from .errors import EarnEventsError, JobNotFoundError
from .failures.selection import JobSelection, walk

Action = Literal["retry", "remove"]
ACTIONS: tuple[Action, ...] = ("retry", "remove")

BATCH = 500
"""Jobs retried or removed per batch (the progress advances at least this often)."""
CONCURRENCY = 32
"""Of a batch, jobs retried or removed at the same time (each a few Redis round trips)."""


async def matching_ids(selection: JobSelection) -> list[str]:
    """The ids of the failed jobs ``selection`` matches, newest first, each once."""
    return [job.id async for job in walk(event_bus.get_failed_jobs, selection)]


def act_for(action: Action) -> Callable[[str], Awaitable[Any]]:
    """The event bus' call that does ``action`` to one job by id."""
    if action == "retry":
        return event_bus.retry_job
    if action == "remove":
        return event_bus.remove_job
    raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")


def error_text(exc: BaseException) -> str:
    """What to show of an error that stopped a bulk: an earnevents error's message, else
    its type only (a driver's message may quote its connection string)."""
    if isinstance(exc, EarnEventsError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


@dataclass
class Progress:
    """Where a bulk is: ``total`` is None until the ids are read."""

    action: Action
    total: int | None = None
    done: int = 0
    """Jobs retried or removed."""
    gone: int = 0
    """Jobs not found any more (retried or removed meanwhile)."""
    errors: int = 0
    """Jobs whose retry or removal failed otherwise (the bulk stopped after their batch)."""
    error: str | None = None
    """The first such error (:func:`error_text`)."""
    finished: bool = False

    @property
    def processed(self) -> int:
        """Jobs dealt with so far, whatever the outcome."""
        return self.done + self.gone + self.errors


async def run(
    ids: Sequence[str],
    act: Callable[[str], Awaitable[Any]],
    progress: Progress,
    *,
    batch: int | None = None,
    concurrency: int | None = None,
) -> Progress:
    """``act`` on each of ``ids`` in batches of ``batch`` (None: :data:`BATCH`), ``concurrency``
    (None: :data:`CONCURRENCY`) at a time, counting in ``progress`` (its ``total`` set to
    ``len(ids)``, ``finished`` set at the end, also when stopped by an error or cancelled)."""
    batch = BATCH if batch is None else batch
    concurrency = CONCURRENCY if concurrency is None else concurrency
    if batch < 1 or concurrency < 1:
        raise ValueError("batch and concurrency must be at least 1")
    progress.total = len(ids)
    gate = asyncio.Semaphore(concurrency)

    async def one(job_id: str) -> None:
        async with gate:
            try:
                await act(job_id)
            except JobNotFoundError:
                progress.gone += 1
            except Exception as exc:
                progress.errors += 1
                if progress.error is None:
                    progress.error = error_text(exc)
            else:
                progress.done += 1

    try:
        for start in range(0, len(ids), batch):
            await asyncio.gather(*(one(job_id) for job_id in ids[start : start + batch]))
            if progress.errors:
                break
    finally:
        progress.finished = True
    return progress


async def run_selection(
    selection: JobSelection,
    action: Action,
    progress: Progress,
    *,
    batch: int | None = None,
    concurrency: int | None = None,
) -> Progress:
    """:func:`run` ``action`` on the jobs ``selection`` matches now (their ids read first).
    An error reading the ids finishes ``progress`` with it (``total`` stays None)."""
    act = act_for(action)
    try:
        ids = await matching_ids(selection)
    except Exception as exc:
        progress.error = error_text(exc)
        progress.finished = True
        return progress
    return await run(ids, act, progress, batch=batch, concurrency=concurrency)
