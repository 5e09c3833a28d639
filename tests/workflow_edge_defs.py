"""Workflows of the edge-case tests (tests/test_workflows_edges.py): what a serious user
hits sooner or later (a step that hangs or kills its process, a payload the Context
refuses, a Context a deploy made invalid), and guarantees no other test exercises on
their own (sleep's ``then=None``, a workflow's ``default_retry``). Their workers import
this module (EARNEVENTS_HANDLER_MODULES=workflow_edge_defs)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from datetime import timedelta

from automation_models import Reservation  # noqa: F401  (its scheduled events fire in the workers that import this)
from pydantic import BaseModel, Field

from earnevents.workflows import Retry, complete, get_context, sleep, step, wait, wait_for_event, workflow

RELEASE = threading.Event()
"""Set by an in-process test when it ends: a step that hangs in a thread lets go (else after 30 s)."""


@workflow("edge_strict")
class EdgeStrict:
    """Waits for ``edge:set``; its Context refuses a negative ``count``."""

    class Context(BaseModel):
        count: int = Field(default=0, ge=0)
        label: str = ""

    @classmethod
    def create_context(cls):
        return cls.Context()

    @step(start=True)
    def await_set(self):
        return wait("edge:set", then=self.done)

    @step()
    def done(self):
        ctx = get_context()
        return complete(count=ctx.count, label=ctx.label)


@workflow("edge_exit")
class EdgeExit:
    """Its step ends the worker process (``os._exit``) every time it runs."""

    class Context(BaseModel):
        path: str

    @classmethod
    def create_context(cls, path: str):
        return cls.Context(path=path)

    @step(start=True)
    def crash(self):
        with open(get_context().path, "a") as fh:
            fh.write("started\n")
        os._exit(3)


@workflow("edge_hang")
class EdgeHang:
    """Its step never returns (``def`` blocks its thread, ``async def`` awaits forever), once
    per ``hangs``; then it completes."""

    class Context(BaseModel):
        kind: str
        hangs: int = 1
        tries: int = 0

    @classmethod
    def create_context(cls, kind: str, hangs: int = 1):
        return cls.Context(kind=kind, hangs=hangs)

    @step(start=True, retry=Retry(max_attempts=2, base_delay=timedelta(milliseconds=100)))
    async def hang(self):
        ctx = get_context()
        ctx.tries += 1
        if ctx.tries <= ctx.hangs:
            if ctx.kind == "async":
                await asyncio.sleep(3600)
            else:
                await asyncio.to_thread(_block)
        return complete(tries=ctx.tries)


def _block() -> None:
    deadline = time.monotonic() + 30
    while not RELEASE.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)


@workflow("edge_sync_hang")
class EdgeSyncHang:
    """A plain ``def`` step that blocks its thread on its first try."""

    class Context(BaseModel):
        tries: int = 0

    @classmethod
    def create_context(cls):
        return cls.Context()

    @step(start=True, retry=Retry(max_attempts=2, base_delay=timedelta(milliseconds=100)))
    def hang(self):
        ctx = get_context()
        ctx.tries += 1
        if ctx.tries == 1:
            _block()
        return complete(tries=ctx.tries)


@workflow("edge_again", default_retry=Retry(max_attempts=3, base_delay=timedelta(milliseconds=50), backoff=1.0))
class EdgeAgain:
    """``sleep(...)`` without ``then`` runs the same step again; its failures are retried by
    the workflow's ``default_retry`` (the step has no ``Retry`` of its own)."""

    class Context(BaseModel):
        visits: int = 0
        failures: int = 0

    @classmethod
    def create_context(cls):
        return cls.Context()

    @step(start=True)
    def poll(self):
        ctx = get_context()
        ctx.visits += 1
        if ctx.visits == 1:
            return sleep(timedelta(milliseconds=50))  # no then: poll again after the nap
        if ctx.failures < 2:
            ctx.failures += 1
            raise RuntimeError(f"flaky {ctx.failures}")
        return complete(visits=ctx.visits, failures=ctx.failures)


