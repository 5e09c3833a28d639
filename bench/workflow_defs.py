"""The workflows of the workflow figures (9, 10); their workers import this module
(EARNEVENTS_HANDLER_MODULES=bench.workflow_defs), and so does the process that starts
and signals the runs. The Celery side of figure 9 is ``plain.step`` in bench/plain_celery.py."""

from __future__ import annotations

import time

from pydantic import BaseModel

from earnevents import runtime
from earnevents.workflows import complete, get_context, goto, step, wait, workflow


async def count() -> None:
    """One Redis round trip per step, as every task of the Celery chain does."""
    await runtime.current().redis.incr(get_context().key)


@workflow("bench_five_steps")
class FiveSteps:
    """start -> goto -> goto -> goto -> goto -> complete: five trivial async steps."""

    class Context(BaseModel):
        key: str

    @classmethod
    def create_context(cls, key: str):
        return cls.Context(key=key)

    @step(start=True)
    async def one(self):
        await count()
        return goto(self.two)

    @step()
    async def two(self):
        await count()
        return goto(self.three)

    @step()
    async def three(self):
        await count()
        return goto(self.four)

    @step()
    async def four(self):
        await count()
        return goto(self.five)

    @step()
    async def five(self):
        await count()
        return complete()


@workflow("bench_signalled")
class Signalled:
    """Waits for the signal ``bench.go``; the step after records how long after the signal
    was sent (``sent_at``, merged from its payload) it started."""

    class Context(BaseModel):
        key: str
        sent_at: float = 0.0

    @classmethod
    def create_context(cls, key: str):
        return cls.Context(key=key)

    @step(start=True)
    async def park(self):
        return wait("bench.go", then=self.record)

    @step()
    async def record(self):
        ctx = get_context()
        await runtime.current().redis.rpush(ctx.key, time.time() - ctx.sent_at)
        return complete()
