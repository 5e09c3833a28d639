"""Queue item checks (earnevents.worker.items): pure, no Redis."""

from __future__ import annotations

import base64
import json
from typing import Any

import kombu.message
import pytest
from poison import MAX_SIZE, POISONS, foreign, good

from earnevents import Event, message
from earnevents.worker import items
from earnevents.worker.items import Refused, check

QUEUE = "q-items"

EXPECTED_REASON = {
    "not JSON": "not JSON",
    "not UTF-8": "not UTF-8",
    "JSON array": "a JSON list, not an object",
    "item nested 50,000 deep": "nested too deeply",
    "body nested 50,000 deep": "body is JSON nested too deeply",
    "unknown body_encoding": "unknown body encoding 'rot13'",
    "no headers.id": "headers.id missing",
    "headers.id not a string": "headers.id missing or not a string",
    "headers.id forging a log line": "headers.id is not 1-200 printable ASCII characters",
    "headers.task not a string": "headers.task missing or not a string",
    "another task": "headers.task is 'no.such.task'",
    "empty delivery_info": "delivery_info",
    "delivery_info without routing_key": "without a routing_key",
    "delivery_info without exchange": "without an exchange",
    "timelimit not numbers": "timelimit",
    "content type pickle": "content type 'application/x-python-serialize'",
    "unknown content type": "content type 'text/x-nonsense'",
    "compressed (a bzip2 bomb)": "refused without decompressing",
    "eta": "headers.eta",
    "countdown": "headers.countdown",
    "expires": "headers.expires",
    "body not [args, kwargs, embed]": "[args, kwargs, embed]",
    "body not base64": "not valid base64",
    "malformed event": "malformed task arguments",
    "malformed kwargs": "attempt must be an int >= 0",
    "embedded callback": "callbacks",
    "oversized": f"over the maximum message size of {MAX_SIZE} bytes",
}


def test_every_poison_shape_has_an_expected_reason():
    assert set(EXPECTED_REASON) == set(POISONS)


@pytest.mark.parametrize("shape", sorted(POISONS))
def test_poison_item_is_refused_with_its_reason(shape):
    # Given a queue item of a shape that would kill, stall or loop a worker
    item = POISONS[shape](QUEUE)
    # When it is checked
    result = check(item, QUEUE, MAX_SIZE)
    # Then it is refused, saying why
    assert isinstance(result, Refused), result
    assert EXPECTED_REASON[shape] in result.reason


def test_refusal_carries_the_task_id_when_the_item_has_one():
    item = POISONS["eta"](QUEUE)
    result = check(item, QUEUE, MAX_SIZE)
    assert isinstance(result, Refused) and result.task_id == json.loads(item)["headers"]["id"]


def test_good_message_is_returned_parsed():
    m = good(QUEUE, {"n": 1})
    result = check(json.dumps(m).encode(), QUEUE, MAX_SIZE)
    assert result == m


def test_oversized_item_is_refused_before_it_is_parsed(monkeypatch):
    # Given an item over the limit that is not even JSON
    item = b"{" * (MAX_SIZE + 1)
    parsed = []
    monkeypatch.setattr("earnevents.worker.items.loads", lambda text: parsed.append(text))
    # When it is checked, it is refused for its size and never parsed
    result = check(item, QUEUE, MAX_SIZE)
    assert isinstance(result, Refused) and result.reason.startswith(f"{MAX_SIZE + 1} bytes, over")
    assert parsed == []


def test_item_at_the_limit_is_accepted():
    raw = json.dumps(good(QUEUE)).encode()
    assert isinstance(check(raw, QUEUE, len(raw)), dict)
    assert isinstance(check(raw, QUEUE, len(raw) - 1), Refused)


def test_compressed_item_is_never_decompressed(monkeypatch):
    calls = []
    monkeypatch.setattr(kombu.message, "decompress", lambda *a: calls.append(a))
    monkeypatch.setattr("kombu.compression.decompress", lambda *a: calls.append(a))
    assert isinstance(check(POISONS["compressed (a bzip2 bomb)"](QUEUE), QUEUE, MAX_SIZE), Refused)
    assert calls == []


