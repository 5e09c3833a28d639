"""Workflows of the workflow tests, written the way seed 003's users write them (§4, §5);
the tests' workers import this module (EARNEVENTS_HANDLER_MODULES=workflow_defs)."""

from __future__ import annotations

import time
from datetime import timedelta

from pydantic import BaseModel

from earnevents.workflows import (
    Retry,
    complete,
    current_step_key,
    fail,
    get_context,
    goto,
    sleep,
    step,
    wait,
    workflow,
)


@workflow("reindex_listing")
class ReindexListing:
    class Context(BaseModel):
        listing_id: int
        reindexed: bool = False

    @classmethod
    def create_context(cls, listing_id: int):
        return cls.Context(listing_id=listing_id)

    @step(start=True)
    def run(self):
        get_context().reindexed = True
        return complete(listing_id=get_context().listing_id)


@workflow("ops_window")
class OpsWindow:
    """Sleeps, waits for a signal (timeout to a fallback), retries a flaky step, then ends."""

    class Context(BaseModel):
        token: str
        window: str | None = None
        attempts: int = 0
        keys: list[str] = []
        timed_out: bool = False
        final_state: str | None = None

    @classmethod
    def create_context(cls, token: str):
        return cls.Context(token=token)

    @step(start=True)
    def nap(self):
        return sleep(timedelta(milliseconds=300), then=self.pause_until_ops_window)

    @step()
    async def pause_until_ops_window(self):
        return wait.for_signal(
            "ops:window_open", timeout=timedelta(seconds=30), on_timeout="fallback", then=self.notify
        )

    @step()
    def fallback(self):
        get_context().timed_out = True
        return goto(self.notify)

    @step(retry=Retry(max_attempts=5, base_delay=timedelta(milliseconds=100)))
    def notify(self):
        ctx = get_context()
        ctx.attempts += 1
        ctx.keys.append(current_step_key())
        if ctx.attempts < 3:
            raise RuntimeError("transient failure")
        return goto(self.finalize)

    @step()
    def finalize(self):
        ctx = get_context()
        if ctx.window == "refuse":
            return fail("the window was refused")
        ctx.final_state = "ok"
        return complete(final_state="ok")


@workflow("slow_waiter")
class SlowWaiter:
    """Its first step takes a second before it returns the wait: a signal sent meanwhile still counts."""

    class Context(BaseModel):
        go: str | None = None

    @classmethod
    def create_context(cls):
        return cls.Context()

    @step(start=True)
    def prepare(self):
        time.sleep(1.0)
        return wait("slow:go", timeout=timedelta(seconds=30), on_timeout=self.gave_up, then=self.done)

    @step()
    def gave_up(self):
        return fail("no go")

    @step()
    def done(self):
        return complete(go=get_context().go)


@workflow("flaky_waiter")
class FlakyWaiter:
    """Its first step fails its first try, then returns the wait: a signal sent before the
    retry still counts (the window of one step visit starts with its first try)."""

    class Context(BaseModel):
        tries: int = 0
        go: str | None = None

    @classmethod
    def create_context(cls):
        return cls.Context()

    @step(start=True, retry=Retry(max_attempts=2, base_delay=timedelta(seconds=2)))
    def prepare(self):
        ctx = get_context()
        ctx.tries += 1
        if ctx.tries == 1:
            raise RuntimeError("transient failure")
        return wait("flaky:go", timeout=timedelta(seconds=30), on_timeout=self.gave_up, then=self.done)

    @step()
    def gave_up(self):
        return fail("no go")

    @step()
    def done(self):
        return complete(go=get_context().go)
