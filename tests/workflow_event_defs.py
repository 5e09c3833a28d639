"""Workflows started by events and waiting for them, written the way seed 003's users
write them (§3, §4), with offsets and timeouts in seconds' fractions of minutes so the
tests stay short; the tests' workers import this module
(EARNEVENTS_HANDLER_MODULES=workflow_event_defs)."""

from __future__ import annotations

import time
from datetime import timedelta

from automation_models import Reservation
from pydantic import BaseModel

from earnevents.workflows import complete, event_workflow, get_context, goto, step, wait_for_event


@event_workflow(event_name="checkin_due", offset_minutes=-0.05, entity_type=Reservation)  # 3 s before check-in
class PreArrivalReminder:
    class Context(BaseModel):
        reservation_id: str
        reminded_at: float | None = None

    @classmethod
    def create_context(cls, event=None):
        return cls.Context(reservation_id=event.entity_ref.id)

    @step(start=True)
    def run(self):
        get_context().reminded_at = time.time()  # send reminder
        return complete(reservation_id=get_context().reservation_id)


@event_workflow(event_name="checkout_started")
class CheckoutOpsWF:
    """§4's CheckoutOpsWF: waits for the guest's documents (matched by reservation), or
    falls back when they do not come in time."""

    class Context(BaseModel):
        reservation_id: str
        docs_timeout: float = 30.0
        step_delay: float = 0.0
        docs_ready: bool = False
        docs: str | None = None
        final_state: str | None = None

    @classmethod
    def create_context(cls, event=None):
        return cls.Context(**event.data)

    @step(start=True)
    def await_docs(self):
        ctx = get_context()
        if ctx.docs_ready:
            return goto(self.finalize)
        time.sleep(ctx.step_delay)  # a slow step: an event may come before the wait is recorded
        return wait_for_event(
            "guest_docs_uploaded",
            timeout=timedelta(seconds=ctx.docs_timeout),
            on_timeout="fallback_docs",
            match={"reservation_id": ctx.reservation_id},
        )

    @step()
    def fallback_docs(self):
        get_context().docs = "fallback"  # proceed with default docs
        return goto(self.finalize)

    @step()
    def finalize(self):
        ctx = get_context()
        ctx.final_state = "ok"
        return complete(final_state="ok", docs=ctx.docs)


@event_workflow(event_name="guest_checked_out", offset_minutes=0.03)  # 1.8 s after the event
class FeedbackRequest:
    class Context(BaseModel):
        guest: str
        asked_at: float | None = None

    @classmethod
    def create_context(cls, event=None):
        return cls.Context(guest=event.data["guest"])

    @step(start=True)
    def ask(self):
        get_context().asked_at = time.time()
        return complete()


@event_workflow(event_name="guest_docs_uploaded", offset_minutes=10)  # ten minutes after the documents
class DocsFollowUp:
    """Started by the event CheckoutOpsWF waits for: its run waits for its start, which no
    guest_docs_uploaded event (nor a signal of that name) may bring forward."""

    class Context(BaseModel):
        reservation_id: str | None = None

    @classmethod
    def create_context(cls, event=None):
        return cls.Context(reservation_id=event.data.get("reservation_id"))

    @step(start=True)
    def follow_up(self):
        return complete(reservation_id=get_context().reservation_id)
