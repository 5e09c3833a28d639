"""Workflows of the operating and recovery tests (races, a worker killed mid-step, Redis
losing its data, many sleeping runs); their workers import this module
(EARNEVENTS_HANDLER_MODULES=workflow_ops_defs)."""

from __future__ import annotations

import os
import time
from datetime import timedelta

from pydantic import BaseModel

from earnevents.workflows import Retry, complete, current_step_key, get_context, sleep, step, wait, workflow


@workflow("ops_race")
class OpsRace:
    """Waits for a signal with a short timeout: exactly one of the two moves it on."""

    class Context(BaseModel):
        timeout: float
        how: str | None = None

    @classmethod
    def create_context(cls, timeout: float):
        return cls.Context(timeout=timeout)

    @step(start=True)
    def await_go(self):
        return wait("ops:go", timeout=timedelta(seconds=get_context().timeout), on_timeout=self.late, then=self.woken)

    @step()
    def woken(self):
        return complete(how="signal")

    @step()
    def late(self):
        return complete(how="timeout")


@workflow("ops_flaky_forever")
class OpsFlakyForever:
    """A step that takes 30 ms and raises, retried every 50 ms for as long as the run lasts
    (a cancel lands as often mid-step as between tries)."""

    class Context(BaseModel):
        tries: int = 0

    @classmethod
    def create_context(cls):
        return cls.Context()

    @step(start=True, retry=Retry(max_attempts=10_000, base_delay=timedelta(milliseconds=50), backoff=1.0))
    def keep_failing(self):
        get_context().tries += 1
        time.sleep(0.03)
        raise RuntimeError("still down")


@workflow("ops_blocking")
class OpsBlocking:
    """Its step writes its key to a file, then blocks until a release file exists (the test
    kills the worker meanwhile); the Context change before the block is counted once."""

    class Context(BaseModel):
        path: str
        touched: int = 0

    @classmethod
    def create_context(cls, path: str):
        return cls.Context(path=path)

    @step(start=True)
    def block(self):
        ctx = get_context()
        ctx.touched += 1
        with open(ctx.path + ".keys", "a") as fh:
            fh.write(current_step_key() + "\n")
        deadline = time.monotonic() + 60
        while not os.path.exists(ctx.path + ".release") and time.monotonic() < deadline:
            time.sleep(0.05)
        return complete(touched=ctx.touched)


@workflow("ops_nap")
class OpsNap:
    """Sleeps ``seconds``, then completes."""

    class Context(BaseModel):
        seconds: float
        woke: bool = False

    @classmethod
    def create_context(cls, seconds: float):
        return cls.Context(seconds=seconds)

    @step(start=True)
    def nap(self):
        return sleep(get_context().seconds, then=self.finish)

    @step()
    def finish(self):
        get_context().woke = True
        return complete(woke=True)


@workflow("ops_patient")
class OpsPatient:
    """Waits for ``ops:never`` until its timeout, then completes by the timeout's step."""

    class Context(BaseModel):
        timeout: float
        timed_out: bool = False

    @classmethod
    def create_context(cls, timeout: float):
        return cls.Context(timeout=timeout)

    @step(start=True)
    def await_nothing(self):
        return wait("ops:never", timeout=get_context().timeout, on_timeout=self.gave_up)

    @step()
    def gave_up(self):
        get_context().timed_out = True
        return complete(timed_out=True)


@workflow("ops_signalled")
class OpsSignalled:
    """Waits for ``ops:ready`` without a timeout; its payload's ``note`` lands in the Context."""

    class Context(BaseModel):
        note: str | None = None

    @classmethod
    def create_context(cls):
        return cls.Context()

    @step(start=True)
    def await_ready(self):
        return wait("ops:ready", then=self.done)

    @step()
    def done(self):
        return complete(note=get_context().note)


@workflow("ops_deadline")
class OpsDeadline:
    """Waits for ``ops:never`` half a second, no on_timeout: the run fails timed out."""

    class Context(BaseModel):
        fell_back: bool = False

    @classmethod
    def create_context(cls):
        return cls.Context()

    @step(start=True)
    def await_nothing(self):
        return wait("ops:never", timeout=0.5)

    @step()
    def fallback(self):
        get_context().fell_back = True
        return complete(fell_back=True)
