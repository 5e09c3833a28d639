"""The workflow engine: start runs, signal them, look at them, cancel and resume them.

Application code (after ``init()``) and steps (in workers) use the same ``engine``.
Each run moves on through earnevents' queue: a message for the workflow handler of
the workers (``keys.WORKFLOW_HANDLER``) names the run and the version it was sent for;
sleeps and wait timeouts are such messages parked in the delay schedule (one per run
state, ``keys.workflow_wake``; one left behind by a state the run has left is dropped as
stale). A sleeping or waiting run holds no worker. A run an ``@event_workflow`` creates
for a later start is ``waiting`` for it (``waiting_for`` kind ``"start"``,
:func:`runs.start_wait`) until ``wake_at``: then it starts; no signal or event wakes it.

Signals and events a run may wait for are kept for a day in
``earnevents_workflow_signals``: a run that records a wait looks there for one that
arrived since its step started, so nothing sent while the step ran is missed.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from .. import ids, keys, lazy, message, mongoerrors, names, runtime, schedule
from ..errors import EarnEventsError, EventTooLargeError
from ..event import Event, decode, encode
from ..logtext import get_logger
from . import runs
from .definitions import WorkflowSpec, registry
from .runs import ACTIVE, CANCELLED, FAILED, RUNNING, SLEEPING, WAITING, Run

if TYPE_CHECKING:
    import pydantic
else:
    pydantic = lazy.module("pydantic")

log = get_logger(__name__)

EVENT_SIGNAL = "event:"
"""``engine.signal("event:<name>", payload)`` wakes ``wait_for_event("<name>")`` too (seed 003's bridge)."""

SIGNAL_RETENTION = 86_400.0
"""Seconds a signal or event is kept for runs that start waiting for it after it came."""

_NAMESPACE = uuid.UUID("3f6e2b1a-9c4d-4e8f-a1b2-7c5d9e0f1a2b")


class WorkflowError(EarnEventsError):
    """A workflow or run that does not exist, or a change its state does not allow."""


class RunNotFoundError(WorkflowError, LookupError):
    """No run has that id."""


def spec_of(name: str) -> WorkflowSpec:
    try:
        return registry[name]
    except KeyError:
        raise WorkflowError(
            f"no workflow named {name!r} is declared in this process; import the module that declares it"
            f"{' (declared: ' + ', '.join(sorted(registry)) + ')' if registry else ''}"
        ) from None


# --- messages -----------------------------------------------------------------------


def message_id(run_id: str, version: int) -> str:
    """The id of the message that moves run ``run_id`` on from ``version`` (the same if sent twice)."""
    return ids.uuid5_hex(_NAMESPACE, f"{run_id}/{version}")


def _message(run: Run) -> tuple[str, str, str]:
    event_id = message_id(run.id, run.version)
    event = Event(
        name=f"workflow:{run.workflow}",
        data={"run": run.id, "version": run.version},
        metadata={"entity": run.entity} if run.entity else None,
        id=event_id,
    )
    payload = message.build(event.to_wire(), queue=run.queue, task_id=event_id, handler=keys.WORKFLOW_HANDLER)
    return event_id, event.name, payload


@dataclass(frozen=True)
class Outgoing:
    """The message that moves a run on from its current state: an ``(id, event name, message)``
    triple for ``queue``, sent now (``at`` None) or parked in the delay schedule until ``at``."""

    queue: str
    triple: tuple[str, str, str]
    at: float | None = None


def outgoing(run: Run) -> Outgoing | None:
    """What :func:`schedule_run` sends for ``run`` (None: nothing moves it on by itself: it
    ended, or it waits without a timeout). Pure, so workers' threads without a runtime
    can send it again with their own clients (``workflows.recovery``)."""
    if run.status == RUNNING:
        return Outgoing(run.queue, _message(run))
    if run.status in (SLEEPING, WAITING) and run.wake_at is not None:
        _, name, payload = _message(run)
        return Outgoing(run.queue, (keys.workflow_wake(run.id, run.version), name, payload), at=run.wake_at)
    return None


async def schedule_run(run: Run) -> None:
    """Send what moves ``run`` on from its current state (idempotent: the same message
    ids, so sending again delivers once): its step now, or its wake-up at ``wake_at``."""
    out = outgoing(run)
    if out is not None:
        await runtime.current().event_bus.enqueue([out.triple], queue=out.queue, at=out.at)


async def withdraw_wake(run: Run) -> None:
    """Cancel the pending wake-up of ``run`` as it was before it moved on (a woken run's
    timeout): pass the run read before the change, whose version the wake-up names."""
    script_keys, argv = schedule.cancel_args(run.queue, keys.workflow_wake(run.id, run.version))
    await runtime.current().redis.eval(schedule.CANCEL_SCRIPT, len(script_keys), *script_keys, *argv)


# --- signals and events ---------------------------------------------------------------


def _signals() -> Any:
    return runtime.current().db[keys.MONGO_WORKFLOW_SIGNALS]


_indexed: set[int] = set()


async def _ensure_index() -> None:
    db = runtime.current().db
    if id(db) in _indexed:
        return
    await _signals().create_index("expire_at", expireAfterSeconds=0)
    _indexed.add(id(db))


async def record_arrival(kind: str, name: str, payload: Mapping[str, Any], run_id: str | None, key: str) -> None:
    """Keep a signal or event for the runs that start waiting for it later (``key``: the
    same arrival recorded twice is kept once)."""
    await _ensure_index()
    now = time.time()
    doc = {
        "kind": kind,
        "name": name,
        "payload": json.dumps(encode(dict(payload), "payload")),
        "run": run_id,
        "at": now,
        "expire_at": dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=SIGNAL_RETENTION),
    }
    await _signals().update_one({"_id": key}, {"$setOnInsert": doc}, upsert=True)