def test_routing_key_of_another_queue_is_taken_as_the_consuming_queue():
    # Given a valid message taken from QUEUE whose routing key names another queue
    item = foreign(QUEUE, "someone-elses-queue", {"n": 1})
    # When it is checked
    result = check(item, QUEUE, MAX_SIZE)
    # Then it is accepted as QUEUE's, on the default exchange (what kombu's restore reads)
    assert isinstance(result, dict)
    assert result["properties"]["delivery_info"] == {"exchange": "", "routing_key": QUEUE}


def test_packed_and_retry_messages_are_accepted():
    wires = [Event("t.record", {"i": i}).to_wire() for i in range(3)]
    packed = message.build_packed(wires, queue=QUEUE, task_id="p1")
    retry = message.build(wires[0], queue=QUEUE, task_id="r1", handler="e2e_handlers.record_sync", attempt=2)
    assert isinstance(check(packed, QUEUE, MAX_SIZE), dict)
    assert isinstance(check(retry, QUEUE, MAX_SIZE), dict)


def test_shadow_name_is_accepted_and_kept():
    retry = message.build(Event("t.record", {}).to_wire(), queue=QUEUE, task_id="r1", handler="e2e_handlers.rec")
    result = check(retry, QUEUE, MAX_SIZE)
    assert isinstance(result, dict) and result["headers"]["shadow"] == "t.record -> e2e_handlers.rec"


def test_hostile_shadow_name_is_escaped_and_cut():
    # Given a message from elsewhere whose shadow (Celery's name for the task, which Celery
    # logs unfiltered) carries a line break and is far too long
    m = json.loads(message.build(Event("t.record", {}).to_wire(), queue=QUEUE, task_id="s1"))
    m["headers"]["shadow"] = "x\nTask forged[1] succeeded\r\x1b[2J" + "y" * 10_000
    result = check(json.dumps(m), QUEUE, MAX_SIZE)
    # Then it is accepted with the name on one line, escaped, at most SHADOW_MAX characters
    assert isinstance(result, dict)
    shown = result["headers"]["shadow"]
    assert shown.startswith("x\\nTask forged[1] succeeded\\r\\x1b[2J")
    assert len(shown) == message.SHADOW_MAX and shown.endswith("...")
    assert not any(ch in shown for ch in "\n\r\x1b")
    # A shadow that is not a string stays refused
    m["headers"]["shadow"] = ["x"]
    assert check(json.dumps(m), QUEUE, MAX_SIZE) == Refused("headers.shadow is not a string", "s1")


def test_retry_message_with_several_events_is_refused():
    wires = [Event("t.record", {"i": i}).to_wire() for i in range(2)]
    m = json.loads(message.build_packed(wires, queue=QUEUE, task_id="p1"))
    args, kwargs, embed = json.loads(base64.b64decode(m["body"]))
    m["body"] = base64.b64encode(json.dumps([args, {**kwargs, "handler": "x.y"}, embed]).encode()).decode()
    result = check(json.dumps(m), QUEUE, MAX_SIZE)
    assert isinstance(result, Refused) and "one event" in result.reason


def test_replies_on_a_remote_control_reply_queue_get_the_envelope_checks_only():
    # Given a reply to `celery control ...` (no task headers), on kombu's reply queue
    reply = {
        "body": "eyJvayI6IHRydWV9",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"ticket": "t-1"},
        "properties": {
            "delivery_tag": "d-1",
            "body_encoding": "base64",
            "delivery_info": {"exchange": "reply.celery.pidbox", "routing_key": "x"},
        },
    }
    raw = json.dumps(reply)
    # Then it is accepted there, and refused as a task message on a task queue
    assert items.check(raw, "5f1c.reply.celery.pidbox", 1 << 20) == reply
    assert isinstance(items.check(raw, "events", 1 << 20), items.Refused)


