"""Overview: the configured queue's counts (the reading ``earnevents status`` prints) and
where the dashboard is connected (URIs redacted).

The per-minute chart of handled, retried and failed jobs over the last hour goes in the
template's ``chart`` block (``templates/overview.html``), fed from this endpoint's context.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ... import runtime
from ...queuestatus import queue_status
from ...redact import redact_uri
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


async def overview(request: Request) -> Response:
    settings = runtime.current().settings
    status = await queue_status()
    return render(
        request,
        "overview.html",
        {
            "statuses": [status],
            "columns": COLUMNS,
            "redis_uri": redact_uri(settings.redis_uri),
            "mongo_uri": redact_uri(settings.mongo_uri) if settings.mongo_uri else None,
        },
        current="overview",
    )


routes = [Route("/", overview, name="overview")]
