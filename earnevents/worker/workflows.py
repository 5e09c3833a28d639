"""The worker's side of workflows: moving runs on, one message at a time.

:func:`advance` is the handler every run message names (``keys.WORKFLOW_HANDLER``).
The message names the run and the version it was sent for; a message for an older
version is stale: the run moved on (the current state's message is sent again, in
case a worker died between saving a step's outcome and sending it: the same ids
deliver once; and a waiting run takes a signal or event sent while its step ran, in
case that worker died before it looked). For the current version it:

- wakes a sleeping run (or a step's retry) at its time;
- starts a run waiting for its start (an ``@event_workflow``'s offset) at its time;
- times out a waiting run: on to ``on_timeout``, or failed;
- runs the current step of a running run, saves its outcome and Context with one
  compare-and-set on the run's version, then sends the next message.

A step runs at least once: a worker killed mid-step leaves the message unacknowledged
and the step runs again from the Context saved before it (``current_step_key()`` is
the same). Its outcome is saved once: the compare-and-set lets one try win.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import redis

from .. import keys, lazy, runtime
from ..context import current_job
from ..errors import HandlerTimeoutError
from ..event import Event, encode
from ..handlers import dotted_name, registry
from ..logtext import get_logger
from ..retry import RetryPolicy
from ..workflows import runs
from ..workflows.commands import Command, Complete, Fail, Goto, Sleep, Wait
from ..workflows.context import StepScope, enter, leave
from ..workflows.definitions import StepSpec, WorkflowSpec
from ..workflows.engine import arrived_since, schedule_run, spec_of, wake, withdraw_wake
from ..workflows.runs import FAILED, RUNNING, SLEEPING, WAITING, Run

if TYPE_CHECKING:
    import pydantic
else:
    pydantic = lazy.module("pydantic")

log = get_logger(__name__)

POLICY = RetryPolicy(max_retries=10, interval_start=1.0, interval_step=2.0, interval_max=30.0)
"""Moving a run on fails only when MongoDB or Redis does (or the workflow is not imported):
tried again for about four minutes before it is recorded as a failed job (``retry_job`` sends it again)."""

ADVANCE_TIMEOUT = 10 * 365.25 * 86400.0
"""The handler's own timeout, so that the worker's (``EARNEVENTS_HANDLER_TIMEOUT``) does not
cancel :func:`advance` mid-way: it bounds each try of a step instead (:func:`_within`), which
then fails as the step's failure (its Retry, then ``failed``) with its Context saved."""

RETRY_MARK = {"kind": "retry"}
"""``waiting_for`` of a run sleeping until its step's next try (a wake-up that is no new visit)."""


async def advance(event: Event) -> None:
    """Move the run the message names on, if the message is for its current version."""
    run_id, version = event.data.get("run"), event.data.get("version")
    if not isinstance(run_id, str) or isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"event {event.id} is no workflow message: {event.data!r}")
    run = await runs.get(run_id)
    if run is None:
        log.warning("workflow run %s does not exist (deleted?); message %s dropped", run_id, event.id)
        return
    if run.version != version:
        if run.status in runs.ACTIVE:
            await schedule_run(run)
        if run.status == WAITING and not runs.waits_to_start(run):  # its worker may have died before it looked
            await _take_early_arrival(run)
        return
    if run.status == SLEEPING:
        await _wake_up(run)
    elif runs.waits_to_start(run):
        await _start_due(run)
    elif run.status == WAITING:
        await _time_out(run)
    elif run.status == RUNNING:
        await _run_step(spec_of(run.workflow), run)


async def _wake_up(run: Run) -> None:
    retry = run.waiting_for == RETRY_MARK
    changes: dict[str, Any] = {"status": RUNNING, "wake_at": None, "waiting_for": None}
    if not retry:  # a retry is the same step visit: signals sent since its first try still count for its wait
        changes["step_started_at"] = time.time()
    woken = await runs.transition(
        run,
        (SLEEPING,),
        changes,
        runs.line("retrying" if retry else "woke", step=run.step, attempt=run.attempts + 1 if retry else None),
        new_visit=not retry,
    )
    if woken is not None:
        await schedule_run(woken)


