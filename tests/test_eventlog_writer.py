"""The worker's event log writer thread: batching, catching up after an outage, bounded buffer."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import pytest

from earnevents import Event
from earnevents.eventlog.record import Change, HandlerChange
from earnevents.testing import wait_for
from earnevents.worker import eventlog as writer_module
from earnevents.worker.eventlog import LogWriter, coalesce


def change(event_id: str, handler: str, status: str, event: Event | None = None) -> HandlerChange:
    return HandlerChange(event_id, "q", handler, {"status": status}, event)


def test_coalesce_keeps_the_last_change_of_each_handler_and_the_event_an_earlier_one_carried():
    event = Event("a.b", {}, id="e1")
    out = coalesce(
        [change("e1", "m.h", "running", event), change("e1", "m.g", "running"), change("e1", "m.h", "succeeded")]
    )
    assert [(c.handler, c.entry["status"]) for c in out] == [("m.g", "running"), ("m.h", "succeeded")]
    assert out[1].event is event


class Store:
    """A store that is down until ``up`` is set; records what it was given."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.written: list[Change] = []
        self.calls = 0

    def write(self, changes: Sequence[Change]) -> None:
        self.calls += 1
        if not self.up.is_set():
            raise ConnectionError("log store down")
        self.written.extend(changes)


def test_changes_wait_while_the_store_is_down_and_are_written_when_it_is_back(caplog):
    caplog.set_level(logging.INFO, logger="earnevents")
    store = Store()
    writer = LogWriter(lambda: store.write)
    writer.start()
    try:
        writer.put([change(f"e{i}", "m.h", "succeeded") for i in range(5)])
        wait_for(lambda: store.calls >= 2, 5, "a few failed writes")
        assert store.written == [] and "event log: cannot write to its store" in caplog.text
        store.up.set()
        wait_for(lambda: len(store.written) == 5, 10, "the buffered changes written")
        wait_for(lambda: "its store works again" in caplog.text, 5, "the recovery logged")
    finally:
        writer.stop()


def test_a_full_buffer_drops_the_oldest_and_logs_the_gap(caplog, monkeypatch):
    monkeypatch.setattr(writer_module, "MAX_BUFFER", 3)
    store = Store()
    writer = LogWriter(lambda: store.write)
    writer.start()
    try:
        writer.put([change(f"e{i}", "m.h", "succeeded") for i in range(5)])
        assert writer.dropped == 2
        wait_for(lambda: "the log has a gap" in caplog.text, 5, "the gap logged")
        store.up.set()
        wait_for(lambda: len(store.written) == 3, 10, "the kept changes written")
        assert [c.event_id for c in store.written if isinstance(c, HandlerChange)] == ["e2", "e3", "e4"]
    finally:
        writer.stop()


@pytest.mark.parametrize("on", [False, True])
def test_hooks_do_nothing_unless_configured_on(on, monkeypatch):
    from earnevents.config import Settings
    from earnevents.worker.jobs import Job, Outcome

    store = Store()
    store.up.set()
    monkeypatch.setattr(writer_module, "_writer_for", lambda settings: store.write)
    settings = Settings.resolve(redis_uri="redis://localhost:1/0", event_config={"event_log": on}, environ={})
    writer_module.configure(settings)
    try:
        job = Job(Event("a.b", {}), None, 0, None, "q")
        writer_module.started(job, ["m.h"])
        writer_module.finished(job, [Outcome("m.h")])
        writer_module.settled(job, Outcome("m.g", RuntimeError("x")), retrying=True)
        if on:
            wait_for(lambda: len(store.written) == 2, 5, "the changes written")
            by_handler = {c.handler: c.entry for c in store.written if isinstance(c, HandlerChange)}
            assert by_handler["m.h"]["status"] == "succeeded" and by_handler["m.h"]["duration"] is not None
            assert by_handler["m.g"]["status"] == "retrying" and by_handler["m.g"]["error"] == "RuntimeError: x"
    finally:
        writer_module.stop()
    assert on or store.written == []


