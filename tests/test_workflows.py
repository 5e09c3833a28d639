"""Workflow declarations and commands, checked where they are written (no worker)."""

from __future__ import annotations

import datetime as dt
import importlib.util

import pydantic
import pytest

from earnevents.workflows import (
    Retry,
    complete,
    event_workflow,
    fail,
    goto,
    sleep,
    step,
    wait,
    wait_for_event,
    workflow,
)
from earnevents.workflows.commands import Goto, Sleep, Wait
from earnevents.workflows.definitions import registry


@pytest.fixture(autouse=True)
def _forget_declared():
    before = set(registry)
    yield
    for name in set(registry) - before:
        del registry[name]


class Ctx(pydantic.BaseModel):
    n: int = 0


def test_a_workflow_is_registered_with_its_steps_start_retry_and_awaited_events():
    @workflow("tw_ok", default_retry=Retry(max_attempts=2))
    class Ok:
        Context = Ctx

        @classmethod
        def create_context(cls):
            return Ctx()

        @step(start=True)
        def first(self):
            return wait_for_event("tw.docs", timeout=5, on_timeout="second", then=self.third)

        @step(retry=Retry(max_attempts=5))
        async def second(self):
            return goto(self.third)

        @step()
        def third(self):
            return complete()

    spec = registry["tw_ok"]
    assert spec.cls is Ok and Ok.__workflow__ is spec
    assert spec.start == "first" and set(spec.steps) == {"first", "second", "third"}
    assert spec.steps["second"].is_async and not spec.steps["first"].is_async
    assert spec.retry_of("second").max_attempts == 5 and spec.retry_of("third").max_attempts == 2
    assert spec.awaited_events == {"tw.docs"}


@pytest.mark.parametrize(
    "body, error",
    [
        ("return goto('nowhere')", "goes to 'nowhere'"),
        ("return goto(self.nowhere)", "goes to 'nowhere'"),
        ("return sleep(1, then='nowhere')", "goes to 'nowhere'"),
        ("return sleep(1, 'nowhere')", "goes to 'nowhere'"),
        ("return wait('s', 5, 'nowhere')", "goes to 'nowhere'"),
        ("return wait.for_signal('s', timeout=5, on_timeout=self.nowhere)", "goes to 'nowhere'"),
        ("return wait_for_event('e', then='nowhere')", "goes to 'nowhere'"),
    ],
)
def test_a_step_going_to_an_unknown_step_is_refused_where_it_can_be_seen(body, error, tmp_path):
    # A module as users write one: its source is there to read when the class is declared
    source = f"""
import pydantic
from earnevents.workflows import goto, sleep, step, wait, wait_for_event, workflow

@workflow("tw_bad_{abs(hash(body))}")
class Bad:
    class Context(pydantic.BaseModel):
        n: int = 0

    @classmethod
    def create_context(cls):
        return cls.Context()

    @step(start=True)
    def first(self):
        {body}
"""
    path = tmp_path / "tw_bad_module.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("tw_bad_module", path)
    assert spec is not None and spec.loader is not None
    with pytest.raises(ValueError, match=error):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_a_target_computed_at_run_time_or_unreadable_source_is_left_to_the_run_time_check():
    namespace: dict = {"step": step, "goto": goto, "Ctx": Ctx}
    source = """
class Unseen:
    Context = Ctx

    @classmethod
    def create_context(cls):
        return Ctx()

    @step(start=True)
    def first(self):
        return goto("nowhere")
"""
    exec(compile(source, "<no file>", "exec"), namespace)  # inspect.getsource cannot read it
    workflow("tw_unseen")(namespace["Unseen"])
    assert "tw_unseen" in registry


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: type("NoContext", (), {"create_context": classmethod(lambda cls: None)}), "nested pydantic model"),
        (lambda: type("NoCreate", (), {"Context": Ctx}), "classmethod create_context"),
        (lambda: type("NoSteps", (), {"Context": Ctx, "create_context": classmethod(lambda cls: Ctx())}), "no @step"),
        (
            lambda: type(
                "TwoStarts",
                (),
                {
                    "Context": Ctx,
                    "create_context": classmethod(lambda cls: Ctx()),
                    "a": step(start=True)(lambda self: complete()),
                    "b": step(start=True)(lambda self: complete()),
                },
            ),
            "exactly one",
        ),
        (
            lambda: type(
                "NoStart",
                (),
                {"Context": Ctx, "create_context": classmethod(lambda cls: Ctx()), "a": step()(lambda self: None)},
            ),
            "exactly one",
        ),
    ],
)
def test_a_class_missing_what_a_workflow_needs_is_refused(make, error):
    with pytest.raises((TypeError, ValueError), match=error):
        workflow("tw_refused")(make())