async def _start_due(run: Run) -> None:
    """Its start time came: the run starts its start step (``then``): no timeout, nothing failed."""
    target = (run.waiting_for or {}).get("then") or run.step
    await _leave_wait(
        run,
        target,
        runs.line("woke", step=target, by="its start time"),
        runs.line("start lost: the run had changed (cancelled?)", step=target),
    )


async def _leave_wait(run: Run, target: str, entry: dict[str, Any], lost: dict[str, Any]) -> None:
    """Move a waiting run on to step ``target`` (a new visit), unless something else moved it
    first: then only the ``lost`` history line."""
    moved = await runs.transition(
        run,
        (WAITING,),
        {
            "status": RUNNING,
            "step": target,
            "waiting_for": None,
            "wake_at": None,
            "attempts": 0,
            "step_started_at": time.time(),
        },
        entry,
        new_visit=True,
    )
    if moved is None:
        await runs.note(run.id, lost)
        return
    await schedule_run(moved)


async def _time_out(run: Run) -> None:
    waiting = run.waiting_for or {}
    what = f"{waiting.get('kind')} {waiting.get('name')}"
    target = waiting.get("on_timeout")
    if target is None:
        changes: dict[str, Any] = {"status": FAILED, "error": f"timed out waiting for {what}", "wake_at": None}
        if await runs.transition(run, (WAITING,), changes, runs.line("timed out", waiting_for=what)) is None:
            await runs.note(run.id, runs.line("timeout lost: the run had moved on", waiting_for=what))
        return
    await _leave_wait(
        run,
        target,
        runs.line("timed out", waiting_for=what, step=target),
        runs.line("timeout lost: the run had moved on", waiting_for=what),
    )


async def _run_step(spec: WorkflowSpec, run: Run) -> None:
    step = spec.steps.get(run.step)
    if step is None:
        error = (
            f"workflow {spec.name!r} has no step {run.step!r} (any more?); steps: {', '.join(sorted(spec.steps))}. "
            "Resume the run at another step: engine.resume(run_id, at_step=...)"
        )
        await runs.transition(run, (RUNNING,), {"status": FAILED, "error": error}, runs.line("failed", error=error))
        return
    if run.step_started_at is None:  # a run stored without it: signals from now on count for its wait
        started = time.time()
        await runs.collection().update_one(
            {"_id": run.id, "version": run.version, "step_started_at": None}, {"$set": {"step_started_at": started}}
        )
        run = runs.Run(**{**run.__dict__, "step_started_at": started})
    try:
        context = spec.context_class.model_validate(run.context)
    except pydantic.ValidationError as exc:  # a deploy changed the Context: no retry would help
        error = (
            f"the run's stored Context no longer validates as {spec.cls.__name__}.Context, so step {step.name} "
            f"cannot run; fix the Context (class or stored values), then engine.resume(run_id): {exc}"
        )
        await runs.transition(run, (RUNNING,), {"status": FAILED, "error": error}, runs.line("failed", error=error))
        return
    if await _died_before(run, step):
        return
    timeout = runtime.current().settings.handler_timeout
    token = enter(StepScope(run.id, spec.name, step.name, run.visit, context))
    try:
        result = await _within(_call(step, spec.cls()), timeout, step.name)
        saved = context.model_dump(mode="json")
        runs.check_context_size(saved, step.name)
    except (Exception, SystemExit) as exc:  # sys.exit() in a step is its failure: steps run on the loop's thread
        saved = _dump_or_keep(context, run.context, step.name)
        await _step_failed(spec, run, step, saved, exc)
        return
    finally:
        leave(token)
    await _apply(spec, run, step, result, saved)


