"""Trace context in events: the publishing side of the optional extra ``earnevents[otel]``.

With ``opentelemetry-api`` installed (``pip install earnevents[otel]``) and a valid span
current when an event is published, the event is sent with the current context in
``metadata["trace"]`` (:data:`METADATA_KEY`): a dict of str headers written by the
configured OpenTelemetry propagator (``opentelemetry.propagate.inject``), by default the
W3C ``traceparent``, ``tracestate`` when there is one, and ``baggage`` when there is some.
Workers start each handler's span as a child of it (``earnevents.worker.tracing``).

Without the package, or with no valid span current (no tracer provider configured, no
span started), nothing is added: publishing then costs one check per batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .event import Event

try:  # the API's trace module only; its propagators are imported once a span is there to carry
    from opentelemetry import trace as _trace
except ImportError:  # the extra is not installed: tracing is off
    AVAILABLE = False
else:
    AVAILABLE = True

METADATA_KEY = "trace"
"""The metadata key holding an event's trace context headers."""


def current_headers() -> dict[str, str] | None:
    """The current trace context as propagation headers; None without OpenTelemetry or a valid current span."""
    if not AVAILABLE or not _trace.get_current_span().get_span_context().is_valid:
        return None
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


def traced(events: list[Event]) -> list[Event]:
    """``events`` carrying the current trace context (copies, same ids); the same list when
    there is none to carry. A context already in an event's metadata is replaced."""
    headers = current_headers()
    if headers is None:
        return events
    return [dataclasses.replace(e, metadata={**(e.metadata or {}), METADATA_KEY: dict(headers)}) for e in events]


def headers_of(event: Event) -> dict[str, str] | None:
    """The trace context headers ``event`` carries; None when it carries none, or something
    that is not a dict of str (an event published by hand may hold anything there)."""
    carried: Any = event.metadata.get(METADATA_KEY) if event.metadata else None
    if not isinstance(carried, Mapping) or not carried:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in carried.items()):
        return None
    return dict(carried)