async def arrived_since(run: Run) -> dict[str, Any] | None:
    """The payload of the first signal or event the run's wait is for that arrived since its
    step started (None if none did)."""
    waiting = run.waiting_for or {}
    if waiting.get("kind") not in ("signal", "event"):  # a run waiting for its start takes none
        return None
    since = run.step_started_at or run.updated_at
    cursor = _signals().find({"kind": waiting.get("kind"), "name": waiting.get("name"), "at": {"$gte": since}})
    async for doc in cursor.sort([("at", 1), ("_id", 1)]):
        if doc.get("run") not in (None, run.id):
            continue
        payload = decode(json.loads(doc["payload"]))
        if _matches(waiting.get("match"), payload):
            return {"payload": payload, "by": f"{waiting.get('kind')} {waiting.get('name')}"}
    return None


def check_payload(name: str, payload: Mapping[str, Any]) -> None:
    """Refuse a signal's payload before anything is kept: values an event could not carry
    (TypeError: too deep, a container holding itself, a type the codec lacks, a key that is
    no str) and a payload larger than workers take a message (EventTooLargeError)."""
    size = len(json.dumps(encode(dict(payload), "payload")))
    limit = runtime.current().settings.max_message_size
    if size > limit:
        raise EventTooLargeError(
            f"signal {name!r}: its payload is {size} bytes as JSON, over the limit of {limit} bytes "
            "(max_message_size, as for an event's message); nothing was sent"
        )


def _matches(match: Mapping[str, Any] | None, data: Mapping[str, Any]) -> bool:
    return not match or all(key in data and data[key] == value for key, value in match.items())