def test_two_classes_cannot_share_a_workflow_name_but_a_reimport_replaces():
    def declare(name):
        cls = type(name, (), {"Context": Ctx, "create_context": classmethod(lambda cls: Ctx())})
        cls.go = step(start=True)(lambda self: complete())
        return cls

    first = declare("Same")
    workflow("tw_same")(first)
    again = declare("Same")  # same module and qualname: a module imported again
    workflow("tw_same")(again)
    assert registry["tw_same"].cls is again
    with pytest.raises(ValueError, match="already declared"):
        workflow("tw_same")(declare("Other"))


def test_event_workflow_takes_its_trigger():
    @event_workflow("checkin_due", offset_minutes=-60, entity_type="Reservation")
    class PreArrival:
        Context = Ctx

        @classmethod
        def create_context(cls, event=None):
            return Ctx()

        @step(start=True)
        def run(self):
            return complete()

    spec = registry["PreArrival"]
    assert spec.trigger is not None
    assert (spec.trigger.event_name, spec.trigger.offset_minutes, spec.trigger.entity_type) == (
        "checkin_due",
        -60.0,
        "Reservation",
    )


def test_commands_take_steps_by_method_or_name_and_durations_as_timedelta_or_seconds():
    class W:
        def finalize(self): ...

    assert goto(W().finalize) == Goto("finalize") == goto("finalize")
    assert sleep(dt.timedelta(minutes=1)) == Sleep(60.0, None)
    assert wait("ops:open", timeout=90, on_timeout="fb") == Wait("signal", "ops:open", 90.0, "fb", None, None)
    assert wait.for_signal("ops:open") == wait("ops:open")
    event_wait = wait_for_event("docs", match={"reservation_id": 7}, then="next")
    assert (event_wait.kind, event_wait.match, event_wait.then) == ("event", {"reservation_id": 7}, "next")
    assert complete(final_state="ok").result == {"final_state": "ok"}
    assert fail("why").reason == "why"


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: sleep(-1), ValueError),
        (lambda: sleep(float("nan")), ValueError),
        (lambda: sleep(True), TypeError),
        (lambda: sleep("5"), TypeError),
        (lambda: sleep(11 * 365 * 86400), ValueError),
        (lambda: goto(42), TypeError),
        (lambda: goto("not a name"), ValueError),
        (lambda: wait("bad name"), ValueError),
        (lambda: wait("s", on_timeout="x"), ValueError),
        (lambda: wait_for_event("e", match=["x"]), TypeError),
        (lambda: fail(3), TypeError),
        (lambda: Retry(max_attempts=0), ValueError),
        (lambda: Retry(backoff=0.5), ValueError),
        (lambda: step(start="yes"), TypeError),
        (lambda: workflow("bad name"), ValueError),
    ],
)
def test_bad_arguments_are_refused_where_they_are_written(call, error):
    with pytest.raises(error):
        call()


def test_retry_delays_grow_by_backoff_up_to_max_delay():
    retry = Retry(max_attempts=5, base_delay=dt.timedelta(seconds=2), backoff=3, max_delay=dt.timedelta(seconds=10))
    assert [retry.delay(n) for n in (1, 2, 3)] == [2.0, 6.0, 10.0]
