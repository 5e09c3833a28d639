"""The Celery task's own error handling: nothing escapes it to be acknowledged as if handled."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import pytest
from celery.exceptions import Reject

from earnevents import Event, keys
from earnevents.handlers import registry

worker_app = importlib.import_module("earnevents.worker.app")  # the package exports the Celery app as "app"


def run_task(*args: Any, **kwargs: Any) -> Any:
    return worker_app.app.tasks[keys.TASK_NAME].run(*args, **kwargs)


class Runtime:
    loop = None


@pytest.fixture
def handled(monkeypatch) -> list[Any]:
    """Calls of handle_message, with a stand-in runtime (no Redis needed)."""
    calls: list[Any] = []
    monkeypatch.setattr(worker_app.WorkerRuntime, "get", classmethod(lambda cls: Runtime()))
    monkeypatch.setattr(worker_app, "handle_message", lambda jobs, *rest: calls.append(jobs))
    return calls


def test_a_runtime_that_cannot_be_built_hands_the_message_back(monkeypatch):
    # Given a worker process that cannot build its runtime (e.g. Redis down at the first message)
    def cannot(cls):
        raise RuntimeError("cannot build the runtime")

    monkeypatch.setattr(worker_app.WorkerRuntime, "get", classmethod(cannot))
    # When a message arrives, Then it is handed back (requeued), not acknowledged
    with pytest.raises(Reject) as info:
        run_task(Event("e.x", {}).to_wire())
    assert info.value.requeue is True


def test_an_unexpected_error_while_handling_hands_the_message_back(handled, monkeypatch):
    # Given handling that fails in a way earnevents does not expect (a bug, Celery's soft time limit)
    def unexpected(*args):
        raise KeyError("a bug")

    monkeypatch.setattr(worker_app, "handle_message", unexpected)
    # When a message arrives, Then it is handed back rather than acknowledged as a failed task
    with pytest.raises(Reject) as info:
        run_task(Event("e.x", {}).to_wire())
    assert info.value.requeue is True


def test_a_retry_naming_a_handler_of_another_event_is_dropped_with_a_log_line(handled, caplog):
    # Given a handler subscribed to e.other
    def other_event_handler(event: Event) -> None:
        raise AssertionError("must not run")

    handler = registry.register("e.other", other_event_handler)
    try:
        # When a retry message for an e.x event names it
        with caplog.at_level(logging.ERROR):
            run_task(Event("e.x", {}).to_wire(), handler=handler.name, attempt=1)
    finally:
        registry.unregister(handler.name)
    # Then nothing runs and the message is dropped as malformed, with a log line
    assert handled == []
    assert "dropping malformed message" in caplog.text and "subscribed to 'e.other'" in caplog.text


def test_a_normal_message_is_handled(handled):
    run_task(Event("e.x", {}).to_wire())
    assert len(handled) == 1


def test_an_event_nested_too_deep_to_decode_is_dropped_with_a_log_line(handled, caplog):
    # Given an event whose data nests deeper than Python's recursion limit
    wire = Event("e.x", {}).to_wire()
    deep: dict[str, Any] = {}
    for _ in range(5000):
        deep = {"d": deep}
    wire["data"] = deep
    # When it arrives, Then it is dropped as malformed with a log line (not acknowledged as a crash)
    with caplog.at_level(logging.ERROR):
        run_task(wire)
    assert handled == [] and "dropping malformed message" in caplog.text
