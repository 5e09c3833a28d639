"""Failed jobs: the list (filtered, paginated by the store), one job's detail, retrying or
removing one, and retrying or removing every job a filter matches (a confirmation that
shows the count, then a background bulk with a progress page).

Filters (query parameters of the list, hidden fields of the forms): ``event`` and
``handler`` (compared as they are), ``error`` (a substring of the error text), ``since``
and ``until`` (an ISO time, UTC when it names no zone, or a duration ago: ``90s``, ``2h``,
``7d``; :mod:`earnevents.moments`). Pages: ``page`` (1-based, :data:`PAGE_SIZE` jobs) or
``offset``. A bad value answers 400 with the reason on the page.

After retrying or removing one job the browser is sent back to the list with its filter,
and the list says what happened (``notice`` and ``job`` query parameters: a fixed message
chosen by ``notice``, never text taken from the URL).

A bulk's confirmation carries a ``since``/``until`` given as a duration ago as the moment
it meant then, so the bulk acts on the jobs that were counted (and those failing since,
when no ``until`` was given). The bulk itself is :mod:`earnevents.bulk`, run as a task of
the dashboard's process (:mod:`earnevents.dashboard.bulks`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ... import bulk, names, runtime
from ...bus import event_bus
from ...errors import JobNotFoundError
from ...event import encode
from ...failures import FailedJob
from ...failures.selection import JobSelection
from ...moments import parse_moment
from .. import security
from ..bulks import registry
from ..render import render, url
from .events import event_path

PAGE_SIZE = 50
"""Jobs per page of the list."""
MAX_OFFSET = 1_000_000_000
"""The largest offset (and so page) the list accepts; a larger one is a bad request."""
MAX_FILTER_LENGTH = 1000
"""The longest filter value accepted (characters)."""
FILTERS = ("event", "handler", "error", "since", "until")
"""The filter's fields, as the query string and the forms name them."""
ERROR_PREVIEW = 160
"""Characters of a job's error shown in the list (the detail page shows all of it)."""

NOTICES = {
    "retried": "Retried failed job {job}: its handler runs again.",
    "removed": "Removed failed job {job}.",
    "gone": "Failed job {job} was not found: already retried or removed?",
}
"""The messages the list shows after an action, by its ``notice`` parameter."""

VERBS = {
    "retry": ("Retry", "retried", "run their handlers again (each with a fresh round of retries)"),
    "remove": ("Remove", "removed", "delete them for good"),
}
"""action -> (button, past tense, what it does)."""


class BadRequest(ValueError):
    """A filter, page or action the dashboard cannot use (answered 400 with this message)."""


@dataclass(frozen=True)
class Filter:
    """The jobs a page is about: the values as typed (non-empty ones) and what they mean."""

    texts: dict[str, str]
    selection: JobSelection

    def query(self, **extra: Any) -> str:
        """The filter (and ``extra`` parameters that are not None) as a query string, with its ``?``."""
        params = {**self.texts, **{name: str(value) for name, value in extra.items() if value is not None}}
        return "?" + urlencode(params) if params else ""

    def describe(self) -> str:
        """The filter in words, for headings and confirmations."""
        return self.selection.describe("all failed jobs")


def _one(values: ImmutableMultiDict[str, str] | Mapping[str, str], name: str) -> str | None:
    """The field ``name`` stripped (None when absent or empty); BadRequest when given twice."""
    if isinstance(values, ImmutableMultiDict):
        given = values.getlist(name)
        if len(given) > 1:
            raise BadRequest(f"{name} is given {len(given)} times: give it once")
        value: object = given[0] if given else None
    else:
        value = values.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be text, got {type(value).__name__}")
    value = value.strip()
    if len(value) > MAX_FILTER_LENGTH:
        raise BadRequest(f"{name} is too long ({len(value)} characters; at most {MAX_FILTER_LENGTH})")
    return value or None


