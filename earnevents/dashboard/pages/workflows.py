"""Workflows: runs by status, one run's state and history; cancel, resume and signal a run.

- ``GET /workflows?workflow=&status=&model=&entity_id=&offset=``: runs, newest first (``engine.find_runs``);
  ``model`` and ``entity_id`` together: only the runs of that document.
- ``GET /workflows/{run_id}``: a run's status, step, Context, wait, wake-up time, attempts,
  result or error, entity and history (``engine.get_run``); 404 for an unknown id. A run an
  ``@event_workflow`` created for a later start says when it starts (no signal form: no
  signal or event starts it).
- ``POST /workflows/{run_id}/cancel``: ``engine.cancel`` (a run that had ended says so).
- ``POST /workflows/{run_id}/resume`` (field ``at_step``, empty: the run's step):
  ``engine.resume`` of a failed or cancelled run.
- ``POST /workflows/{run_id}/signal`` (fields ``name`` and ``payload``, a JSON object):
  ``engine.signal(name, payload, run_id=...)``; bad JSON is a 400 saying why.

Resume and signal need the workflow's definition (its steps, its Context) declared in the
dashboard's process: the standalone dashboard does not import the application, so there
they answer 409 saying so (``earnevents workflows resume|signal`` import it), while a
dashboard mounted in the application has them. Runs live in MongoDB: without a
``mongo_uri`` the pages say workflows need MongoDB.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ... import names, runtime
from ...workflows.definitions import registry
from ...workflows.engine import RunNotFoundError, WorkflowError, engine
from ...workflows.runs import ACTIVE, CANCELLED, FAILED, STATUSES, Run, waits_to_start
from .. import listing, security
from ..listing import BadQuery, choice, offset, pager, problem, text, when
from ..render import render, url

NOTICES = {
    "cancelled": "Run cancelled.",
    "not_cancelled": "Nothing to cancel: the run had ended.",
    "resumed": "Run resumed.",
    "signalled": "Signal sent: {woken} run(s) woke.",
}


def _no_mongo(request: Request, status: int = 200) -> Response | None:
    """The page saying workflows need MongoDB, when none is configured."""
    if runtime.current().settings.mongo_uri:
        return None
    return render(request, "workflows_off.html", current="workflows", status=status)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


async def workflows(request: Request) -> Response:
    off = _no_mongo(request)
    if off is not None:
        return off
    try:
        filters = {
            "workflow": text(request, "workflow"),
            "status": choice(request, "status", STATUSES),
            "model": text(request, "model"),
            "entity_id": text(request, "entity_id"),
        }
        at = offset(request)
        entity = _entity(filters["model"], filters["entity_id"])
    except BadQuery as exc:
        return problem(request, str(exc), status=400, current="workflows")
    found = await engine.find_runs(filters["workflow"], filters["status"], entity, listing.PAGE_SIZE + 1, at)
    runs = found[: listing.PAGE_SIZE]
    return render(
        request,
        "workflows.html",
        {
            "runs": runs,
            "filters": filters,
            "statuses": STATUSES,
            "when": when,
            "waits_to_start": waits_to_start,
            "pager": pager(request, "workflows", filters, at, len(runs), more=len(found) > listing.PAGE_SIZE),
        },
        current="workflows",
    )


def _entity(model: str | None, entity_id: str | None) -> dict[str, str] | None:
    """The runs' document filter: a model name and a document id, both or neither."""
    if (model is None) != (entity_id is None):
        raise BadQuery("model and entity_id filter runs by their document together: give both or neither")
    return None if model is None or entity_id is None else {"model": model, "id": entity_id}


async def _run(request: Request) -> Run | Response:
    """The run the path names, or the page to answer with (no MongoDB, not found)."""
    off = _no_mongo(request, 200 if request.method == "GET" else 409)
    if off is not None:
        return off
    run_id: str = request.path_params["run_id"]
    message = f"no workflow run has the id {run_id!r}"
    if not names.is_record_id(run_id):
        return problem(request, message, status=404, current="workflows", title="Not found")
    try:
        return await engine.get_run(run_id)
    except RunNotFoundError:
        return problem(request, message, status=404, current="workflows", title="Not found")


def _back(request: Request, run: Run, notice: str, **values: Any) -> Response:
    query = urlencode({"notice": notice, **values})
    return RedirectResponse(f"{url(request, 'workflow_run', run_id=run.id)}?{query}", status_code=303)


