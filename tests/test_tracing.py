"""earnevents[otel]: publish carries the trace context, the worker's dispatch makes a span per try.

The OpenTelemetry SDK's in-memory exporter collects the spans; the tracer provider is set
once for this pytest process (OpenTelemetry allows one global provider).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from test_dispatch import FakeBooks, FakeBus, FakeStore, InlineLoop, job_for

import earnevents
from earnevents import Event, RetryPolicy, message, tracing
from earnevents.handlers import HandlerRegistry
from earnevents.worker import dispatch as dispatch_module
from earnevents.worker import tracing as worker_tracing
from earnevents.worker.dispatch import handle, settle_failures

_exporter = InMemorySpanExporter()


def _provider() -> None:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    _provider()
    _exporter.clear()
    return _exporter


def tracer() -> trace.Tracer:
    return trace.get_tracer("tests")


def traceparent(span: Any) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


# --- publishing --------------------------------------------------------------------------


async def test_publish_outside_any_span_adds_nothing(spans, bus, rclient, queue):
    # Given a tracer provider but no current span
    # When an event is published
    await bus.publish(Event("t.x", {"n": 1}))
    # Then its metadata has no trace context
    [raw] = rclient.lrange(queue, 0, -1)
    wire, _ = message.parse(raw)
    assert tracing.METADATA_KEY not in wire["metadata"]


async def test_publish_inside_a_span_carries_its_w3c_context(spans, bus, rclient, queue):
    # Given a current span
    with tracer().start_as_current_span("request") as span:
        # When events are published: one, a batch, and one for later
        event = Event("t.x", {"n": 1}, metadata={"mine": 1})
        await bus.publish(event)
        await bus.publish_batch([Event("t.y", {}), Event("t.z", {})])
        delayed = await bus.publish(Event("t.later", {}), delay=60)
    # Then each message's event carries the span as its W3C traceparent, through the wire form
    events = [Event.from_wire(message.parse(raw)[0]) for raw in reversed(rclient.lrange(queue, 0, -1))]
    assert [e.name for e in events] == ["t.x", "t.y", "t.z"]
    for e in events:
        assert e.metadata[tracing.METADATA_KEY]["traceparent"] == traceparent(span)
    assert events[0].metadata["mine"] == 1
    # and the caller's event is left as it was
    assert tracing.METADATA_KEY not in event.metadata
    [scheduled] = [s for s in await bus.get_scheduled() if s.event.id == delayed]
    assert scheduled.event.metadata[tracing.METADATA_KEY]["traceparent"] == traceparent(span)


async def test_packed_messages_carry_the_context_in_each_event(spans, bus, rclient, queue):
    with tracer().start_as_current_span("request") as span:
        await bus.publish_batch([Event("t.a", {}), Event("t.b", {})], events_per_message=2)
    [raw] = rclient.lrange(queue, 0, -1)
    wires, _ = message.parse_packed(raw)
    assert [Event.from_wire(w).metadata[tracing.METADATA_KEY]["traceparent"] for w in wires] == [traceparent(span)] * 2


def test_a_malformed_carried_context_is_ignored():
    for carried in ("x", {"traceparent": 1}, {}, None, [1]):
        assert tracing.headers_of(Event("t.x", {}, metadata={"trace": carried})) is None
    assert tracing.headers_of(Event("t.x", {}, metadata={"trace": {"traceparent": "v"}})) == {"traceparent": "v"}


def test_without_opentelemetry_installed_nothing_is_injected_and_workers_trace_nothing():
    # Given a process where opentelemetry cannot be imported
    code = """
import sys
sys.modules["opentelemetry"] = None
from earnevents import Event, tracing
from earnevents.worker import tracing as worker_tracing
from earnevents.worker.jobs import Job, Outcome
assert not tracing.AVAILABLE
events = [Event("t.x", {})]
assert tracing.traced(events) is events and tracing.current_headers() is None
job = Job(event=events[0], handler=None, attempt=0, retry_policy=None, queue="q")
worker_tracing.started(job, ["h"])
assert worker_tracing.enter(job, "h") is None
worker_tracing.finished(job, [Outcome("h", ValueError())])
worker_tracing.settled(job, Outcome("h", ValueError()), True)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    # Then earnevents works, adds nothing and starts no span
    assert out.stdout.strip() == "ok", out.stderr


