"""An example workflow for the demo: onboarding waits for a verification signal, with a timeout."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from earnevents.workflows import Retry, complete, get_context, goto, step, wait, workflow


@workflow("onboard_customer")
class OnboardCustomer:
    class Context(BaseModel):
        email: str
        verified_by: str | None = None
        tries: int = 0

    @classmethod
    def create_context(cls, email: str):
        return cls.Context(email=email)

    @step(start=True)
    def send_welcome(self):
        return wait("customer:verified", timeout=timedelta(seconds=30), on_timeout=self.remind, then=self.activate)

    @step()
    def remind(self):
        return complete(outcome="reminded")

    @step(retry=Retry(max_attempts=3, base_delay=timedelta(milliseconds=200)))
    def activate(self):
        ctx = get_context()
        ctx.tries += 1
        if ctx.tries < 2:
            raise RuntimeError("the CRM is busy")  # retried: the Context keeps the count
        return goto(self.done)

    @step()
    def done(self):
        return complete(outcome="active", verified_by=get_context().verified_by)
