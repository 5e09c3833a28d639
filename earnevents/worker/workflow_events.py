"""Events into workflows: the worker's event bridge.

One internal handler, :func:`bridge`, is subscribed to every event name a declared
workflow needs (subscribed again whenever another workflow is declared):

- the names its steps wait for with a literal ``wait_for_event("name", ...)``
  (``WorkflowSpec.awaited_events``): the event is delivered to the waiting runs,
  matched by ``match`` (and kept a day for runs whose step is still running);
- the event an ``@event_workflow`` starts on, and, for a negative offset, that
  event's ``<name>:created`` / ``<name>:cancelled`` announcements (a model's
  scheduled event): the run is started, created ``waiting`` for its start (``wake_at``,
  ``waiting_for`` kind ``"start"``: no signal or event wakes it), moved or cancelled. A
  negative-offset workflow has one pending run per document, as the model has one
  pending occurrence: announcements handled out of order leave the latest one's time.

It runs as a normal job of the event (retried, delivered once per event id), so
whoever publishes the event (``event_bus.publish``, a model's events, a scheduled
model event firing) reaches the workflows. It is internal: left out of the handler
listing and of strict mode's check (in strict mode, the awaited names must still be
defined to be published at all). An event name computed at run time
(``wait_for_event(name_variable)``) is not subscribed to: such a wait is woken only by
``engine.deliver`` or by an event some other workflow's literal wait subscribes to.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from .. import ids, patterns
from ..event import Event
from ..handlers import dotted_name, occurrence_event_name
from ..handlers import registry as handlers
from ..logtext import get_logger
from ..retry import RetryPolicy
from ..workflows import runs
from ..workflows.definitions import EventTrigger, WorkflowSpec, on_declared
from ..workflows.definitions import registry as workflows
from ..workflows.engine import deliver, engine, schedule_run, withdraw_wake
from ..workflows.runs import CANCELLED, START, WAITING

log = get_logger(__name__)

POLICY = RetryPolicy(max_retries=10, interval_start=1.0, interval_step=2.0, interval_max=30.0)
"""The bridge fails only when MongoDB or Redis does: tried again for about four minutes."""

_NAMESPACE = uuid.UUID("8d1c2f4e-6a7b-4c3d-9e0f-1a2b3c4d5e6f")


def subscriptions() -> list[str]:
    """Every event name the declared workflows wait for or start on (patterns left out)."""
    wanted: set[str] = set()
    for spec in workflows.values():
        wanted |= spec.awaited_events
        trigger = spec.trigger
        if trigger is not None:
            wanted.add(trigger.event_name)
            if trigger.offset_minutes < 0:
                wanted.add(occurrence_event_name(trigger.event_name, "created"))
                wanted.add(occurrence_event_name(trigger.event_name, "cancelled"))
    return sorted(name for name in wanted if not patterns.is_pattern(name))


def resubscribe() -> None:
    """Subscribe :func:`bridge` to :func:`subscriptions` (again)."""
    name = dotted_name(bridge)
    try:
        handlers.unregister(name)
    except KeyError:
        pass
    wanted = subscriptions()
    if wanted:
        handlers.subscribe(wanted, bridge, POLICY, what="workflow event bridge", internal=True)


async def bridge(event: Event) -> None:
    """Deliver ``event`` to the runs waiting for it; start, move or cancel the
    ``@event_workflow`` runs it concerns."""
    awaited = any(event.name in spec.awaited_events for spec in workflows.values())
    if awaited:
        await deliver("event", event.name, event.data, None, key=event.id)
    errors: list[Exception] = []
    for spec in list(workflows.values()):
        trigger = spec.trigger
        if trigger is None or (trigger.entity_type is not None and event.sender != trigger.entity_type):
            continue
        try:
            if event.name == trigger.event_name:
                await _occurred(spec, trigger, event)
            elif trigger.offset_minutes < 0 and event.name == occurrence_event_name(trigger.event_name, "created"):
                await _scheduled(spec, trigger, event)
            elif trigger.offset_minutes < 0 and event.name == occurrence_event_name(trigger.event_name, "cancelled"):
                await _unscheduled(spec, event)
        except Exception as exc:  # one workflow's failing create_context does not keep the others from starting
            log.warning("workflow %s could not start on event %s %s: %s", spec.name, event.name, event.id, exc)
            errors.append(exc)
    if errors:
        raise errors[0]  # the job is retried: the runs that started are not started again


# --- starting on the event --------------------------------------------------------------


def _seconds(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return float(value.timestamp())
    return None


def _due_ms(value: Any) -> int | None:
    seconds = _seconds(value)
    return None if seconds is None else round(seconds * 1000)


def _entity(event: Event) -> dict[str, str] | None:
    ref = event.entity_ref
    return None if ref is None else ref.to_dict()


def _id(*parts: str) -> str:
    return ids.uuid5_hex(_NAMESPACE, "/".join(parts))


def _occurrence_run_id(spec: WorkflowSpec, trigger: EventTrigger, entity: dict[str, str], due_ms: int) -> str:
    """The run of a negative-offset workflow for one occurrence (as first scheduled)."""
    return _id(spec.name, entity["model"], entity["id"], trigger.event_name, str(due_ms))


async def _occurred(spec: WorkflowSpec, trigger: EventTrigger, event: Event) -> None:
    """The trigger event itself: start the run (once per event id), at once or waiting for
    its start until the event's time (a scheduled model event's ``due_at``, else its timestamp)
    plus a positive offset. With a negative offset, a scheduled model event's run was
    created when its occurrence was scheduled: nothing more starts, unless none exists
    (the workflow was declared after that): then it starts now, late. Other events have no
    time known in advance: a negative offset starts the run at once."""
    entity = _entity(event)
    due = _seconds((event.metadata or {}).get("due_at"))
    if trigger.offset_minutes < 0 and due is not None and entity is not None:
        due_ms = round(due * 1000)
        query = {"workflow": spec.name, "entity.model": entity["model"], "entity.id": entity["id"]}
        if await runs.collection().find_one({**query, "trigger.due_ms": due_ms}, {"_id": 1}) is not None:
            return
        run_id = _occurrence_run_id(spec, trigger, entity, due_ms)
        await engine._start(spec, {"event": event}, run_id=run_id, entity=entity, trigger={"due_ms": due_ms})
        return
    wake_at = None
    if trigger.offset_minutes > 0:
        wake_at = (due if due is not None else event.timestamp.timestamp()) + trigger.offset_minutes * 60
    await engine._start(spec, {"event": event}, run_id=_id(spec.name, event.id), entity=entity, wake_at=wake_at)


async def _pending(spec: WorkflowSpec, entity: dict[str, str]) -> tuple[runs.Run, dict[str, Any]] | None:
    """The run created for the document's pending occurrence (a model keeps one per document
    and definition), still waiting for its start; with its ``trigger`` (``due_ms``, and
    ``announced_at``: the time of the announcement that put it there)."""
    doc = await runs.collection().find_one(
        {
            "workflow": spec.name,
            "entity.model": entity["model"],
            "entity.id": entity["id"],
            "trigger": {"$ne": None},
            "status": WAITING,
            "waiting_for.kind": START,  # not a run started late whose start step waits for a signal
            "visit": 0,
        }
    )
    return None if doc is None else (runs.Run.from_doc(doc), dict(doc["trigger"]))


def _announced(trigger: dict[str, Any]) -> float:
    value = trigger.get("announced_at")
    return float(value) if isinstance(value, (int, float)) else 0.0


async def _scheduled(spec: WorkflowSpec, trigger: EventTrigger, event: Event) -> None:
    """``<name>:created``: create the run waiting for its start at due + offset, or move the pending one.

    The announcements of one document come from its writes, in order of their time; one
    handled late (a retry, another worker that was slower) is older than what the pending
    run was last set from, and changes nothing.
    """
    entity = _entity(event)
    due_ms = _due_ms(event.data.get("due_at"))
    if entity is None or due_ms is None:
        return
    wake_at = due_ms / 1000 + trigger.offset_minutes * 60
    announced = event.timestamp.timestamp()
    now = {"due_ms": due_ms, "announced_at": announced}
    pending = await _pending(spec, entity)
    if pending is not None:
        run, was = pending
        if _announced(was) >= announced:
            return  # this announcement again, or an older one
        moved = await runs.transition(
            run,
            (WAITING,),
            {"wake_at": wake_at, "trigger": now},
            runs.line("moved", due_at=due_ms / 1000, wake_at=wake_at),
        )
        if moved is None:
            raise RuntimeError(f"workflow run {run.id} changed while its wake-up was moved; trying again")
        await withdraw_wake(run)
        await schedule_run(moved)
        return
    run_id = _occurrence_run_id(spec, trigger, entity, due_ms)
    doc = await runs.collection().find_one({"_id": run_id, "status": CANCELLED, "visit": 0, "trigger.cancelled": True})
    if doc is not None:
        if _announced(doc["trigger"]) >= announced:
            return  # cancelled by a later write
        # scheduled again at the same time after its occurrence was cancelled (a status toggled)
        revived = await runs.transition(
            runs.Run.from_doc(doc),
            (CANCELLED,),
            {
                "status": WAITING,
                "wake_at": wake_at,
                "waiting_for": runs.start_wait(trigger.event_name, spec.start, trigger.offset_minutes),
                "trigger": now,
            },
            runs.line("scheduled again", due_at=due_ms / 1000, wake_at=wake_at),
        )
        if revived is not None:
            await schedule_run(revived)
        return
    await engine._start(spec, {"event": event}, run_id=run_id, entity=entity, wake_at=wake_at, trigger=now)


async def _unscheduled(spec: WorkflowSpec, event: Event) -> None:
    """``<name>:cancelled``: cancel the run still waiting for that occurrence's start."""
    entity = _entity(event)
    due_ms = _due_ms(event.data.get("due_at"))
    if entity is None or due_ms is None:
        return
    pending = await _pending(spec, entity)
    announced = event.timestamp.timestamp()
    if pending is None or pending[1].get("due_ms") != due_ms or _announced(pending[1]) >= announced:
        return
    run = pending[0]
    cancelled = await runs.transition(
        run,
        (WAITING,),
        {
            "status": CANCELLED,
            "wake_at": None,
            "waiting_for": None,
            "trigger": {**pending[1], "cancelled": True, "announced_at": announced},
        },
        runs.line("cancelled", by=f"{event.name} ({event.data.get('reason')})"),
    )
    if cancelled is not None:
        await withdraw_wake(run)


on_declared(resubscribe)
