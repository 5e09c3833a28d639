"""earnevents[otel] across a real worker: the worker's spans continue the publisher's trace.

The test publishes inside spans of its own tracer provider (the SDK's in-memory exporter);
the worker (tests/tracing_handlers.py) has its own provider, whose ended spans come back
through Redis.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from model_fixtures import worker_env
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from earnevents import Event
from earnevents.testing import wait_for

pytest_plugins = ["model_fixtures"]  # the models_env fixture
pytestmark = [pytest.mark.mongo, pytest.mark.worker]


def worker_spans(rclient: Any, key: str, count: int) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (got := [json.loads(raw) for raw in rclient.lrange(key, 0, -1)]) and len(got) >= count and got,
        20,
        f"{count} span(s) from the worker",
    )


def ids(span: Any) -> tuple[str, str]:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


async def test_the_workers_spans_continue_the_publishers_trace(
    models_env, start_worker, mongo_url, mongo_db, rclient, queue
):
    key = f"spans:{queue}"
    start_worker(modules="tracing_handlers", env={**worker_env(mongo_url, mongo_db), "EARNEVENTS_TEST_SPANS": key})
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    bus = models_env.event_bus
    # Given events published inside spans of the publisher's own (a handler publishes
    # an event and writes a model; another fails once), and one outside any span
    with tracer.start_as_current_span("publish start") as started:
        start_id = await bus.publish(Event("tr.start", {"token": "t1"}))
    with tracer.start_as_current_span("publish flaky") as flaky:
        flaky_id = await bus.publish(Event("tr.flaky", {}))
    plain_id = await bus.publish(Event("tr.plain", {}))
    assert {s.name for s in exporter.get_finished_spans()} == {"publish start", "publish flaky"}
    # When the worker has handled them all: start, its child event and model event, two flaky tries, plain
    got = worker_spans(rclient, key, 6)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for span in got:
        by_event.setdefault(span["attributes"]["earnevents.event.name"], []).append(span)
    assert sorted(by_event) == ["parcel.created", "tr.child", "tr.flaky", "tr.plain", "tr.start"]
    # Then the handler's span is a CONSUMER child of the publishing span, in its trace
    [start] = by_event["tr.start"]
    trace_id, span_id = ids(started)
    assert (start["trace_id"], start["parent_span_id"]) == (trace_id, span_id)
    assert start["name"] == "earnevents.handle tr.start" and start["kind"] == "CONSUMER"
    assert start["attributes"] == {
        "messaging.system": "earnevents",
        "messaging.destination.name": queue,
        "earnevents.event.name": "tr.start",
        "earnevents.event.id": start_id,
        "earnevents.handler": "tracing_handlers.start",
        "earnevents.attempt": 1,
        "earnevents.outcome": "succeeded",
    }
    # and what its handler published, an event and a model's event, continues the same trace
    for name in ("tr.child", "parcel.created"):
        [span] = by_event[name]
        assert (span["trace_id"], span["parent_span_id"]) == (trace_id, start["span_id"]), name
        assert span["attributes"]["earnevents.outcome"] == "succeeded"
    # and a handler that failed once has a span per try, both children of its publishing span
    tries = sorted(by_event["tr.flaky"], key=lambda s: s["attributes"]["earnevents.attempt"])
    flaky_trace, flaky_span = ids(flaky)
    assert [(s["trace_id"], s["parent_span_id"]) for s in tries] == [(flaky_trace, flaky_span)] * 2
    assert [
        (s["attributes"]["earnevents.attempt"], s["attributes"]["earnevents.outcome"], s["status"], s["events"])
        for s in tries
    ] == [(1, "retrying", "ERROR", ["exception"]), (2, "succeeded", "UNSET", [])]
    assert {s["attributes"]["earnevents.event.id"] for s in tries} == {flaky_id}
    # and an event published outside any span starts a trace of its own in the worker
    [plain] = by_event["tr.plain"]
    assert plain["parent_span_id"] is None and plain["trace_id"] not in (trace_id, flaky_trace)
    assert plain["attributes"]["earnevents.event.id"] == plain_id
