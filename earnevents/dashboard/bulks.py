"""The dashboard's bulk actions: background tasks in the dashboard's process, kept in memory.

A bulk retry or remove of failed jobs (:mod:`earnevents.bulk`) runs as an asyncio task on
the server's loop; its :class:`earnevents.bulk.Progress` is what the progress page reads.
The registry lives on the app (``app.state``), so it is per dashboard and per process: a
restart forgets the bulks (a running one stops with the process), and with several server
processes a progress page is found only by the process that started it. At the app's
shutdown (its lifespan) the running bulks are cancelled before earnevents is closed. It keeps the
:data:`KEEP` most recent bulks; older finished ones are forgotten.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from .. import bulk
from ..failures.selection import JobSelection

KEEP = 100
"""Bulks a dashboard remembers (finished ones beyond this are forgotten, oldest first)."""


@dataclass
class Bulk:
    """One bulk action: what it does to which jobs, and how far it got."""

    id: str
    action: bulk.Action
    selection: JobSelection
    filters: dict[str, str]
    """The filter as the operator typed it (for the link back to the list)."""
    progress: bulk.Progress
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    task: asyncio.Task[Any] | None = None


class Registry:
    """The bulks of one dashboard app, by id."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self.bulks: dict[str, Bulk] = {}

    def start(self, action: bulk.Action, selection: JobSelection, filters: dict[str, str]) -> Bulk:
        """Start ``action`` on the jobs ``selection`` matches, as a task of the running loop."""
        bulk.act_for(action)  # ValueError for an unknown action, before anything starts
        started = Bulk(secrets.token_hex(16), action, selection, dict(filters), bulk.Progress(action))
        started.task = asyncio.get_running_loop().create_task(
            bulk.run_selection(selection, action, started.progress), name=f"earnevents-dashboard-bulk-{started.id}"
        )
        self.bulks[started.id] = started
        self._forget_old()
        return started

    async def stop(self) -> None:
        """Cancel the bulks still running and wait for them to end (the app's shutdown)."""
        running = [b.task for b in self.bulks.values() if b.task is not None and not b.task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def get(self, bulk_id: str) -> Bulk | None:
        return self.bulks.get(bulk_id) if isinstance(bulk_id, str) else None

    def _forget_old(self) -> None:
        finished = [b.id for b in self.bulks.values() if b.progress.finished]  # oldest first (insertion order)
        for bulk_id in finished[: max(0, len(self.bulks) - self.keep)]:
            del self.bulks[bulk_id]


async def stop_all(app: Any) -> None:
    """Cancel the running bulks of the dashboard ``app`` (its lifespan does, before closing earnevents)."""
    found: Registry | None = getattr(app.state, "earnevents_bulks", None)
    if found is not None:
        await found.stop()


def registry(request: Request) -> Registry:
    """The registry of the dashboard app serving ``request`` (made on first use)."""
    state = request.app.state
    found: Registry | None = getattr(state, "earnevents_bulks", None)
    if found is None:
        found = state.earnevents_bulks = Registry()
    return found