def merge(
    spec: WorkflowSpec, context: Mapping[str, Any], payload: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The context with the payload's keys that are Context fields; and what was ignored:
    ``{"keys": [...]}`` for keys that are not, ``{"error": ...}`` when the values do not validate."""
    fields = spec.context_class.model_fields
    kept = {key: value for key, value in payload.items() if key in fields}
    ignored: dict[str, Any] = {}
    unknown = sorted(key for key in payload if key not in fields)
    if unknown:
        ignored["keys"] = unknown
    if not kept:
        return dict(context), ignored
    try:
        merged = spec.context_class.model_validate({**context, **kept}).model_dump(mode="json")
    except pydantic.ValidationError as exc:
        ignored["error"] = str(exc)
        return dict(context), ignored
    return merged, ignored


async def wake(run: Run, payload: Mapping[str, Any], by: str) -> bool:
    """Move a waiting run on to its wait's ``then`` step with ``payload`` merged into its
    Context; False if something else (its timeout, a cancel, another signal) came first."""
    waiting = run.waiting_for or {}
    if waiting.get("kind") not in ("signal", "event"):  # a run waiting for its start: no signal or event starts it
        return False
    spec = spec_of(run.workflow)
    context, ignored = merge(spec, run.context, payload)
    target = waiting.get("then") or run.step
    woken = await runs.transition(
        run,
        (WAITING,),
        {
            "status": RUNNING,
            "step": target,
            "context": context,
            "attempts": 0,
            "waiting_for": None,
            "wake_at": None,
            "step_started_at": time.time(),  # the window in which a signal counts for a wait the step returns
        },
        runs.line("woken", by=by, step=target, ignored=ignored or None),
        new_visit=True,
    )
    if woken is None:
        await runs.note(run.id, runs.line("not woken: the run had moved on", by=by))
        return False
    await schedule_run(woken)  # first: the MongoDB outbox keeps it while Redis is down
    if run.wake_at is not None:  # its timeout: left in the schedule, it is dropped as stale when it comes
        try:
            await withdraw_wake(run)
        except redis.RedisError as exc:
            log.warning("run %s woken; its timeout was not withdrawn (%s): it will be dropped as stale", run.id, exc)
    return True


async def deliver(kind: str, name: str, payload: Mapping[str, Any], run_id: str | None, key: str) -> int:
    """Record an arrival, then wake the runs waiting for it; how many woke."""
    await record_arrival(kind, name, payload, run_id, key)
    woken = 0
    for run in await runs.waiting_for(kind, name, run_id):
        if _matches((run.waiting_for or {}).get("match"), payload) and await wake(run, payload, f"{kind} {name}"):
            woken += 1
    return woken


# --- the engine -----------------------------------------------------------------------


class Engine:
    """Start, signal, inspect, cancel and resume workflow runs (``earnevents.workflows.engine``)."""

    async def start(self, name: str, /, **kwargs: Any) -> str:
        """Start the workflow ``name`` with ``create_context(**kwargs)``; returns the run id."""
        return await self._start(spec_of(name), kwargs)

    async def _start(
        self,
        spec: WorkflowSpec,
        kwargs: Mapping[str, Any],
        *,
        run_id: str | None = None,
        entity: Mapping[str, str] | None = None,
        wake_at: float | None = None,
        trigger: Mapping[str, Any] | None = None,
    ) -> str:
        """Insert and schedule a run; with a ``run_id`` that exists already (an event
        delivered twice) nothing new starts: that run's message is sent again if it is
        still at its first version (the first try may have died between the two)."""
        context = spec.cls.create_context(**kwargs)  # type: ignore[attr-defined]
        if inspect.isawaitable(context):  # an async create_context (it loads the event's document)
            context = await context
        if not isinstance(context, spec.context_class):
            raise TypeError(
                f"{spec.cls.__name__}.create_context must return a {spec.context_class.__name__}, "
                f"got {type(context).__name__}"
            )
        env = runtime.current()
        run_id = run_id or runs.new_run_id()
        waiting_for = None
        if wake_at is not None:  # an @event_workflow's run for a later start: waiting for it
            trigger_of = spec.trigger
            waiting_for = runs.start_wait(
                trigger_of.event_name if trigger_of is not None else spec.name,
                spec.start,
                trigger_of.offset_minutes if trigger_of is not None else 0,
            )
        doc: dict[str, Any] = {
            "_id": run_id,
            "workflow": spec.name,
            "status": RUNNING if wake_at is None else WAITING,
            "step": spec.start,
            "visit": 0,
            "context": context.model_dump(mode="json"),
            "attempts": 0,
            "waiting_for": waiting_for,
            "wake_at": wake_at,
            "step_started_at": time.time() if wake_at is None else None,
            "entity": dict(entity) if entity else None,
            "queue": env.settings.queue_name,
        }
        if trigger is not None:
            doc["trigger"] = dict(trigger)
        try:
            await runs.insert(doc, runs.line("started", step=spec.start, wake_at=wake_at))
        except mongoerrors.named("DuplicateKeyError"):
            existing = await runs.get(run_id)
            if existing is not None and existing.version == 0 and existing.status in ACTIVE:
                await schedule_run(existing)
            return run_id
        run = await runs.get(run_id)
        assert run is not None
        await schedule_run(run)
        return run_id

    async def signal(self, name: str, payload: Mapping[str, Any] | None = None, run_id: str | None = None) -> int:
        """Send the signal ``name``: wakes every run waiting on ``wait(name)`` (only run
        ``run_id`` with it), its payload merged into their Context; kept a day for runs whose
        step is running and will wait for it. Returns how many woke now.

        ``"event:<event name>"`` (seed 003's bridge signal) also wakes the runs waiting on
        ``wait_for_event("<event name>")`` whose ``match`` the payload has, as that event would.
        """
        names.check_event_name(name, "signal name")
        if payload is not None and not isinstance(payload, Mapping):
            raise TypeError(f"a signal's payload is a dict, got {type(payload).__name__}")
        if run_id is not None and not isinstance(run_id, str):
            raise TypeError(f"run_id must be a str, got {type(run_id).__name__}")
        payload = dict(payload or {})
        check_payload(name, payload)
        woken = await deliver("signal", name, payload, run_id, uuid.uuid4().hex)
        if name.startswith(EVENT_SIGNAL) and len(name) > len(EVENT_SIGNAL):  # the seed's bridge signal, sent by hand
            woken += await deliver("event", name[len(EVENT_SIGNAL) :], payload, run_id, uuid.uuid4().hex)
        return woken

    async def get_run(self, run_id: str) -> Run:
        run = await runs.get(run_id)
        if run is None:
            raise RunNotFoundError(f"no workflow run {run_id!r}")
        return run

    async def find_runs(
        self,
        workflow: str | None = None,
        status: str | None = None,
        entity: Mapping[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Run]:
        """Runs, newest first (``entity``: ``{"model": ..., "id": ...}``)."""
        if status is not None and status not in runs.STATUSES:
            raise ValueError(f"status must be one of {runs.STATUSES}, got {status!r}")
        return await runs.find(workflow, status, entity, limit, offset)

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run that has not ended; False if it had (or ended meanwhile)."""
        while True:
            run = await self.get_run(run_id)
            if run.status not in ACTIVE:
                return False
            done = await runs.transition(
                run, ACTIVE, {"status": CANCELLED, "wake_at": None, "waiting_for": None}, runs.line("cancelled")
            )
            if done is not None:
                try:  # left in the schedule, its wake-up is dropped as stale when it comes
                    await withdraw_wake(run)
                except redis.RedisError as exc:
                    log.warning("run %s cancelled; its wake-up was not withdrawn (%s): it will be dropped", run_id, exc)
                return True

    async def resume(self, run_id: str, at_step: str | None = None) -> None:
        """Run a failed or cancelled run again from its step (or ``at_step``)."""
        run = await self.get_run(run_id)
        if run.status not in (FAILED, CANCELLED):
            raise WorkflowError(f"run {run_id} is {run.status}; only failed or cancelled runs resume")
        spec = spec_of(run.workflow)
        target = at_step or run.step
        if target not in spec.steps:
            raise WorkflowError(
                f"workflow {run.workflow!r} has no step {target!r} (steps: {', '.join(sorted(spec.steps))})"
            )
        resumed = await runs.transition(
            run,
            (FAILED, CANCELLED),
            {
                "status": RUNNING,
                "step": target,
                "attempts": 0,
                "error": None,
                "traceback": None,
                "waiting_for": None,
                "wake_at": None,
                "step_started_at": time.time(),  # the window in which a signal counts for a wait the step returns
            },
            runs.line("resumed", step=target),
            new_visit=True,
        )
        if resumed is None:
            raise WorkflowError(f"run {run_id} changed meanwhile; look at it again")
        await schedule_run(resumed)


engine = Engine()
"""``from earnevents.workflows import engine``."""
