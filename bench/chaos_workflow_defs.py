"""The workflow of bench/chaos_workflows.py; its workers import this module
(EARNEVENTS_HANDLER_MODULES=bench.chaos_workflow_defs), and so does the driver.

``chaos_flow``: prepare -> goto reserve -> sleep 0.5-2 s -> park (waits for the signal
``chaos.go``, 60 s timeout: ``timed_out``) -> charge (fails its first try, retried by
``Retry``) -> finish -> complete. Each step, once past the point where it may fail, adds 1
to ``EFFECTS[current_step_key()]``: a count above 1 means that visit ran again (a worker
killed mid-step or before its outcome was saved). Every step is retried (``default_retry``)
when its side effect raises: Redis is down for a while. ``park`` sleeps a little before returning
the wait, so that signals the driver sends while it runs arrive before the wait is recorded.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from pydantic import BaseModel

from earnevents import runtime
from earnevents.workflows import Retry, complete, current_step_key, get_context, goto, sleep, step, wait, workflow

WORKFLOW = "chaos_flow"
SIGNAL = "chaos.go"
WAIT_TIMEOUT = 60.0
EFFECTS = "chaos-workflows:effects"
"""Hash: ``<run id>:<step>:<visit>`` (current_step_key) -> times that step visit ran to its side effect."""
TIMED_OUT = "chaos-workflows:timed-out"
"""Set: runs whose wait for the signal timed out (the signal never reached them)."""
PARK_SECONDS = 0.3
"""How long ``park`` takes before it returns the wait (the window for early signals)."""


async def side_effect() -> None:
    await runtime.current().redis.hincrby(EFFECTS, current_step_key(), 1)


@workflow(
    WORKFLOW, default_retry=Retry(max_attempts=10, base_delay=timedelta(seconds=0.5), max_delay=timedelta(seconds=4))
)
class ChaosFlow:
    class Context(BaseModel):
        index: int
        nap: float
        charge_tries: int = 0
        signalled_with: int | None = None
        timed_out: bool = False

    @classmethod
    def create_context(cls, index: int):
        return cls.Context(index=index, nap=random.Random(index).uniform(0.5, 2.0))

    @step(start=True)
    async def prepare(self):
        await side_effect()
        return goto(self.reserve)

    @step()
    async def reserve(self):
        await side_effect()
        return sleep(timedelta(seconds=get_context().nap), then=self.park)

    @step()
    async def park(self):
        await asyncio.sleep(PARK_SECONDS)
        await side_effect()
        return wait(SIGNAL, timeout=timedelta(seconds=WAIT_TIMEOUT), on_timeout=self.timed_out, then=self.charge)

    @step()
    async def timed_out(self):
        get_context().timed_out = True
        await runtime.current().redis.sadd(TIMED_OUT, get_context().index)
        await side_effect()
        return goto(self.charge)

    @step(retry=Retry(max_attempts=4, base_delay=timedelta(seconds=0.5)))
    async def charge(self):
        ctx = get_context()
        ctx.charge_tries += 1  # saved with the failure too: the retry sees it
        if ctx.charge_tries == 1:
            raise ConnectionError("payment provider unavailable (transient)")
        await side_effect()
        return goto(self.finish)

    @step()
    async def finish(self):
        await side_effect()
        ctx = get_context()
        return complete(index=ctx.index, signalled_with=ctx.signalled_with, charge_tries=ctx.charge_tries)
