"""One OpenTelemetry span per (event, handler) try: the worker's side of ``earnevents[otel]``.

``dispatch`` calls :func:`started`, :func:`finished` and :func:`settled` where it tells the
event log and the metrics about a job; ``running`` makes the try's span current while the
handler runs (:func:`enter`, :func:`leave`), so what the handler publishes (events, model
writes) carries the same trace on. Each span is named ``earnevents.handle <event name>``,
of kind CONSUMER, the child of the context the event carries (``metadata["trace"]``,
:mod:`earnevents.tracing`; a root span when it carries none), with the attributes
``messaging.system`` (``earnevents``), ``messaging.destination.name`` (the queue),
``earnevents.event.name``, ``earnevents.event.id``, ``earnevents.handler``,
``earnevents.attempt`` (1 on the first try) and, when it ends, ``earnevents.outcome``:
``succeeded``, ``retrying`` or ``failed``. A failed try's span records the exception
and has status ERROR; it ends when the worker has scheduled its retry or recorded it.

A failed try whose settling never completes here (Redis down: the message is delivered
again) keeps its span open until the same try starts again or :data:`MAX_OPEN` others are
open; it then ends with the outcome ``unsettled``.

Without ``opentelemetry-api`` installed every function here returns at once; with it but
no tracer provider set (the API's proxy), no span is made.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .. import lazy, tracing
from ..failures.record import describe
from .jobs import Job, Outcome

if tracing.AVAILABLE:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    # Propagators: only for an event that carries a trace context.
    propagate = lazy.module("opentelemetry.propagate")

SUCCEEDED = "succeeded"
RETRYING = "retrying"
FAILED = "failed"
UNSETTLED = "unsettled"

MAX_OPEN = 10_000
"""Spans of failed tries waiting for their settling, at most (per process)."""

_Key = tuple[str, str, int]

_open: OrderedDict[_Key, Any] = OrderedDict()
_lock = threading.Lock()


def _key(job: Job, handler: str) -> _Key:
    return (job.event.id, handler, job.attempt)


def _tracer() -> Any:
    # The global provider's tracer (a proxy until one is set); cheap after the first call.
    return trace.get_tracer("earnevents")


def _start(job: Job, handler: str) -> Any:
    headers = tracing.headers_of(job.event)
    parent = propagate.extract(headers) if headers is not None else None
    return _tracer().start_span(
        f"earnevents.handle {job.event.name}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "earnevents",
            "messaging.destination.name": job.queue,
            "earnevents.event.name": job.event.name,
            "earnevents.event.id": job.event.id,
            "earnevents.handler": handler,
            "earnevents.attempt": job.attempt + 1,
        },
    )


def _end(span: Any, outcome: str) -> None:
    span.set_attribute("earnevents.outcome", outcome)
    span.end()


def _failed(span: Any, error: BaseException) -> None:
    try:
        span.record_exception(error)
    except Exception:  # an exception whose str() raises: describe() copes with it
        span.add_event("exception", {"exception.type": type(error).__name__, "exception.message": describe(error)})
    span.set_status(Status(StatusCode.ERROR, describe(error)))


def _provider_set() -> bool:
    """Whether this process has a tracer provider: until the application sets one, the API's
    proxy makes spans that record nothing, and each job would pay for making them."""
    return tracing.AVAILABLE and not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def started(job: Job, handlers: list[str]) -> None:
    """Start a span for each of ``handlers`` about to run for ``job`` (none without a provider)."""
    if not handlers or not _provider_set():
        return
    spans = [(_key(job, h), _start(job, h)) for h in handlers]
    stale: list[Any] = []
    with _lock:
        for key, span in spans:
            before = _open.pop(key, None)
            if before is not None:
                stale.append(before)
            _open[key] = span
        while len(_open) > MAX_OPEN:
            stale.append(_open.popitem(last=False)[1])
    for span in stale:
        _end(span, UNSETTLED)


def enter(job: Job, handler: str) -> Any:
    """Make ``handler``'s span for ``job`` the current one; a token for :func:`leave` (None: no span)."""
    if not tracing.AVAILABLE:
        return None
    span = _open.get(_key(job, handler))
    if span is None:
        return None
    return otel_context.attach(trace.set_span_in_context(span))


def leave(token: Any) -> None:
    """Undo :func:`enter`."""
    if token is not None:
        otel_context.detach(token)


def finished(job: Job, outcomes: list[Outcome]) -> None:
    """End the spans of the tries that succeeded; mark those that failed (they end when settled)."""
    if not tracing.AVAILABLE:
        return
    for outcome in outcomes:
        key = _key(job, outcome.handler)
        with _lock:
            span = _open.pop(key, None) if outcome.error is None else _open.get(key)
        if span is None:
            continue
        if outcome.error is None:
            _end(span, SUCCEEDED)
        else:
            _failed(span, outcome.error)


def settled(job: Job, outcome: Outcome, retrying: bool) -> None:
    """End a failed try's span: its retry is scheduled (``retrying``) or it is recorded as failed.

    A job recorded without running (its worker died too often, its handler is unknown
    here) had no span: it gets one that starts and ends now (when a provider is set).
    """
    if not tracing.AVAILABLE:
        return
    with _lock:
        span = _open.pop(_key(job, outcome.handler), None)
    if span is None:
        if not _provider_set():
            return
        span = _start(job, outcome.handler)
        if outcome.error is not None:
            _failed(span, outcome.error)
    _end(span, RETRYING if retrying else FAILED)
