"""Publisher-side Prometheus metric: events published, per queue and event name.

On when ``event_config["metrics"]`` (EARNEVENTS_METRICS=1) is set, and in the pool
processes of a worker serving metrics (EARNEVENTS_METRICS_PORT): events its handlers
publish are counted there and summed with the worker's other metrics. In an application
process the counter is registered in prometheus_client's default registry, so the
application's own ``/metrics`` endpoint shows it. prometheus_client is imported only
when metrics are on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from .event import Event

_counter: Any = None
_lock = threading.Lock()


def _published() -> Any:
    global _counter
    with _lock:
        if _counter is None:
            from prometheus_client import Counter

            _counter = Counter(
                "earnevents_events_published", "Events published (put on the queue or scheduled).", ["queue", "event"]
            )
        return _counter


def count_published(queue: str, events: Iterable[Event]) -> None:
    """``events`` were published to ``queue``."""
    counter = _published()
    for event in events:
        counter.labels(queue, event.name).inc()