@workflow("edge_race")
class EdgeRace:
    """Waits for ``edge:go`` with a timeout: the signal goes to ``woken``, the timeout to ``late``."""

    class Context(BaseModel):
        how: str | None = None

    @classmethod
    def create_context(cls):
        return cls.Context()

    @step(start=True)
    def await_go(self):
        return wait("edge:go", timeout=60, on_timeout=self.late, then=self.woken)

    @step()
    def woken(self):
        return complete(how="signal")

    @step()
    def late(self):
        return complete(how="timeout")


@workflow("edge_stay")
class EdgeStay:
    """Follows one reservation: waits for its model event (``reservation_confirmed``, published
    when a save confirms it), then for its scheduled model event (``checkin_due``, fired by a
    worker at ``checkin_at``), each matched by the reservation's id."""

    class Context(BaseModel):
        reservation_id: str
        status: str | None = None
        seen: list[str] = []

    @classmethod
    def create_context(cls, reservation_id: str):
        return cls.Context(reservation_id=reservation_id)

    @step(start=True)
    def await_confirmed(self):
        match = {"id": get_context().reservation_id}
        return wait_for_event("reservation_confirmed", timeout=30, match=match, then=self.await_checkin)

    @step()
    def await_checkin(self):
        ctx = get_context()
        ctx.seen.append(f"confirmed:{ctx.status}")
        return wait_for_event("checkin_due", timeout=30, match={"id": ctx.reservation_id}, then=self.arrived)

    @step()
    def arrived(self):
        ctx = get_context()
        ctx.seen.append("checkin_due")
        return complete(seen=ctx.seen)


@workflow("edge_bad_result")
class EdgeBadResult:
    """Completes with a result no event could carry (an object), or one nested too deep."""

    class Context(BaseModel):
        how: str

    @classmethod
    def create_context(cls, how: str):
        return cls.Context(how=how)

    @step(start=True)
    def finish(self):
        if get_context().how == "object":
            return complete(when=object())
        deep: dict = {}
        inner = deep
        for _ in range(150):
            inner["x"] = {}
            inner = inner["x"]
        return complete(deep=deep)


@workflow("edge_docs")
class EdgeDocs:
    """The seed's ``await_docs``: waits for the ``edge_docs_uploaded`` event of its reservation."""

    class Context(BaseModel):
        reservation_id: str
        docs: str | None = None

    @classmethod
    def create_context(cls, reservation_id: str):
        return cls.Context(reservation_id=reservation_id)

    @step(start=True)
    def await_docs(self):
        ctx = get_context()
        if ctx.docs is not None:
            return complete(docs=ctx.docs)
        return wait_for_event("edge_docs_uploaded", match={"reservation_id": ctx.reservation_id})


@workflow("edge_loaded")
class EdgeLoaded:
    """Its ``create_context`` is async: it loads what the Context needs (seed users read the
    event's document there: ``await event.entity()``)."""

    class Context(BaseModel):
        name: str

    @classmethod
    async def create_context(cls, key: str):
        await asyncio.sleep(0)  # a lookup
        return cls.Context(name=key.upper())

    @step(start=True)
    def run(self):
        return complete(name=get_context().name)


@workflow("edge_sys_exit")
class EdgeSysExit:
    """Its step calls ``sys.exit`` (``def``: in its thread; ``async def``: on the worker's loop)."""

    class Context(BaseModel):
        kind: str
        tries: int = 0

    @classmethod
    def create_context(cls, kind: str):
        return cls.Context(kind=kind)

    @step(start=True)
    async def leave(self):
        get_context().tries += 1
        if get_context().kind == "async":
            sys.exit(2)
        return await asyncio.to_thread(_leave)


def _leave() -> None:
    sys.exit("bye")


@workflow("edge_big_context")
class EdgeBigContext:
    """Its step appends ``chunk`` characters to the Context once per try, then completes."""

    class Context(BaseModel):
        chunk: int
        notes: list[str] = []

    @classmethod
    def create_context(cls, chunk: int):
        return cls.Context(chunk=chunk)

    @step(start=True, retry=Retry(max_attempts=2, base_delay=timedelta(milliseconds=10)))
    def grow(self):
        ctx = get_context()
        ctx.notes.append("x" * ctx.chunk)
        return complete(notes=len(ctx.notes))
