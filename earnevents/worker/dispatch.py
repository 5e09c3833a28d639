"""Handling one message: claim its jobs, run them, settle their outcomes.

Free of Celery: the Celery task in ``worker.app`` only decodes the message and
calls :func:`handle_message`. Every handler of an event runs; a failure never re-runs
or blocks another handler; a failed handler is retried on its own (through the delay
schedule) until its policy is spent, then recorded. How one handler try runs is
``worker.running``; the data it works on, ``worker.jobs``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

from .. import message
from ..bus import EventBus
from ..errors import HandlerNotFoundError, ReceiverSignatureError, WorkerLostError
from ..failures import FailedJob, FailureStore
from ..failures.record import describe
from ..handlers import Handler, HandlerRegistry
from ..logtext import get_logger
from ..retry import RetryPolicy
from . import eventlog as eventlog_hooks
from . import metrics as metrics_hooks
from . import stats as stats_hooks
from . import tracing as tracing_hooks
from .jobs import COMPLETED, FRESH, SETTLED, Bookkeeper, Job, Loop, Outcome
from .quarantine import Gate
from .running import record_here, records_here, run_async, run_sync

log = get_logger(__name__)


def select_handlers(registry: HandlerRegistry, job: Job) -> list[Handler]:
    """The handlers this message runs (HandlerNotFoundError for an unknown retry target).

    An event runs each handler whose name or pattern matches its name and whose
    sender filter (if any) is its sender: the others get no job at all (no claim, no
    completion, no failure). A retry runs the handler it names.
    """
    if job.handler is not None:
        return [registry.get(job.handler)]
    return registry.resolve(job.event.name, job.event.sender)


def choose_policy(handler: Handler | None, job: Job, worker_policy: RetryPolicy | None) -> RetryPolicy:
    """The handler's own policy, else the publisher's, else the worker's, else the default."""
    if handler is not None and handler.retry_policy is not None:
        return handler.retry_policy
    return job.retry_policy or worker_policy or RetryPolicy()


def retry_delay(policy: RetryPolicy, attempt: int) -> float | None:
    """Seconds until the next try after try number ``attempt`` (0-based) failed; None: give up."""
    next_retry = attempt + 1
    if next_retry > policy.max_retries:
        return None
    return policy.delay_for(next_retry)


_OBSERVERS = (eventlog_hooks, metrics_hooks, stats_hooks, tracing_hooks)
"""What is told about every job: the event log, the Prometheus metrics, the per-minute stats
and tracing. Each module has ``started``, ``finished`` and ``settled`` (cheap: they buffer,
count or return at once when off). One that raises is logged and skipped: watching a job
never fails it."""


def _tell(what: str, *args: Any) -> None:
    for observer in _OBSERVERS:
        try:
            getattr(observer, what)(*args)
        except Exception:
            log.exception("%s.%s failed; the job goes on", observer.__name__, what)


def _started(job: Job, handlers: list[str]) -> None:
    """``handlers`` start now for ``job``."""
    _tell("started", job, handlers)


def _finished(job: Job, outcomes: list[Outcome]) -> None:
    """The tries of ``outcomes`` ended."""
    _tell("finished", job, outcomes)


def _settled(job: Job, outcome: Outcome, retrying: bool) -> None:
    """A failed try was scheduled for a retry (``retrying``) or recorded as a failed job."""
    _tell("settled", job, outcome, retrying)


async def settle_failures(
    job: Job,
    outcomes: list[Outcome],
    registry: HandlerRegistry,
    bus: EventBus,
    failures: FailureStore,
    worker_policy: RetryPolicy | None,
) -> None:
    """Schedule a retry for, or record, every failed outcome. Raises if Redis/Mongo fail.

    Idempotent: retry messages and failure records get ids derived from
    (event, handler, attempt), so settling twice schedules and records once.
    """
    for outcome in outcomes:
        if outcome.error is None:
            continue
        try:
            handler: Handler | None = registry.get(outcome.handler)
        except HandlerNotFoundError:
            handler = None
        policy = choose_policy(handler, job, worker_policy)
        err = outcome.error
        # A job whose process died max-deliveries times is final: retrying would kill more;
        # so is a receiver that cannot take the event's data: it would fail the same way.
        final = handler is None or isinstance(err, (WorkerLostError, ReceiverSignatureError))
        delay = None if final else retry_delay(policy, job.attempt)
        if delay is None:
            log.error(
                "handler %s failed for %s %s after %d tries: %s; recorded as a failed job",
                outcome.handler,
                job.event.name,
                job.event.id,
                job.attempt + 1,
                describe(err),
                exc_info=(type(err), err, err.__traceback__),
            )
            record = FailedJob.from_exception(
                job.event,
                outcome.handler,
                err,
                job.attempt + 1,
                job.queue,
                job_id=message.derived_id("failed", job.event.id, outcome.handler, job.attempt + 1),
            )
            await failures.add(record)
            _settled(job, outcome, retrying=False)
            continue
        log.warning(
            "handler %s failed for %s %s (try %d): %s; retrying in %.3gs",
            outcome.handler,
            job.event.name,
            job.event.id,
            job.attempt + 1,
            describe(err),
            delay,
        )
        task_id = message.derived_id("retry", job.event.id, outcome.handler, job.attempt + 1)
        payload = message.build(
            job.event.to_wire(),
            queue=job.queue,
            task_id=task_id,
            handler=outcome.handler,
            attempt=job.attempt + 1,
            retry_policy=job.retry_policy.to_dict() if job.retry_policy is not None else None,
        )
        await bus.enqueue([(task_id, job.event.name, payload)], queue=job.queue, delay=delay)
        _settled(job, outcome, retrying=True)