def read_filter(values: ImmutableMultiDict[str, str] | Mapping[str, str]) -> Filter:
    """The filter of a query string or a form; BadRequest saying what is wrong."""
    texts = {name: text for name in FILTERS if (text := _one(values, name)) is not None}
    moments: dict[str, dt.datetime | None] = {}
    for name in ("since", "until"):
        try:
            moments[name] = parse_moment(texts[name]) if name in texts else None
        except ValueError as exc:
            raise BadRequest(f"{name}: {exc}") from None
    try:
        selection = JobSelection(
            names.check_filter(texts.get("event"), "event"),
            names.check_filter(texts.get("handler"), "handler"),
            names.check_filter(texts.get("error"), "error"),
            moments["since"],
            moments["until"],
        )
    except (TypeError, ValueError) as exc:
        raise BadRequest(str(exc)) from None
    return Filter(texts, selection)


def read_offset(values: ImmutableMultiDict[str, str]) -> int:
    """The list's offset from ``offset``, else ``page`` (1-based); BadRequest when out of range."""
    offset = _number(_one(values, "offset"), "offset", 0)
    page = _number(_one(values, "page"), "page", 1)
    if offset is not None:
        return offset
    if page is None:
        return 0
    if (page - 1) * PAGE_SIZE > MAX_OFFSET:
        raise BadRequest(f"page must be at most {MAX_OFFSET // PAGE_SIZE + 1}, got {page}")
    return (page - 1) * PAGE_SIZE


def _number(text: str | None, name: str, least: int) -> int | None:
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise BadRequest(f"{name} must be a whole number from {least} to {MAX_OFFSET}, got {text[:40]!r}")
    value = int(text)
    if not least <= value <= MAX_OFFSET:
        raise BadRequest(f"{name} must be a whole number from {least} to {MAX_OFFSET}, got {value}")
    return value


async def _count(where: Filter) -> int:
    s = where.selection
    return await event_bus.count_failed_jobs(s.event_name, s.handler, error=s.error, since=s.since, until=s.until)


async def _page(where: Filter, offset: int) -> list[FailedJob]:
    s = where.selection
    return await event_bus.get_failed_jobs(
        PAGE_SIZE, offset, s.event_name, s.handler, error=s.error, since=s.since, until=s.until
    )


def _row(request: Request, job: FailedJob, back: str) -> dict[str, Any]:
    first_line = job.error.splitlines()[0] if job.error else ""
    preview = first_line if len(first_line) <= ERROR_PREVIEW else first_line[:ERROR_PREVIEW] + "…"
    return {
        "id": job.id,
        "href": url(request, "failed_job", job_id=job.id) + back,
        "failed_at": f"{job.failed_at.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S}",
        "event": job.event.name,
        "handler": job.handler,
        "attempts": job.attempts,
        "error": preview,
    }


def _notice(request: Request) -> str | None:
    template = NOTICES.get(request.query_params.get("notice", ""))
    job = request.query_params.get("job", "")
    if template is None or not names.is_record_id(job):
        return None
    return template.format(job=job)


def _bad(request: Request, message: str, texts: Mapping[str, str] | None = None) -> Response:
    """The list's page with ``message`` and no jobs (status 400), the form keeping what was typed."""
    context: dict[str, Any] = {
        "error": message,
        "filters": {name: (texts or {}).get(name, "") for name in FILTERS},
        "jobs": [],
        "total": None,
        "notice": None,
    }
    return render(request, "failed.html", context, current="failed", status=400)


def _typed(values: ImmutableMultiDict[str, str]) -> dict[str, str]:
    """What was typed into the filter's fields (for the form shown again with a 400)."""
    return {name: values.get(name, "")[:MAX_FILTER_LENGTH] for name in FILTERS}


