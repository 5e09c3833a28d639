"""The worker's event log writer thread: batching, catching up after an outage, bounded buffer."""

from __future__ import annotations

import logging
import threading
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
