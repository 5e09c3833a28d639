"""Workflows of the semantics tests (tests/test_workflows_semantics_e2e.py): the seed's §4
CheckoutOpsWF as its users write it (durations in seconds so the tests stay short), and
small workflows that exercise one guarantee each; the tests' workers import this module
(EARNEVENTS_HANDLER_MODULES=workflow_semantics_defs)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from earnevents.workflows import (
    Retry,
    complete,
    current_run_id,
    engine,
    event_workflow,
    fail,
    get_context,
    goto,
    step,
    wait,
    wait_for_event,
    workflow,
)


@event_workflow(
    event_name="sem_checkout_due",
    offset_minutes=-120,  # 2h before checkout (an event with no time known in advance: starts at once)
    default_retry=Retry(max_attempts=3, base_delay=timedelta(milliseconds=200)),
    name="SemCheckoutOpsWF",  # CheckoutOpsWF is tests/workflow_event_defs.py's
)
class CheckoutOpsWF:
    class Context(BaseModel):
        reservation_id: str
        docs_timeout: float = 90 * 60
        hold_for_ops_window: bool = False
        housekeeping: bool = True
        window: str | None = None
        docs_ready: bool = False
        notified: bool = False
        attempts: int = 0
        final_state: str | None = None

    @classmethod
    def create_context(cls, event=None):
        return cls.Context(reservation_id=event.entity_ref.id, **event.data)

    @step(start=True)
    def await_docs(self):
        ctx = get_context()
        if ctx.docs_ready:
            return goto(self.notify_housekeeping)
        # no then: this step runs again when the documents come, and goes on then
        return wait_for_event(
            "guest_docs_uploaded", timeout=timedelta(seconds=ctx.docs_timeout), on_timeout="fallback_docs"
        )

    @step()
    def fallback_docs(self):
        # proceed with default docs (in the ops window, when asked to hold for it)
        if get_context().hold_for_ops_window:
            return goto(self.pause_until_ops_window)
        return goto(self.notify_housekeeping)

    @step()
    def pause_until_ops_window(self):
        if get_context().window is not None:
            return goto(self.notify_housekeeping)
        return wait.for_signal("ops:window_open")  # elsewhere: engine.signal("ops:window_open", {"window": ...})

    @step(retry=Retry(max_attempts=5, base_delay=timedelta(milliseconds=200)))
    def notify_housekeeping(self):
        ctx = get_context()
        if not ctx.housekeeping:  # housekeeping switched off: nobody is notified
            return goto(self.finalize)
        ctx.attempts += 1
        if ctx.attempts < 2:
            raise RuntimeError("transient failure")  # triggers per-step retry
        ctx.notified = True
        return goto(self.finalize)

    @step()
    def finalize(self):
        ctx = get_context()
        if not ctx.notified:
            return fail("Housekeeping was not notified")
        ctx.final_state = "ok"
        return complete(final_state="ok")


@workflow("sem_always_fails")
class AlwaysFails:
    """A step that raises every time, three tries in all; each try leaves a mark in the Context."""

    class Context(BaseModel):
        tries: int = 0
        marks: list[str] = []

    @classmethod
    def create_context(cls):
        return cls.Context()

    @step(start=True, retry=Retry(max_attempts=3, base_delay=timedelta(milliseconds=100), backoff=1.0))
    def call_partner(self):
        ctx = get_context()
        ctx.tries += 1
        ctx.marks.append(f"try {ctx.tries}")
        raise ValueError(f"partner down (try {ctx.tries})")


@workflow("sem_misdirected")
class Misdirected:
    """Its first step returns what the Context says: a goto to a step name, a goto to a method
    found by name (``getattr``), or nothing at all."""

    class Context(BaseModel):
        how: str
        target: str = ""

    @classmethod
    def create_context(cls, how: str, target: str = ""):
        return cls.Context(how=how, target=target)

    @step(start=True)
    def route(self):
        ctx = get_context()
        if ctx.how == "name":
            return goto(ctx.target)
        if ctx.how == "getattr":
            return goto(getattr(self, ctx.target))
        return None  # forgot to return a command

    @step()
    def finish(self):
        return complete()

    def helper(self):
        """A method, but no step."""


@workflow("sem_patient")
class Patient:
    """Waits for ``sem:go`` (without a timeout unless given one); the payload's ``note`` lands in the Context."""

    class Context(BaseModel):
        timeout: float | None = None
        note: str | None = None

    @classmethod
    def create_context(cls, timeout: float | None = None):
        return cls.Context(timeout=timeout)

    @step(start=True)
    def await_go(self):
        timeout = get_context().timeout
        return wait("sem:go", timeout=None if timeout is None else timedelta(seconds=timeout), then=self.done)

    @step()
    def done(self):
        return complete(note=get_context().note)


@workflow("sem_child")
class Child:
    class Context(BaseModel):
        parent: str

    @classmethod
    def create_context(cls, parent: str):
        return cls.Context(parent=parent)

    @step(start=True)
    def run(self):
        return complete(parent=get_context().parent)


@workflow("sem_parent")
class Parent:
    """Its step starts a child run, and resumes the run ``resume`` names, if any."""

    class Context(BaseModel):
        resume: str | None = None
        child: str | None = None

    @classmethod
    def create_context(cls, resume: str | None = None):
        return cls.Context(resume=resume)

    @step(start=True)
    async def spawn(self):
        ctx = get_context()
        ctx.child = await engine.start("sem_child", parent=current_run_id())
        if ctx.resume is not None:
            await engine.resume(ctx.resume)
        return complete(child=ctx.child)