def test_the_check_of_a_model_occurrence_and_a_workflow_step_are_not_logged_as_events(monkeypatch):
    # The event log records the event a due occurrence publishes, not the worker's check before it;
    # a workflow run keeps its own history
    from earnevents import keys
    from earnevents.config import Settings
    from earnevents.worker.jobs import Job, Outcome

    store = Store()
    store.up.set()
    monkeypatch.setattr(writer_module, "_writer_for", lambda settings: store.write)
    settings = Settings.resolve(redis_uri="redis://localhost:1/0", event_config={"event_log": True}, environ={})
    writer_module.configure(settings)
    try:
        for own in (keys.OCCURRENCE_HANDLER, keys.WORKFLOW_HANDLER):
            check = Job(Event("checkin_due", {}), own, 0, None, "q")
            writer_module.started(check, [own])
            writer_module.finished(check, [Outcome(own)])
            writer_module.settled(check, Outcome(own, RuntimeError("x")), retrying=True)
            writer_module.completed_before(check, [own])
        ordinary = Job(Event("checkin_due", {}), None, 0, None, "q")
        writer_module.finished(ordinary, [Outcome("m.h")])
        wait_for(lambda: store.written, 5, "the ordinary job's change written")
        writer_module.flush()
        assert [c.event_id for c in store.written] == [ordinary.event.id]
    finally:
        writer_module.stop()


def test_flush_returns_once_what_was_buffered_is_written_without_waiting_for_the_batch_interval(monkeypatch):
    # Given a writer that gathers changes for a long time before writing them
    monkeypatch.setattr(writer_module, "FLUSH_INTERVAL", 5.0)
    store = Store()
    store.up.set()
    writer = LogWriter(lambda: store.write)
    writer.start()
    try:
        writer.put([change("e1", "m.h", "succeeded")])
        # When a message is about to be acknowledged, its changes are flushed
        started = time.monotonic()
        assert writer.flush(timeout=3) is True
        # Then they are written by then, without the gathering pause
        assert [c.event_id for c in store.written] == ["e1"] and time.monotonic() - started < 2
        assert writer.flush(timeout=3) is True  # nothing left: at once
    finally:
        writer.stop()


def test_flush_does_not_wait_on_a_store_that_is_down():
    # Given a store that is down, and a writer that has seen it fail
    store = Store()
    writer = LogWriter(lambda: store.write)
    writer.start()
    try:
        writer.put([change("e1", "m.h", "succeeded")])
        assert writer.flush(timeout=3) is False  # ends at the first failure, not at the timeout
        wait_for(lambda: store.calls >= 1, 5, "a failed write")
        # When the next message is acknowledged, then it does not wait at all
        writer.put([change("e2", "m.h", "succeeded")])
        started = time.monotonic()
        assert writer.flush(timeout=3) is False
        assert time.monotonic() - started < 0.5
        # And once the store is back, everything is written
        store.up.set()
        wait_for(lambda: len(store.written) == 2, 10, "the buffered changes written")
    finally:
        writer.stop()


def test_a_hung_store_costs_one_flush_wait_not_one_per_message():
    # Given a store whose writes hang
    release = threading.Event()
    written: list[Change] = []

    def hung_write(changes: Sequence[Change]) -> None:
        release.wait(10)
        written.extend(changes)

    writer = LogWriter(lambda: hung_write)
    writer.start()
    try:
        writer.put([change("e1", "m.h", "succeeded")])
        assert writer.flush(timeout=0.2) is False  # the first message waits its bound
        # When the next messages are acknowledged, then they do not wait
        started = time.monotonic()
        for i in range(5):
            writer.put([change(f"e{i + 2}", "m.h", "succeeded")])
            assert writer.flush(timeout=0.2) is False
        assert time.monotonic() - started < 0.2
        # And once the store answers, everything is written and flushes wait again
        release.set()
        wait_for(lambda: len(written) == 6, 10, "everything written")
        writer.put([change("e9", "m.h", "succeeded")])
        assert writer.flush(timeout=3) is True
    finally:
        release.set()
        writer.stop()
