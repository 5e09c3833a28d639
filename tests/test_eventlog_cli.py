"""`earnevents events list|show|replay`: the event log from the command line (in this process)."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time

import pytest
from test_cli import assert_one_error_line, run_main

import earnevents
from earnevents import Event
from earnevents.eventlog.record import Published


@pytest.fixture
def logged_events(redis_url, queue, monkeypatch):
    """Two logged events of ``queue`` (the second delayed and cancelled); the command's environment."""
    for name, value in (("REDIS_URI", redis_url), ("QUEUE", queue), ("MONGO_URI", ""), ("EVENT_LOG", "1")):
        monkeypatch.setenv(f"EARNEVENTS_{name}", value)
    first = Event("shop.order_paid", {"n": 1}, metadata={"sender": "evil\x1b[31m\nforged line"})
    second = Event("shop.reminder", {"n": 2})

    async def publish() -> None:
        env = await earnevents.init()
        try:
            # publish() refuses such a sender, so the record is written to the log directly: a
            # message put on the queue without earnevents can carry one, and it must print escaped.
            await env.eventlog.write([Published(first, queue, time.time())])
            await asyncio.sleep(0.01)
            await earnevents.event_bus.publish(second, delay=600)
            await earnevents.event_bus.cancel(second.id)
        finally:
            await earnevents.close()

    asyncio.run(publish())
    return first, second


def test_list_shows_logged_events_newest_first_escaped_and_filtered(logged_events, capsys):
    first, second = logged_events
    status, out, _ = run_main(capsys, "events", "list")
    lines = out.splitlines()
    assert status == 0 and lines[0] == "2 event(s)" and len(lines) == 3  # no forged line
    assert lines[1].startswith(second.id) and "cancelled" in lines[1]
    assert lines[2].startswith(first.id) and "\\x1b[31m\\nforged line" in lines[2] and "\x1b" not in out
    status, out, _ = run_main(capsys, "events", "list", "--status", "cancelled", "--json")
    assert status == 0 and [json.loads(line)["id"] for line in out.splitlines()] == [second.id]
    status, out, _ = run_main(capsys, "events", "list", "--name", "shop.order_paid", "--since", "1h", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [first.id]
    status, _, err = run_main(capsys, "events", "list", "--since", "1")
    assert status == 2 and "not a duration" in err


def test_show_prints_the_record_and_an_unknown_id_is_one_error_line(logged_events, capsys):
    first, _ = logged_events
    status, out, _ = run_main(capsys, "events", "show", first.id)
    shown = json.loads(out)
    assert status == 0 and shown["id"] == first.id and shown["data"] == {"n": 1} and shown["status"] == "pending"
    status, _, err = run_main(capsys, "events", "show", "0" * 32)
    assert status == 1 and "no logged event" in err
    assert_one_error_line(err)


def test_replay_asks_first_and_publishes_a_copy(logged_events, capsys, monkeypatch):
    first, _ = logged_events
    # Without a terminal and without --yes it refuses
    status, _, err = run_main(capsys, "events", "replay", first.id)
    assert status == 2 and "pass --yes" in err

    # On a terminal, only y goes ahead
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    status, _, err = run_main(capsys, "events", "replay", first.id, "--handler", "app.handlers.h")
    assert status == 1 and "run app.handlers.h again? [y/N]" in err
    status, out, _ = run_main(capsys, "events", "replay", first.id, "--handler", "app.handlers.h", "--yes")
    assert status == 0 and out.startswith(f"replayed {first.id} as ")
    copy_id = out.split()[-1]
    status, out, _ = run_main(capsys, "events", "show", copy_id)
    shown = json.loads(out)
    assert shown["replay_of"] == first.id and shown["handlers"]["app.handlers.h"]["status"] == "pending"