def died(starts: int) -> WorkerLostError:
    """The failure recorded for a job whose worker process died each time it started."""
    return WorkerLostError(
        f"the worker process died while running this handler, each of the {starts} times it started"
        " (killed, crashed or out of memory); not run again"
    )


@dataclass(frozen=True)
class Claimed:
    """One event's jobs sorted by their claim: what runs, and what is settled unrun."""

    job: Job
    fresh: list[Handler]
    """Claimed now: they run together, as usual."""
    again: list[Handler]
    """Taken over from a delivery whose worker died: they run one at a time, fewest starts
    first, each start recorded before it runs, so a job that kills the process again is
    the only one that counts the delivery."""
    dead: list[Outcome]
    """Jobs whose worker died in ``max_deliveries`` starts: recorded as failed, not run."""


def _claimed(job: Job, handlers: list[Handler], states: Mapping[str, int], most: int) -> Claimed:
    fresh: list[Handler] = []
    again: list[Handler] = []
    dead: list[Outcome] = []
    done: list[str] = []
    held: list[str] = []
    settled: list[str] = []
    for h in handlers:
        n = states.get(h.name, COMPLETED)
        if n == COMPLETED:
            done.append(h.name)
        elif n == SETTLED:
            settled.append(h.name)
        elif n < 0:
            held.append(h.name)
        elif n > most:
            dead.append(Outcome(h.name, died(n - 1)))
        elif n == FRESH:
            fresh.append(h)
        else:
            again.append(h)
    if done:
        log.info("event %s: skipping %s, completed before", job.event.id, ", ".join(sorted(done)))
        eventlog_hooks.completed_before(job, done)
    if held:
        log.info("event %s: skipping %s, another copy of the message runs it", job.event.id, ", ".join(sorted(held)))
    if settled:
        log.info(
            "event %s: skipping %s, this message settled it as failed before (retry scheduled or failure recorded)",
            job.event.id,
            ", ".join(sorted(settled)),
        )
    if again:
        log.warning(
            "event %s: running %s again, one at a time: a worker died while running them",
            job.event.id,
            ", ".join(h.name for h in again),
        )
    again.sort(key=lambda h: states[h.name])
    job = replace(job, deliveries={h.name: states[h.name] for h in fresh + again})
    return Claimed(job, fresh, again, dead)


async def _claim(books: Bookkeeper, pairs: list[tuple[Job, list[Handler]]]) -> list[Claimed]:
    states = await books.claim([(job, [h.name for h in handlers]) for job, handlers in pairs])
    return [_claimed(job, handlers, s, books.max_deliveries) for (job, handlers), s in zip(pairs, states, strict=True)]


def _claim_here(books: Bookkeeper, loop: Loop, pairs: list[tuple[Job, list[Handler]]]) -> list[Claimed]:
    """:func:`_claim` from the calling thread: on the bookkeeper's blocking client where it has
    one (:class:`~.jobs.BlockingBookkeeper`, no hop to the loop); on the loop where it has none
    or it failed."""
    blocking = getattr(books, "claim_blocking", None)
    if blocking is not None:
        states = blocking([(job, [h.name for h in handlers]) for job, handlers in pairs])
        if states is not None:
            return [
                _claimed(job, handlers, s, books.max_deliveries)
                for (job, handlers), s in zip(pairs, states, strict=True)
            ]
    return loop.run(_claim(books, pairs))


async def _run_claimed(claimed: Claimed, books: Bookkeeper) -> list[Outcome]:
    """Run the claimed async handlers on the loop: fresh ones together, then the others one by one."""
    job = claimed.job
    _started(job, [h.name for h in claimed.fresh])
    outcomes = claimed.dead + await run_async(claimed.fresh, job, books)
    for h in claimed.again:
        await books.started(job, h.name, job.deliveries[h.name])
        _started(job, [h.name])
        outcomes += await run_async([h], job, books)
    _finished(job, outcomes)
    return outcomes