async def _died_before(run: Run, step: StepSpec) -> bool:
    """Whether the step's worker process died in each earlier delivery of this message as many
    times as a job may (``max_deliveries``, less this delivery): then the run fails saying so
    (True), rather than the step running until the message is recorded as a failed job with
    the run left ``running``. A redelivery after one death is noted in the history."""
    try:
        deliveries = current_job().deliveries
    except LookupError:  # not run by a worker (a test calling advance)
        return False
    if deliveries <= 1:
        return False
    died = deliveries - 1
    if deliveries < max(2, runtime.current().settings.max_deliveries):
        await runs.note(run.id, runs.line("step started again: its worker process died", step=step.name, died=died))
        return False
    error = (
        f"the worker process died while running step {step.name}, each of the {died} time(s) it started "
        "(killed, crashed, os._exit or out of memory); not run again: engine.resume(run_id) when fixed"
    )
    log.error("workflow run %s: %s", run.id, error)
    await runs.transition(run, (RUNNING,), {"status": FAILED, "error": error}, runs.line("failed", error=error))
    return True


async def _within(awaitable: Awaitable[Any], timeout: float | None, name: str) -> Any:
    """The step's result; past the worker's handler timeout its try fails with
    HandlerTimeoutError (retried by the step's Retry). A plain ``def`` step's thread cannot be
    interrupted: it is abandoned and may still finish; its result is ignored."""
    if timeout is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise HandlerTimeoutError(f"step {name} did not finish within {timeout:g}s") from None


async def _call(step: StepSpec, instance: Any) -> Any:
    if step.is_async:
        return await step.func(instance)
    result = await asyncio.to_thread(step.func, instance)  # a plain step blocks a thread, not the loop
    if inspect.isawaitable(result):
        result = await result
    return result


def _dump_or_keep(context: Any, before: dict[str, Any], step: str) -> dict[str, Any]:
    try:
        dumped: dict[str, Any] = context.model_dump(mode="json")
        runs.check_context_size(dumped, step)
        return dumped
    except Exception:  # the step left values the Context cannot save: keep what was saved before
        return before


async def _step_failed(
    spec: WorkflowSpec, run: Run, step: StepSpec, context: dict[str, Any], exc: BaseException
) -> None:
    policy = spec.retry_of(step.name)
    attempt = run.attempts + 1
    error = f"{type(exc).__name__}: {exc}"
    if policy is not None and attempt < policy.max_attempts:
        delay = policy.delay(attempt)
        retried = await runs.transition(
            run,
            (RUNNING,),
            {
                "status": SLEEPING,
                "context": context,
                "attempts": attempt,
                "wake_at": time.time() + delay,
                "waiting_for": RETRY_MARK,
                "error": error,
            },
            runs.line("step failed", step=step.name, attempt=attempt, error=error, retry_in=round(delay, 3)),
        )
        if retried is not None:
            await schedule_run(retried)
        return
    log.warning("workflow run %s failed in step %s after %d tries: %s", run.id, step.name, attempt, error)
    await runs.transition(
        run,
        (RUNNING,),
        {
            "status": FAILED,
            "context": context,
            "attempts": attempt,
            "error": error,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-10_000:],
        },
        runs.line("failed", step=step.name, attempt=attempt, error=error),
    )