async def workflow_run(request: Request) -> Response:
    run = await _run(request)
    if not isinstance(run, Run):
        return run
    notice = None
    code = request.query_params.get("notice", "")
    if code in NOTICES:
        woken = request.query_params.get("woken", "")
        notice = NOTICES[code].format(woken=woken if woken.isdigit() else "?")
    history = [
        {
            "at": entry.get("at"),
            "what": str(entry.get("what")),
            "details": json.dumps(
                {key: value for key, value in entry.items() if key not in ("at", "what")}, sort_keys=True, default=str
            ),
        }
        for entry in run.history
    ]
    waiting = run.waiting_for or {}
    return render(
        request,
        "workflow_run.html",
        {
            "run": run,
            "context_json": _json(run.context),
            "waiting_json": _json(run.waiting_for) if run.waiting_for else "",
            "result_json": _json(run.result),
            "history": history,
            "active": run.status in ACTIVE,
            "starts": waits_to_start(run),
            "resumable": run.status in (FAILED, CANCELLED),
            "signal_name": waiting.get("name") if waiting.get("kind") == "signal" else None,
            "when": when,
            "notice": notice,
        },
        current="workflows",
    )


async def cancel(request: Request) -> Response:
    run = await _run(request)
    if not isinstance(run, Run):
        return run
    return _back(request, run, "cancelled" if await engine.cancel(run.id) else "not_cancelled")


def _undeclared(request: Request, run: Run) -> Response | None:
    """409 when the run's workflow is not declared in this process (resume and signal need it)."""
    if run.workflow in registry:
        return None
    message = (
        f"workflow {run.workflow!r} is not declared in the dashboard's process, and resuming or signalling a run "
        "needs its definition: use `earnevents workflows resume|signal` (they import the application), "
        "or mount the dashboard in the application"
    )
    return problem(request, message, status=409, current="workflows", title="Cannot do that here")


async def resume(request: Request) -> Response:
    run = await _run(request)
    if not isinstance(run, Run):
        return run
    refusal = _undeclared(request, run)
    if refusal is not None:
        return refusal
    at_step = security.form(request).get("at_step", "").strip() or None
    try:
        await engine.resume(run.id, at_step=at_step)
    except WorkflowError as exc:
        return problem(request, str(exc), status=409, current="workflows", title="Cannot resume")
    return _back(request, run, "resumed")


def _payload(raw: str) -> dict[str, Any]:
    """The signal's payload: a JSON object (empty text: no payload); BadQuery otherwise."""
    if not raw.strip():
        return {}
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise BadQuery(f"the payload is not JSON: {exc}") from None
    except RecursionError:
        raise BadQuery("the payload nests too deep to read") from None
    if not isinstance(payload, dict):
        raise BadQuery(f"the payload must be a JSON object ({{...}}), got {type(payload).__name__}")
    return payload


async def signal(request: Request) -> Response:
    run = await _run(request)
    if not isinstance(run, Run):
        return run
    fields = security.form(request)
    try:
        name = fields.get("name", "").strip()
        try:
            names.check_event_name(name, "signal name")
        except ValueError as exc:
            raise BadQuery(str(exc)) from None
        payload = _payload(fields.get("payload", ""))
    except BadQuery as exc:
        return problem(request, str(exc), status=400, current="workflows")
    refusal = _undeclared(request, run)
    if refusal is not None:
        return refusal
    try:
        woken = await engine.signal(name, payload, run_id=run.id)
    except (TypeError, ValueError) as exc:  # a payload earnevents cannot keep (e.g. 1e999 is no JSON number)
        return problem(request, f"the signal was not sent: {exc}", status=400, current="workflows")
    return _back(request, run, "signalled", woken=woken)


routes = [
    Route("/workflows", workflows, name="workflows", methods=["GET"]),
    Route("/workflows/{run_id}", workflow_run, name="workflow_run", methods=["GET"]),
    Route("/workflows/{run_id}/cancel", cancel, name="workflow_cancel", methods=["POST"]),
    Route("/workflows/{run_id}/resume", resume, name="workflow_resume", methods=["POST"]),
    Route("/workflows/{run_id}/signal", signal, name="workflow_signal", methods=["POST"]),
]