# --- the worker's spans ----------------------------------------------------------------------


def test_each_handler_try_is_a_consumer_span_child_of_the_publishing_span(spans):
    registry = HandlerRegistry()
    seen: dict[str, Any] = {}

    async def a_ok(e):
        seen["async"] = trace.get_current_span()

    def s_ok(e):
        seen["sync"] = trace.get_current_span()

    a = registry.register("e.x", a_ok)
    s = registry.register("e.x", s_ok)
    # Given an event published inside a span
    with tracer().start_as_current_span("request") as parent:
        [event] = tracing.traced([Event("e.x", {})])
    spans.clear()
    # When the worker handles it
    handle(job_for(event), registry, InlineLoop(), FakeBooks())
    # Then each handler ran inside a span of its own, a CONSUMER child of the publishing span
    finished = {sp.attributes["earnevents.handler"]: sp for sp in spans.get_finished_spans()}
    assert set(finished) == {a.name, s.name}
    for kind, handler in (("async", a), ("sync", s)):
        sp = finished[handler.name]
        assert sp.name == "earnevents.handle e.x"
        assert sp.kind == SpanKind.CONSUMER
        assert sp.context.trace_id == parent.get_span_context().trace_id
        assert sp.parent is not None and sp.parent.span_id == parent.get_span_context().span_id
        assert seen[kind].get_span_context().span_id == sp.context.span_id
        assert dict(sp.attributes) == {
            "messaging.system": "earnevents",
            "messaging.destination.name": "q",
            "earnevents.event.name": "e.x",
            "earnevents.event.id": event.id,
            "earnevents.handler": handler.name,
            "earnevents.attempt": 1,
            "earnevents.outcome": "succeeded",
        }
        assert sp.status.status_code == StatusCode.UNSET


def test_an_event_carrying_no_context_gets_a_root_span(spans):
    registry = HandlerRegistry()
    registry.register("e.x", lambda e: None)
    handle(job_for(Event("e.x", {})), registry, InlineLoop(), FakeBooks())
    [sp] = spans.get_finished_spans()
    assert sp.parent is None and sp.attributes["earnevents.outcome"] == "succeeded"


def test_a_failed_try_ends_when_settled_with_its_outcome_and_exception(spans):
    registry = HandlerRegistry()

    def bad(e):
        raise ValueError("boom")

    h = registry.register("e.x", bad)
    event = Event("e.x", {})

    async def settle(job, failed):
        await settle_failures(job, failed, registry, FakeBus(), FakeStore(), RetryPolicy(max_retries=1))

    # When the first try fails (a retry is due) and then the second (retries spent)
    for attempt in (0, 1):
        handle(
            job_for(event, handler=h.name if attempt else None, attempt=attempt),
            registry,
            InlineLoop(),
            FakeBooks(settle_failures_with=settle),
        )
    # Then the spans say attempt 1 retrying, attempt 2 failed, each with the exception and status ERROR
    got = [
        (sp.attributes["earnevents.attempt"], sp.attributes["earnevents.outcome"]) for sp in spans.get_finished_spans()
    ]
    assert got == [(1, "retrying"), (2, "failed")]
    for sp in spans.get_finished_spans():
        assert sp.status.status_code == StatusCode.ERROR
        assert sp.status.description == "ValueError: boom"
        [ev] = sp.events
        assert ev.name == "exception" and ev.attributes["exception.type"] == "ValueError"
    assert [key for key in worker_tracing._open if key[0] == event.id] == []  # none left open


