"""Overview: the configured queue's counts (the reading ``earnevents status`` prints) and
where the dashboard is connected (URIs redacted).

Below, the handler outcomes per minute over the last hour (:mod:`earnevents.stats`,
drawn by :mod:`earnevents.dashboard.chart`). The page reloads itself every
:data:`REFRESH` seconds (a meta refresh: the dashboard runs no script).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ... import runtime, stats
from ...queuestatus import consumers, queue_status
from ...redact import redact_uri
from .. import chart
from ..render import render

COLUMNS = (
    ("waiting", "waiting"),
    ("in_flight", "in flight"),
    ("scheduled", "scheduled"),
    ("failed", "failed"),
    ("dead", "dead-lettered"),
    ("workers", "live workers"),
)
"""QueueStatus field -> column heading, in the order of ``earnevents status``."""

REFRESH = 5
"""Seconds between two reloads of the page."""


async def overview(request: Request) -> Response:
    env = runtime.current()
    registered = await consumers(env.redis, env.settings.queue_name)  # one reading: the count and the list agree
    status = await queue_status(registered)
    minutes = await stats.per_minute(env.redis, status.queue)
    live = [c for c in registered if c.alive]
    return render(
        request,
        "overview.html",
        {
            "statuses": [status],
            "columns": COLUMNS,
            "chart": chart.build(minutes),
            "workers": live,
            "refresh": REFRESH,
            "redis_uri": redact_uri(env.settings.redis_uri),
            "mongo_uri": redact_uri(env.settings.mongo_uri) if env.settings.mongo_uri else None,
        },
        current="overview",
    )


routes = [Route("/", overview, name="overview")]