def _run_claimed_here(claimed: Claimed, loop: Loop, books: Bookkeeper) -> list[Outcome]:
    """:func:`_run_claimed` from the task thread, for any mix of sync handlers (run in this
    thread) and async ones (awaited on the loop: the only hop). Where ``books`` records from
    this thread (:class:`~.jobs.BlockingBookkeeper`), an async handler run on its own is
    recorded here too, on its blocking client, once its coroutine is done; beside others it
    is recorded on the loop as it returns (here it would wait for its siblings, and a worker
    dying meanwhile would run it again)."""
    job = claimed.job
    here = records_here(books)
    _started(job, [h.name for h in claimed.fresh])
    async_handlers = [h for h in claimed.fresh if h.is_async]
    alone = here and len(claimed.fresh) == 1
    pending = loop.submit(run_async(async_handlers, job, books, record=not alone)) if async_handlers else None
    try:
        outcomes = [run_sync(h, job, loop, books) for h in claimed.fresh if not h.is_async]
        if pending is not None:
            outcomes = _record_async_here(pending.result(), job, loop, books) + outcomes
    except BaseException:  # this thread was interrupted (a soft time limit, termination)
        if pending is not None:
            pending.cancel()  # the async handlers must not run on unseen
        raise
    outcomes = claimed.dead + outcomes
    for h in claimed.again:
        loop.run(books.started(job, h.name, job.deliveries[h.name]))
        _started(job, [h.name])
        if h.is_async:
            outcomes += _record_async_here(loop.run(run_async([h], job, books, record=not here)), job, loop, books)
        else:
            outcomes.append(run_sync(h, job, loop, books))
    _finished(job, outcomes)
    return outcomes


def _one_task_thread() -> bool:
    """Whether this is the process' only task thread (prefork and solo pools run tasks in the
    main thread). With ``-P threads`` many task threads share the loop, whose group commit
    then writes their completions together in fewer round trips: their all-async events
    stay on the loop."""
    return threading.current_thread() is threading.main_thread()


def _record_async_here(outcomes: list[Outcome], job: Job, loop: Loop, books: Bookkeeper) -> list[Outcome]:
    """Record the async handlers' successes that the loop left unrecorded, from this thread."""
    return [
        replace(o, recorded=record_here(books, loop, job, o.handler).recorded)
        if o.error is None and not o.recorded
        else o
        for o in outcomes
    ]


def _needs_settling(outcomes: list[Outcome]) -> bool:
    return any(o.error is not None or not o.recorded for o in outcomes)


def _gate(books: Bookkeeper, alone: bool) -> AbstractAsyncContextManager[None]:
    """The process' :class:`~.quarantine.Gate` where ``books`` has one, entered from the loop: a
    message back after its process died (its claims taken over, ``alone``) runs alone."""
    gate: Gate | None = getattr(books, "gate", None)
    return gate.enter(alone) if gate is not None else nullcontext()


def _gate_here(books: Bookkeeper, alone: bool) -> AbstractContextManager[None]:
    """:func:`_gate` from a pool thread (a message with sync handlers)."""
    gate: Gate | None = getattr(books, "gate", None)
    return gate.enter_here(alone) if gate is not None else nullcontext()


async def _handle_async(job: Job, handlers: list[Handler], books: Bookkeeper) -> list[Outcome]:
    """The whole job on the loop, for events whose handlers are all async: one thread hop."""
    [claimed] = await _claim(books, [(job, handlers)])
    async with _gate(books, bool(claimed.again)):
        outcomes = await _run_claimed(claimed, books)
    if _needs_settling(outcomes):
        await books.settle(claimed.job, outcomes)
    return outcomes


class SettleFailed(Exception):
    """Settling some jobs of a packed message failed; ``errors`` holds why."""

    def __init__(self, errors: list[BaseException]) -> None:
        super().__init__(f"{len(errors)} job(s) could not be settled: {errors[0]!r}")
        self.errors = errors