def test_kombus_message_takes_the_body_the_check_decoded_and_decodes_it_the_same_way():
    from kombu.transport import virtual

    from earnevents.worker.transport import CheckedMessage

    # Given a message the check accepted (its body base64- and JSON-decoded once)
    m = good(QUEUE, {"n": 1, "at": "2026-11-28"})
    checked = items.check_decoded(json.dumps(m).encode(), QUEUE, MAX_SIZE)
    assert isinstance(checked, items.Checked)

    class Channel:  # what the transport's channel holds while it delivers that message
        _checked = checked

        def decode_body(self, body, encoding):
            return base64.b64decode(body)

    # When kombu builds its message from it, and from an equal payload it did not check
    ours = CheckedMessage(checked.message, channel=Channel())
    plain = virtual.Message(json.loads(json.dumps(checked.message)), channel=Channel())
    # Then ours reuses the decoded body (no second decode), the same as kombu's own decoding
    assert ours.decode() is checked.decoded
    assert ours.decode() == plain.decode() and ours.body == plain.body
    assert ours._raw is checked.message  # what kombu records and restores, untouched
    assert ours.headers == plain.headers and ours.delivery_tag == plain.delivery_tag
    # And a payload that is not the one being delivered is decoded as kombu decodes it
    other = CheckedMessage(json.loads(json.dumps(checked.message)), channel=Channel())
    assert other.decode() == plain.decode() and other.decode() is not checked.decoded


def test_the_check_keeps_the_events_it_decoded_for_kombus_message():
    from kombu.transport import virtual

    from earnevents.worker.transport import CheckedMessage

    m = good(QUEUE, {"n": 1, "at": "2026-11-28"})
    checked = items.check_decoded(json.dumps(m).encode(), QUEUE, MAX_SIZE)
    assert isinstance(checked, items.Checked)
    [event] = checked.events or ()
    assert event == Event.from_wire(checked.decoded[0][0])

    class Channel:
        _checked = checked

        def decode_body(self, body, encoding):
            return base64.b64decode(body)

    assert CheckedMessage(checked.message, channel=Channel()).events is checked.events
    other = CheckedMessage(json.loads(json.dumps(checked.message)), channel=Channel())
    assert other.events is None and not hasattr(virtual.Message, "events")


def test_the_loop_hand_off_builds_its_jobs_from_the_events_the_check_decoded(monkeypatch):
    import importlib

    from earnevents.keys import TASK_NAME
    from earnevents.worker import strategy

    worker_app = importlib.import_module("earnevents.worker.app")  # the module (the package's `app` is Celery's)

    m = good(QUEUE, {"n": 1})
    checked = items.check_decoded(json.dumps(m).encode(), QUEUE, MAX_SIZE)
    assert isinstance(checked, items.Checked)
    args, kwargs, _ = checked.decoded

    class Message:
        properties = checked.message["properties"]

        def __init__(self, events):
            self.events = events

    class Request:
        id = "task-1"

        def __init__(self, events):
            self.args, self.kwargs, self.message = args, kwargs, Message(events)
            self.delivery_info = {"routing_key": QUEUE}

    decodes: list[Any] = []
    from_wire = Event.from_wire.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(Event, "from_wire", classmethod(lambda cls, w: decodes.append(w) or from_wire(cls, w)))
    built: list[list[Any]] = []
    monkeypatch.setattr(worker_app, "all_async", lambda jobs, registry: built.append(jobs))  # then the pool runs it
    taker = strategy._takers[TASK_NAME]
    assert taker(Request(checked.events)) is None
    assert decodes == [] and built[-1][0].event is checked.events[0]  # type: ignore[index]
    assert taker(Request(None)) is None  # a message the check did not see: decoded here
    assert len(decodes) == 1 and built[-1][0].event == checked.events[0]  # type: ignore[index]
