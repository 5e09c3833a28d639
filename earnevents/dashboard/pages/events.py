"""Events: the event log (when it is on), one event's handlers, and replaying an event.

- ``GET /events?name=&status=&sender=&since=&until=&offset=``: logged events of the queue,
  newest first (``event_bus.find_events``); ``since``/``until`` are a duration ago or
  ISO 8601 times (UTC unless they name an offset): :func:`earnevents.moments.parse_moment`.
- ``GET /events/{event_id}``: one event's data, metadata and each handler's status,
  attempts, times, last error and traceback (``event_bus.get_event``); 404 for an id
  that is not logged. Ids are percent-encoded in links (:func:`event_path`): an event id
  may hold ``/`` and ``?``.
- ``POST /events/{event_id}/replay`` (field ``handler``: empty for every handler, else one
  of the event's handlers): ``event_bus.replay``, then a redirect to the new event's page.

With the event log off (``settings.event_log`` false) the pages say how to turn it on
(``EARNEVENTS_EVENT_LOG=1``) instead.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ... import message, names, runtime
from ...bus import event_bus
from ...errors import EventNotFoundError
from ...eventlog import EVENT_STATUSES, EventRecord
from .. import listing, security
from ..listing import BadQuery, choice, moment, offset, pager, problem, text, when
from ..render import render, url


def event_path(request: Request, event_id: str) -> str:
    """The path of an event's page. Event ids may hold any printable ASCII (``/``, ``?``,
    ``#`` too), so the id is percent-encoded, which ``url("event", event_id=...)`` does not do."""
    return f"{url(request, 'events')}/{quote(event_id, safe='')}"


def _log_off(request: Request) -> Response | None:
    """The page saying how to turn the event log on, when it is off."""
    if runtime.current().settings.event_log:
        return None
    return render(request, "event_log_off.html", current="events")


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


async def events(request: Request) -> Response:
    off = _log_off(request)
    if off is not None:
        return off
    try:
        filters = {name: text(request, name) for name in ("name", "sender", "since", "until")}
        filters["status"] = choice(request, "status", EVENT_STATUSES)
        since, until = moment(request, "since"), moment(request, "until")
        at = offset(request)
    except BadQuery as exc:
        return problem(request, str(exc), status=400, current="events")
    found = await event_bus.find_events(
        filters["name"], filters["status"], filters["sender"], since, until, listing.PAGE_SIZE + 1, at
    )
    records = found[: listing.PAGE_SIZE]
    return render(
        request,
        "events.html",
        {
            "records": records,
            "filters": filters,
            "statuses": EVENT_STATUSES,
            "when": when,
            "event_path": lambda event_id: event_path(request, event_id),
            "pager": pager(request, "events", filters, at, len(records), more=len(found) > listing.PAGE_SIZE),
        },
        current="events",
    )


def _not_found(request: Request, event_id: str) -> Response:
    return problem(request, f"no logged event has the id {event_id!r}", status=404, current="events", title="Not found")


async def _record(request: Request) -> EventRecord | Response:
    """The logged event the path names, else the page saying why not (log off, 404)."""
    off = _log_off(request)
    if off is not None:
        return off
    event_id: str = request.path_params["event_id"]
    if not names.is_event_id(event_id):
        return _not_found(request, event_id)
    try:
        return await event_bus.get_event(event_id)
    except EventNotFoundError:
        return _not_found(request, event_id)


async def event(request: Request) -> Response:
    record = await _record(request)
    if isinstance(record, Response):
        return record
    notice = None
    if request.query_params.get("notice") == "replayed":
        notice = f"Published as a replay of {record.replay_of}." if record.replay_of else None
    return render(
        request,
        "event.html",
        {
            "record": record,
            "handlers": sorted(record.handlers.values(), key=lambda h: h.handler),
            "data_json": _json(record.data),
            "metadata_json": _json(record.metadata),
            "when": when,
            "notice": notice,
            "replay_path": event_path(request, record.id) + "/replay",
            "event_path": lambda other: event_path(request, other),
            "entity": record.event.entity_ref,
            "failed_job": lambda handler: url(
                request, "failed_job", job_id=message.derived_id("failed", record.id, handler.handler, handler.attempts)
            ),
            "failed_of_name": url(request, "failed") + "?" + urlencode({"event": record.name}),
        },
        current="events",
    )


async def replay(request: Request) -> Response:
    record = await _record(request)
    if isinstance(record, Response):
        return record
    event_id = record.id
    handler = security.form(request).get("handler", "").strip() or None
    if handler is not None and handler not in record.handlers:
        known = ", ".join(sorted(record.handlers)) or "none yet"
        message = f"event {event_id} has no handler {handler!r} (its handlers: {known})"
        return problem(request, message, status=400, current="events")
    new_id = await event_bus.replay(event_id, handlers=None if handler is None else [handler])
    await event_bus.flush_event_log()  # its page, next, shows the new record
    query = urlencode({"notice": "replayed"})
    return RedirectResponse(f"{event_path(request, new_id)}?{query}", status_code=303)


routes = [
    Route("/events", events, name="events", methods=["GET"]),
    Route("/events/{event_id:path}/replay", replay, name="event_replay", methods=["POST"]),
    Route("/events/{event_id:path}", event, name="event", methods=["GET"]),
]
