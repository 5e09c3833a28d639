"""Scheduled: what waits in the delay schedule, soonest first; cancel one.

``GET /scheduled?name=&offset=`` lists the queue's delayed events, handler retries, models'
scheduled occurrences (with the document each is for) and workflow wake-ups
(``event_bus.get_scheduled``), filtered by exact event name. ``POST /scheduled/cancel``
(field ``id``) withdraws one with ``event_bus.cancel`` and redirects back saying whether
it was still pending.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ... import keys, names
from ...bus import event_bus
from ...schedule import ScheduledEvent
from .. import listing, security
from ..listing import BadQuery, offset, pager, problem, text, when
from ..render import render, url

NOTICES = {
    "cancelled": "Cancelled {id}.",
    "gone": "{id} was no longer scheduled (already due, or cancelled before).",
}


def kind(item: ScheduledEvent) -> str:
    """What the message is: a delayed event, a handler's retry, a model's occurrence or a workflow's wake-up."""
    if item.handler == keys.WORKFLOW_HANDLER:
        return "workflow wake-up"
    if item.handler is not None:
        return "handler retry"
    if item.entity is not None:
        return "model occurrence"
    return "delayed event"


async def scheduled(request: Request) -> Response:
    try:
        name = text(request, "name")
        at = offset(request)
    except BadQuery as exc:
        return problem(request, str(exc), status=400, current="scheduled")
    items = await event_bus.get_scheduled(listing.PAGE_SIZE, at, name)
    total = await event_bus.count_scheduled(name)
    notice = None
    code = request.query_params.get("notice")
    if code in NOTICES:
        notice = NOTICES[code].format(id=request.query_params.get("id", ""))
    return render(
        request,
        "scheduled.html",
        {
            "items": items,
            "name": name,
            "kind": kind,
            "when": when,
            "notice": notice,
            "pager": pager(request, "scheduled", {"name": name}, at, len(items), total=total),
        },
        current="scheduled",
    )


async def cancel(request: Request) -> Response:
    message_id = security.form(request).get("id", "")
    if not names.is_event_id(message_id):
        return problem(request, f"no scheduled message has the id {message_id!r}", status=404, title="Not found")
    cancelled = await event_bus.cancel(message_id)
    query = urlencode({"notice": "cancelled" if cancelled else "gone", "id": message_id})
    return RedirectResponse(f"{url(request, 'scheduled')}?{query}", status_code=303)


routes = [
    Route("/scheduled", scheduled, name="scheduled", methods=["GET"]),
    Route("/scheduled/cancel", cancel, name="scheduled_cancel", methods=["POST"]),
]
