"""Publisher-side Prometheus metric: events published, per queue and event name.

On when ``event_config["metrics"]`` (EARNEVENTS_METRICS=1) is set, and in the pool
processes of a worker serving metrics (EARNEVENTS_METRICS_PORT): events its handlers
publish are counted there and summed with the worker's other metrics. In an application
process the counter is registered in prometheus_client's default registry, so the
application's own ``/metrics`` endpoint shows it. prometheus_client is imported only
when metrics are on.

The queue gauges (:data:`QUEUE_GAUGES`: waiting, in flight, scheduled, ...) are named and
described here once, for the worker's metrics server and the dashboard's ``/metrics``:
:func:`queue_gauge_families` turns readings into Prometheus metric families.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
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


QUEUE_GAUGES = {
    "waiting": ("earnevents_queue_waiting", "Messages waiting in the queue."),
    "in_flight": ("earnevents_queue_in_flight", "Messages taken by workers and not yet acknowledged."),
    "scheduled": ("earnevents_queue_scheduled", "Messages in the delay schedule (delayed events and retry waits)."),
    "failed": ("earnevents_queue_failed", "Failed-job records kept for the queue."),
    "dead": ("earnevents_queue_dead_lettered", "Queue items workers refused, kept in the dead-letter list."),
    "oldest_age": (
        "earnevents_queue_oldest_waiting_age_seconds",
        "Seconds since the event of the oldest waiting message was first published.",
    ),
    "workers": ("earnevents_queue_workers", "Workers consuming the queue whose keepalive is fresh."),
}
"""Reading field -> (gauge name, help text)."""


def queue_gauge_families(readings: Mapping[str, Mapping[str, float]], fields: Iterable[str]) -> Iterator[Any]:
    """One GaugeMetricFamily (label ``queue``) per field of :data:`QUEUE_GAUGES` in ``fields``,
    with each queue's value from ``readings`` (queue -> field -> value)."""
    from prometheus_client.core import GaugeMetricFamily

    for field in fields:
        name, doc = QUEUE_GAUGES[field]
        family = GaugeMetricFamily(name, doc, labels=["queue"])
        for queue, reading in readings.items():
            family.add_metric([queue], reading[field])
        yield family