def test_an_error_whose_str_raises_is_recorded_and_a_failing_observer_never_fails_the_job(spans, monkeypatch, caplog):
    class Rude(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    registry = HandlerRegistry()

    def rude(e):
        raise Rude()

    h = registry.register("e.x", rude)
    job = job_for(Event("e.x", {}))
    handle(job, registry, InlineLoop(), FakeBooks())
    worker_tracing.settled(job, worker_tracing.Outcome(h.name, Rude()), retrying=False)
    [span] = spans.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR and span.events[0].attributes["exception.type"] == "Rude"

    # And an observer that raises is logged, the others are still told, and the job goes on
    told = []

    class Broken:
        __name__ = "broken"

        def started(self, *args):
            pass

        settled = started

        def finished(self, *args):
            raise RuntimeError("observer bug")

    class Listening:
        __name__ = "listening"

        def started(self, *args):
            pass

        settled = started

        def finished(self, *args):
            told.append(args)

    monkeypatch.setattr(dispatch_module, "_OBSERVERS", (Broken(), Listening()))
    ok = registry.register("e.ok", lambda e: None)
    handle(job_for(Event("e.ok", {})), registry, InlineLoop(), FakeBooks())
    assert len(told) == 1 and told[0][1][0].handler == ok.name
    assert "broken.finished failed; the job goes on" in caplog.text


def test_without_a_tracer_provider_a_job_makes_no_span(spans, monkeypatch):
    # Given opentelemetry installed but no provider set (the API's proxy, as in a worker
    # whose application configures no tracing)
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    job = job_for(Event("e.x", {}))
    # When a try starts, fails and is settled
    worker_tracing.started(job, ["m.h"])
    assert [key for key in worker_tracing._open if key[0] == job.event.id] == []
    worker_tracing.settled(job, worker_tracing.Outcome("m.h", ValueError()), retrying=False)
    # Then no span was made (each would cost the job for nothing)
    assert spans.get_finished_spans() == ()


def test_a_failed_try_stays_open_until_settled(spans):
    registry = HandlerRegistry()
    h = registry.register("e.x", lambda e: 1 / 0)
    job = job_for(Event("e.x", {}))
    # Given settling that has not happened yet (FakeBooks without failures settles nothing)
    handle(job, registry, InlineLoop(), FakeBooks())
    assert spans.get_finished_spans() == ()
    # When the same try starts again (the message delivered again), the old span ends as unsettled
    worker_tracing.started(job, [h.name])
    [old] = spans.get_finished_spans()
    assert old.attributes["earnevents.outcome"] == "unsettled"
    worker_tracing.settled(job, worker_tracing.Outcome(h.name, ZeroDivisionError()), retrying=False)
    assert [sp.attributes["earnevents.outcome"] for sp in spans.get_finished_spans()] == ["unsettled", "failed"]


def test_a_sync_handler_run_in_a_thread_of_its_own_or_returning_an_awaitable_runs_in_its_span(spans):
    registry = HandlerRegistry()
    seen: dict[str, int] = {}

    def in_thread(e):  # with a timeout outside the main thread: called in a thread of its own
        seen["thread"] = trace.get_current_span().get_span_context().span_id

    async def later():
        seen["awaited"] = trace.get_current_span().get_span_context().span_id

    def returns_awaitable(e):
        return later()

    t = registry.register("e.x", in_thread, timeout=5)
    a = registry.register("e.x", returns_awaitable)
    runner = threading.Thread(target=handle, args=(job_for(Event("e.x", {})), registry, InlineLoop(), FakeBooks()))
    runner.start()
    runner.join(10)
    finished = {sp.attributes["earnevents.handler"]: sp.context.span_id for sp in spans.get_finished_spans()}
    assert seen == {"thread": finished[t.name], "awaited": finished[a.name]}


async def test_a_replay_carries_the_replaying_callers_trace_not_the_originals(spans, redis_url, queue, rclient):
    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue, "event_log": True})
    try:
        bus = earnevents.event_bus
        # Given an event published in one trace and logged
        with tracer().start_as_current_span("original"):
            event_id = await bus.publish(Event("t.x", {}))
        await bus.flush_event_log()
        # When it is replayed outside any span, then in another span (all handlers, then one)
        await bus.replay(event_id)
        with tracer().start_as_current_span("operator") as operator:
            await bus.replay(event_id)
            await bus.replay(event_id, handlers=["some.handler"])
        # Then the first copy carries no trace, the others the operator's
        _, *copies = [Event.from_wire(message.parse(raw)[0]) for raw in reversed(rclient.lrange(queue, 0, -1))]
        assert [c.metadata.get(tracing.METADATA_KEY, {}).get("traceparent") for c in copies] == [
            None,
            traceparent(operator),
            traceparent(operator),
        ]
    finally:
        await earnevents.close()