async def _handle_async_many(pairs: list[tuple[Job, list[Handler]]], books: Bookkeeper) -> list[Outcome]:
    """All jobs of a packed message on the loop at once: one claim for all."""
    claimed = await _claim(books, pairs)

    async def one(c: Claimed) -> list[Outcome]:
        outcomes = await _run_claimed(c, books)
        if _needs_settling(outcomes):
            await books.settle(c.job, outcomes)
        return outcomes

    again = any(c.again for c in claimed)
    async with _gate(books, again):
        if again:
            # Back after its worker died: one event after the other, those cut short
            # fewest times first, so only the job that kills the process counts again.
            claimed.sort(key=lambda c: max((c.job.deliveries[h.name] for h in c.again), default=0))
            results: list[list[Outcome] | BaseException] = []
            for c in claimed:
                try:
                    results.append(await one(c))
                except Exception as exc:
                    results.append(exc)
        else:
            results = await asyncio.gather(*(one(c) for c in claimed), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:  # every other job has finished and is settled: a redelivery skips those
        raise SettleFailed(errors)
    return [o for r in results if not isinstance(r, BaseException) for o in r]


def _async_handlers(registry: HandlerRegistry, job: Job) -> list[Handler] | None:
    """The handlers the job runs if it has some and all are ``async def``; else None (a sync
    handler, no handler, a retry naming an unknown one: :func:`handle` runs it)."""
    try:
        handlers = select_handlers(registry, job)
    except HandlerNotFoundError:
        return None
    return handlers if handlers and all(h.is_async for h in handlers) else None


def all_async(jobs: list[Job], registry: HandlerRegistry) -> list[tuple[Job, list[Handler]]] | None:
    """Each job with the handlers it runs, if every job has some and all are ``async def``;
    else None (:func:`handle_message` runs the message)."""
    pairs: list[tuple[Job, list[Handler]]] = []
    for job in jobs:
        handlers = _async_handlers(registry, job)
        if handlers is None:
            return None
        pairs.append((job, handlers))
    return pairs


async def handle_all_async(pairs: list[tuple[Job, list[Handler]]], books: Bookkeeper) -> list[Outcome]:
    """A message whose events' handlers are all async (:func:`all_async`), wholly on the loop:
    what :func:`handle_message` does with it, from the loop itself (``worker.strategy``)."""
    if len(pairs) == 1:
        [(job, handlers)] = pairs
        return await _handle_async(job, handlers, books)
    return await _handle_async_many(pairs, books)


def handle_message(jobs: list[Job], registry: HandlerRegistry, loop: Loop, books: Bookkeeper) -> list[Outcome]:
    """Run every job of a message: one event (see :func:`handle`), or a packed message.

    The events of a packed message whose handlers are all ``async def`` run at once
    on ``loop``; the others one after the other, as :func:`handle` runs them.
    """
    if len(jobs) == 1:
        return handle(jobs[0], registry, loop, books)
    together: list[tuple[Job, list[Handler]]] = []
    apart: list[Job] = []
    for job in jobs:
        handlers = _async_handlers(registry, job)
        if handlers is None:
            apart.append(job)
        else:
            together.append((job, handlers))
    outcomes = loop.run(_handle_async_many(together, books)) if together else []
    for job in apart:
        outcomes += handle(job, registry, loop, books)
    return outcomes


def handle(job: Job, registry: HandlerRegistry, loop: Loop, books: Bookkeeper) -> list[Outcome]:
    """Run the job's handlers and settle the outcomes; returns the outcomes of those that ran.

    The handlers are claimed first (:meth:`Bookkeeper.claim`): those that completed
    for this event before, or that another copy of the message runs, are skipped;
    those whose worker died in each of ``max_deliveries`` starts are recorded as
    failed (:class:`WorkerLostError`) instead of run, and those taken over from a
    delivery that died run one at a time after the others (:class:`Claimed`). Async handlers
    run concurrently on ``loop`` while sync ones run here, in the calling (task)
    thread, as plain calls; then ``books.settle`` runs on ``loop`` when an outcome needs it.
    Where ``books`` can (:class:`~.jobs.BlockingBookkeeper`), the event is claimed and its
    successes recorded from this thread, on a blocking client: no hop at all for an event
    of sync handlers that succeed, and for an event of one async handler the only hop
    awaits its coroutine (measured cheaper than claiming and recording on the loop's async
    client). An event of several async handlers is handled on ``loop`` in one hop, each
    success recorded as it returns (not after its siblings); so is one of many task threads'
    (``-P threads``), where the group commit shares the round trips.
    """
    try:
        handlers = select_handlers(registry, job)
    except HandlerNotFoundError as exc:
        outcomes = [Outcome(job.handler or "?", exc)]
        loop.run(books.settle(job, outcomes))
        return outcomes
    if not handlers:
        log.info(
            "no handler subscribes to %r from sender %r; event %s acknowledged",
            job.event.name,
            job.event.sender,
            job.event.id,
        )
        eventlog_hooks.no_handlers(job)
        return []
    if all(h.is_async for h in handlers) and not (len(handlers) == 1 and _one_task_thread() and records_here(books)):
        return loop.run(_handle_async(job, handlers, books))
    [claimed] = _claim_here(books, loop, [(job, handlers)])
    with _gate_here(books, bool(claimed.again)):
        outcomes = _run_claimed_here(claimed, loop, books)
    if _needs_settling(outcomes):
        loop.run(books.settle(claimed.job, outcomes))
    return outcomes
