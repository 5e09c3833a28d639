"""Handlers the tracing end-to-end test's worker imports (EARNEVENTS_HANDLER_MODULES=tracing_handlers).

Importing it sets this worker's OpenTelemetry tracer provider: every span the worker ends
is pushed as JSON onto the Redis list named by EARNEVENTS_TEST_SPANS, where the test reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from model_fixtures import Parcel
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from earnevents import Event, event_bus, event_handler, model_event_handler, redisurl

_sync = redisurl.sync_client(os.environ["EARNEVENTS_REDIS_URI"])
FAST_RETRIES = {"max_retries": 2, "interval_start": 0.05, "interval_step": 0.05, "interval_max": 0.1}


def as_json(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [e.name for e in span.events],
    }


class ToRedis(SpanExporter):
    """Hands each ended span to the test through Redis."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        _sync.rpush(os.environ["EARNEVENTS_TEST_SPANS"], *(json.dumps(as_json(s)) for s in spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(ToRedis()))
trace.set_tracer_provider(_provider)


@event_handler("tr.start")
async def start(event: Event) -> None:
    """Continues the trace twice: an event it publishes, and a model write."""
    await event_bus.publish(Event("tr.child", {"token": event.data["token"]}))
    await Parcel(token=event.data["token"]).create()


@event_handler("tr.child")
def child(event: Event) -> None:
    """A plain def handler: it runs in its span too."""


@model_event_handler(Parcel, "created")
async def parcel_created(event: Event) -> None:
    pass


@event_handler("tr.flaky", retry_policy=FAST_RETRIES)
async def flaky(event: Event) -> None:
    if _sync.incr(f"tries:{event.id}") == 1:
        raise RuntimeError("first try fails")


@event_handler("tr.plain")
async def plain(event: Event) -> None:
    pass