async def _apply(spec: WorkflowSpec, run: Run, step: StepSpec, command: Any, context: dict[str, Any]) -> None:
    # step_started_at: when the next step becomes runnable; a signal sent from then on counts
    # for a wait it returns (set with the transition: no write of its own when the step starts)
    common = {"context": context, "attempts": 0, "error": None, "step_started_at": time.time()}
    if not isinstance(command, Command):
        reason = (
            f"step {step.name} returned {type(command).__name__}; a step returns goto(...), sleep(...), "
            "wait(...), wait_for_event(...), complete(...) or fail(...)"
        )
        await _end(run, FAILED, {**common, "error": reason}, runs.line("failed", step=step.name, error=reason))
        return
    for target in _targets(command, step.name):
        if target not in spec.steps:
            reason = f"step {step.name} goes to {target!r}, which is no step of workflow {spec.name!r}"
            await _end(run, FAILED, {**common, "error": reason}, runs.line("failed", step=step.name, error=reason))
            return
    if isinstance(command, Goto):
        changes = {**common, "status": RUNNING, "step": command.step}
        moved = await runs.transition(run, (RUNNING,), changes, runs.line("goto", step=command.step), new_visit=True)
    elif isinstance(command, Sleep):
        target = command.then or step.name
        changes = {**common, "status": SLEEPING, "step": target, "wake_at": time.time() + command.seconds}
        moved = await runs.transition(
            run, (RUNNING,), changes, runs.line("sleeping", seconds=command.seconds, then=target)
        )
    elif isinstance(command, Wait):
        await _wait(run, step, command, {**common, "step_started_at": run.step_started_at})
        return
    elif isinstance(command, Complete):
        result = encode(dict(command.result), "complete's result")
        await _end(run, "completed", {**common, "result": result}, runs.line("completed", step=step.name))
        return
    else:
        assert isinstance(command, Fail)
        await _end(
            run, FAILED, {**common, "error": command.reason}, runs.line("failed", step=step.name, error=command.reason)
        )
        return
    if moved is None:
        await runs.note(run.id, runs.line("step outcome discarded: the run had changed (cancelled?)", step=step.name))
        return
    await schedule_run(moved)


def _targets(command: Command, current: str) -> list[str]:
    if isinstance(command, Goto):
        return [command.step]
    if isinstance(command, Sleep):
        return [command.then or current]
    if isinstance(command, Wait):
        return [t for t in (command.then, command.on_timeout) if t is not None]
    return []


async def _wait(run: Run, step: StepSpec, command: Wait, common: dict[str, Any]) -> None:
    waiting_for = {
        "kind": command.kind,
        "name": command.name,
        "match": command.match,
        "then": command.then or step.name,
        "on_timeout": command.on_timeout,
    }
    wake_at = None if command.timeout is None else time.time() + command.timeout
    changes = {**common, "status": WAITING, "waiting_for": waiting_for, "wake_at": wake_at}
    waited = await runs.transition(
        run, (RUNNING,), changes, runs.line("waiting", kind=command.kind, name=command.name, timeout=command.timeout)
    )
    if waited is None:
        await runs.note(run.id, runs.line("step outcome discarded: the run had changed (cancelled?)", step=step.name))
        return
    await schedule_run(waited)  # its timeout, if any
    if waited.wake_at is not None:
        await _withdraw_if_moved_on(waited)
    await _take_early_arrival(waited)


async def _withdraw_if_moved_on(waited: Run) -> None:
    """Withdraw the timeout just scheduled if a signal or event woke the run before it was
    (the wake-up withdrew nothing then): a stale timeout would stay listed as pending until it
    came, and be dropped then. Whichever of the two looks last finds the timeout and withdraws it."""
    now = await runs.get(waited.id)
    if now is None or now.version != waited.version:
        try:
            await withdraw_wake(waited)
        except redis.RedisError as exc:  # harmless left there: dropped as stale when it comes
            log.warning("run %s: the timeout of a wait it left was not withdrawn (%s)", waited.id, exc)


async def _take_early_arrival(run: Run) -> None:
    """Wake a waiting run with a signal or event sent while its step ran (before the wait was
    recorded, so :func:`deliver` did not find it waiting)."""
    arrival = await arrived_since(run)
    if arrival is not None:
        await wake(run, arrival["payload"], arrival["by"] + " (arrived while the step ran)")


async def _end(run: Run, status: str, changes: dict[str, Any], entry: dict[str, Any]) -> None:
    ended = await runs.transition(run, (RUNNING,), {**changes, "status": status, "wake_at": None}, entry)
    if ended is None:
        await runs.note(run.id, runs.line("step outcome discarded: the run had changed (cancelled?)"))


if dotted_name(advance) != keys.WORKFLOW_HANDLER:  # pragma: no cover - caught by any test run
    raise RuntimeError(f"keys.WORKFLOW_HANDLER must be {dotted_name(advance)}")
registry.register_targeted(keys.WORKFLOW_HANDLER, advance, POLICY, timeout=ADVANCE_TIMEOUT)
