"""``/metrics``: the queue gauges in Prometheus' text format, read from Redis at each scrape.

The gauges are earnevents' own (:data:`earnevents.metrics.QUEUE_GAUGES`, the names a
worker's metrics server uses), from the same reading as the overview
(:func:`earnevents.queuestatus.queue_status`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...metrics import queue_gauge_families
from ...queuestatus import queue_status

FIELDS = ("waiting", "in_flight", "scheduled", "failed", "dead", "workers")
"""The gauges served (those a :class:`~earnevents.queuestatus.QueueStatus` has)."""


class _Reading:
    def __init__(self, readings: dict[str, dict[str, float]]) -> None:
        self.readings = readings

    def collect(self) -> Iterator[Any]:
        return queue_gauge_families(self.readings, FIELDS)


async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    status = dataclasses.asdict(await queue_status())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Reading({status["queue"]: {field: status[field] for field in FIELDS}}))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, name="metrics")]