async def failed(request: Request) -> Response:
    """``GET /failed``: the jobs the filter matches, a page of them, newest first."""
    params = request.query_params
    try:
        where = read_filter(params)
        offset = read_offset(params)
    except BadRequest as exc:
        return _bad(request, str(exc), _typed(params))
    total = await _count(where)
    jobs = await _page(where, offset) if offset < total else []
    page = offset // PAGE_SIZE + 1
    newer = older = None
    if offset > 0:
        newer = url(request, "failed") + where.query(offset=max(0, offset - PAGE_SIZE) or None)
    if offset + PAGE_SIZE < total:
        older = url(request, "failed") + where.query(offset=offset + PAGE_SIZE)
    context = {
        "error": None,
        "filters": {name: where.texts.get(name, "") for name in FILTERS},
        "filtered": bool(where.texts),
        "description": where.describe(),
        "query": where.query(),
        "keep": where.texts | ({"offset": str(offset)} if offset else {}),
        "jobs": [_row(request, job, where.query(offset=offset or None)) for job in jobs],
        "bulk": {
            action: url(request, "failed_bulk") + "?" + urlencode({"action": action, **where.texts})
            for action in bulk.ACTIONS
        },
        "total": total,
        "first": offset + 1,
        "last": offset + len(jobs),
        "page": page,
        "pages": max(1, -(-total // PAGE_SIZE)),
        "newer": newer,
        "older": older,
        "notice": _notice(request),
    }
    return render(request, "failed.html", context, current="failed")


def _json(value: Any) -> str:
    try:
        return json.dumps(encode(value), indent=2, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):  # stored data that no longer encodes: show what Python sees
        return repr(value)


async def failed_job(request: Request) -> Response:
    """``GET /failed/{job_id}``: everything kept of one failed job."""
    job_id = request.path_params["job_id"]
    params = request.query_params
    try:
        where = read_filter(params)
        offset = read_offset(params)
    except BadRequest as exc:
        return _bad(request, str(exc), _typed(params))
    try:
        job = await event_bus.get_failed_job(job_id)
    except JobNotFoundError:
        message = f"no failed job with id {job_id[:64]!r}: already retried or removed?"
        back = url(request, "failed") + where.query(offset=offset or None)
        context: dict[str, Any] = {"job": None, "message": message, "back": back, "keep": {}}
        return render(request, "failed_job.html", context, current="failed", status=404)
    event = job.event
    context = {
        "job": {
            "id": job.id,
            "event": event.name,
            "event_id": event.id,
            "event_time": f"{event.timestamp.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
            "data": _json(event.data),
            "metadata": _json(event.metadata or {}),
            "handler": job.handler,
            "attempts": job.attempts,
            "queue": job.queue,
            "failed_at": f"{job.failed_at.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
            "error": job.error,
            "traceback": job.traceback,
        },
        "message": None,
        "back": url(request, "failed") + where.query(offset=offset or None),
        "keep": where.texts | ({"offset": str(offset)} if offset else {}),
        "related": related(request, job),
    }
    return render(request, "failed_job.html", context, current="failed")


def related(request: Request, job: FailedJob) -> list[tuple[str, str]]:
    """(text, href) of the pages about what ``job`` concerns: its event's record in the event
    log (when it is on), the other failed jobs of its event name, the workflow runs of the
    document its event is about."""
    links = []
    if runtime.current().settings.event_log:
        links.append(("its event in the event log", event_path(request, job.event.id)))
    links.append(
        ("failed jobs of this event name", url(request, "failed") + "?" + urlencode({"event": job.event.name}))
    )
    entity = job.event.entity_ref
    if entity is not None:
        query = urlencode({"model": entity.model, "entity_id": entity.id})
        links.append((f"workflow runs of {entity.model} {entity.id}", url(request, "workflows") + "?" + query))
    return links


def _back_to_list(request: Request, fields: Mapping[str, str], notice: str, job_id: str) -> Response:
    """303 to the list with the filter and offset the form carried, saying what happened."""
    params = {name: fields[name] for name in (*FILTERS, "offset") if fields.get(name)}
    target = url(request, "failed") + "?" + urlencode({**params, "notice": notice, "job": job_id})
    return RedirectResponse(target, status_code=303)


async def failed_retry(request: Request) -> Response:
    """``POST /failed/{job_id}/retry``: run the job's handler again; back to the list."""
    return await _act_on_one(request, event_bus.retry_job, "retried")


async def failed_remove(request: Request) -> Response:
    """``POST /failed/{job_id}/remove``: delete the job for good; back to the list."""
    return await _act_on_one(request, event_bus.remove_job, "removed")


async def _act_on_one(request: Request, act: Callable[[str], Awaitable[object]], done: str) -> Response:
    job_id = request.path_params["job_id"]
    try:
        await act(job_id)
    except JobNotFoundError:
        done = "gone"
    return _back_to_list(request, security.form(request), done, job_id)


def _action(text: str | None) -> bulk.Action:
    if text == "retry":
        return "retry"
    if text == "remove":
        return "remove"
    raise BadRequest(f"action must be retry or remove, got {(text or '')[:40]!r}")


async def failed_bulk(request: Request) -> Response:
    """``GET /failed/bulk?action=retry|remove&<filter>``: how many jobs the filter matches
    now and what the action would do to them, with the form that starts it."""
    params = request.query_params
    try:
        action = _action(_one(params, "action"))
        where = read_filter(params)
    except BadRequest as exc:
        return _bad(request, str(exc), _typed(params))
    button, _, effect = VERBS[action]
    # A duration ago ("2h") is fixed to the moment it meant here: the bulk acts on the jobs counted.
    moments = {"since": where.selection.since, "until": where.selection.until}
    keep = where.texts | {name: moment.isoformat() for name, moment in moments.items() if moment is not None}
    context = {
        "action": action,
        "button": button,
        "effect": effect,
        "count": await _count(where),
        "description": where.describe(),
        "keep": keep,
        "back": url(request, "failed") + where.query(),
    }
    return render(request, "failed_bulk.html", context, current="failed")


async def failed_bulk_start(request: Request) -> Response:
    """``POST /failed/bulk``: start the bulk in the background; 303 to its progress page."""
    fields = security.form(request)
    try:
        action = _action(_one(fields, "action"))
        where = read_filter(fields)
    except BadRequest as exc:
        return _bad(request, str(exc), {name: fields.get(name, "") for name in FILTERS})
    started = registry(request).start(action, where.selection, where.texts)
    return RedirectResponse(url(request, "failed_bulk_progress", bulk_id=started.id), status_code=303)


async def failed_bulk_progress(request: Request) -> Response:
    """``GET /failed/bulk/{bulk_id}``: how far a bulk got; refreshes itself every second
    (``<meta http-equiv="refresh">``: no script) until it is finished."""
    found = registry(request).get(request.path_params["bulk_id"])
    if found is None:
        message = "no such bulk action here: the dashboard was restarted, or another of its processes ran it"
        return render(request, "error.html", {"message": message}, current="failed", status=404)
    progress = found.progress
    button, past, _ = VERBS[found.action]
    where = Filter(found.filters, found.selection)
    context = {
        "bulk": found,
        "progress": progress,
        "verb": button,
        "past": past,
        "description": where.describe(),
        "back": url(request, "failed") + where.query(),
        "started_at": f"{found.started_at:%Y-%m-%d %H:%M:%S} UTC",
    }
    return render(request, "failed_bulk_progress.html", context, current="failed")


routes = [
    Route("/failed", failed, name="failed", methods=["GET"]),
    Route("/failed/bulk", failed_bulk, name="failed_bulk", methods=["GET"]),
    Route("/failed/bulk", failed_bulk_start, name="failed_bulk", methods=["POST"]),
    Route("/failed/bulk/{bulk_id}", failed_bulk_progress, name="failed_bulk_progress", methods=["GET"]),
    Route("/failed/{job_id}", failed_job, name="failed_job", methods=["GET"]),
    Route("/failed/{job_id}/retry", failed_retry, name="failed_retry", methods=["POST"]),
    Route("/failed/{job_id}/remove", failed_remove, name="failed_remove", methods=["POST"]),
]
