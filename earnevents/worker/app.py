"""The Celery app workers run: ``celery -A earnevents worker``.

Configured from the EARNEVENTS_* environment. Messages are acknowledged only
after their handlers finished or their failures were scheduled for retry or
recorded (``acks_late``); a worker killed mid-handler leaves the message
unacknowledged, and kombu puts it back on the queue once ``visibility_timeout``
has passed. Live workers keep their messages fresh (``keepalive``), so only a
dead worker's messages are redelivered, however long a handler runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

import billiard.common
import redis.exceptions as rex
from celery import Celery, signals
from celery.exceptions import Reject
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from .. import keys, lazy, message, mongoerrors, redisurl, runtime
from ..config import Settings
from ..connections import redis_timeout
from ..errors import WorkerLostError
from ..failures import FailedJob
from ..failures.record import describe
from ..handlers import Handler, registry
from ..keys import TASK_NAME
from ..logtext import get_logger
from . import appsettings, metrics, startup, stats, strategy
from . import eventlog as eventlog_writer
from .completions import Completions
from .dispatch import SettleFailed, all_async, handle_all_async, handle_message, settle_failures
from .jobs import Job, Outcome
from .keepalive import KeepAliveStep
from .loop import LoopThread, process_loop, stop_process_loop
from .quarantine import Gate
from .relay import RelayStep
from .running import on_termination
from .scheduler import SchedulerStep

if TYPE_CHECKING:
    import tenacity

    from ..event import Event
else:
    tenacity = lazy.module("tenacity")  # retry machinery: only once bookkeeping failed

log = get_logger(__name__)

T = TypeVar("T")

SETTLE_TIMEOUT = 30.0
"""Seconds a worker keeps trying to schedule retries / record failures before requeueing."""

FINAL_TRIES = 3
"""Tries of bookkeeping that fails with a non-transient error before the worker gives up (see settle)."""

TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")
"""Celery's loggers of the per-task "received" and "succeeded" lines (see EARNEVENTS_TASK_LOG)."""

MINIMAL_TEXT = 10_000
"""Characters of error and traceback a minimal failed-job record keeps."""

_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError, TimeoutError (asyncio's too) and socket errors
    rex.ConnectionError,  # BusyLoadingError, AuthenticationError
    rex.TimeoutError,
    rex.ReadOnlyError,  # a replica promoted during a failover
    rex.MasterDownError,
    rex.TryAgainError,
    rex.OutOfMemoryError,  # maxmemory reached: may clear once consumers catch up
    rex.ExecAbortError,  # a MULTI aborted by one of the above
    rex.NoPermissionError,  # an ACL an operator fixes
)
_TRANSIENT_MONGO = (
    "ConnectionFailure",  # AutoReconnect, NetworkTimeout, NotPrimaryError, server selection
    "ExecutionTimeout",
    "WTimeoutError",
    "WaitQueueTimeoutError",
)
_MONGO_AUTH_CODES = {13, 18}  # Unauthorized, AuthenticationFailed: configuration an operator fixes


def is_transient(exc: BaseException) -> bool:
    """Whether bookkeeping that failed with ``exc`` may succeed if tried again later.

    Transient: Redis/MongoDB unreachable, failing over, out of memory or refusing
    credentials. Anything else (BSON refusing a document, a DocumentTooLarge, a
    Redis ResponseError or DataError, a bug) fails the same way every time.
    """
    if isinstance(exc, _TRANSIENT):
        return True
    mongo_errors = mongoerrors.loaded()  # None: PyMongo not imported, so exc is none of its errors
    if mongo_errors is None:
        return False
    if isinstance(exc, tuple(getattr(mongo_errors, name) for name in _TRANSIENT_MONGO)):
        return True
    if isinstance(exc, mongo_errors.OperationFailure) and not isinstance(exc, mongo_errors.WriteError):
        return bool(exc.code in _MONGO_AUTH_CODES or exc.has_error_label("RetryableWriteError"))
    return False


def _pool_process_terminating() -> bool:
    """Whether billiard's SIGTERM handler fired in this process (it raises SystemExit to exit)."""
    fired = getattr(billiard.common, "terminate_handler_fired", None)
    if fired is not None:
        return bool(fired())
    return bool(getattr(billiard.common, "_should_have_exited", [False])[0])  # older billiard


on_termination(_pool_process_terminating)


def create_app(settings: Settings | None = None) -> Celery:
    """Build the Celery app for ``settings`` (default: from the environment)."""
    settings = settings or Settings.resolve()
    visibility = settings.visibility_timeout
    # redis://, rediss://, unix:// and sentinel:// URLs in kombu's spelling (earnevents.redisurl).
    broker = redisurl.broker(settings.redis_uri)
    app = Celery("earnevents")
    app.conf.update(
        broker_url=broker.url,
        # kombu's redis transport with reliable fetch; a malformed item is dropped, not fatal.
        broker_transport=broker.transport,
        broker_use_ssl=broker.use_ssl or False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "visibility_timeout": visibility,
            # kombu sweeps for abandoned messages every interval * throttle seconds
            # (100 s by default); tie the sweep to the visibility timeout instead.
            "unacked_restore_interval": max(1, min(10, int(visibility // 4) or 1)),
            "unacked_restore_throttle": 1,
            # One list per queue (earnevents does not use priorities): needed for reliable fetch.
            "priority_steps": [0],
            # A worker that died while restoring must not block restores for kombu's default 5 min.
            "unacked_mutex_expire": max(10, int(visibility)),
            # earnevents' own unacknowledged records: kombu's default names would be shared
            # with any other Celery app on this database, each restoring the other's
            # messages after its own visibility timeout (twice-run tasks).
            "unacked_key": keys.UNACKED,
            "unacked_index_key": keys.UNACKED_INDEX,
            "unacked_mutex_key": keys.UNACKED_MUTEX,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "health_check_interval": 10,
            # Queue items are checked before kombu parses them (worker.items); refused ones
            # go to the queue's dead-letter list.
            "max_message_size": settings.max_message_size,
            "dead_letter_max": settings.dead_letter_max,
            **broker.transport_options,
        },
        task_default_queue=settings.queue_name,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A hard time limit (--time-limit) kills the pool process: hand the message back
        # (Celery acknowledges it by default, and the event would vanish). The older,
        # combined setting makes Celery versions without task_acks_on_timeout leave it
        # unacknowledged, so it is redelivered after the visibility timeout. (Failures
        # are no concern of these: only Reject, or a dying process' SystemExit, leaves the task.)
        task_acks_on_timeout=False,
        task_acks_on_failure_or_timeout=False,
        # Keep handlers running through a broker reconnect: acknowledging on Redis works on
        # any connection (the unacked state lives in Redis keys), so nothing must be killed.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        accept_content=["json"],
        task_serializer="json",
        include=list(settings.handler_modules),
        # No URIs (passwords) beyond broker_url, which Celery masks when it shows the
        # configuration: the bootsteps take the settings from the app (appsettings).
    )
    appsettings.attach(app, settings)

    # Handler modules, autodiscovery and the strict-mode check, before the worker consumes;
    # Celery raises what a receiver of this signal raised, so a failure stops the worker.
    def prepare_worker(**_: Any) -> None:
        startup.prepare(settings)

    signals.import_modules.connect(prepare_worker, sender=app, weak=False)
    signals.worker_before_create_process.connect(
        startup.freeze_before_first_fork, weak=False, dispatch_uid="earnevents.freeze_before_first_fork"
    )

    # Celery's INFO lines per task ("received" in the consumer, "succeeded in" in the pool
    # process) are two log records per event, ~10% of a worker's CPU per event with a trivial
    # handler: off unless EARNEVENTS_TASK_LOG. Celery reads these levels when it builds the
    # task strategy and tracer, after its logging is set up; errors still pass.
    def task_log_level(**_: Any) -> None:
        if not settings.task_log:
            for name in TASK_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)

    signals.after_setup_logger.connect(task_log_level, weak=False)
    app.steps["worker"].add(SchedulerStep)
    app.steps["worker"].add(KeepAliveStep)
    app.steps["worker"].add(RelayStep)
    app.steps["worker"].add(metrics.MetricsStep)
    # Workflows and model automations keep their state in MongoDB: a worker without one
    # does not import them (their handlers, the workflow event bridge, their threads).
    if settings.mongo_uri:
        from . import mongofeatures

        for step in mongofeatures.STEPS:
            app.steps["worker"].add(step)

    def queue_of(delivery_info: Any) -> str:
        return (delivery_info or {}).get("routing_key") or settings.queue_name

    def decode(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        queue: str,
        properties: Any,
        task_id: str,
        events: tuple[Event, ...] | None = None,
    ) -> list[Job]:
        """The message's jobs (TypeError/ValueError/RecursionError: malformed, dropped).
        ``events``: ``args`` as the item check decoded them (``CheckedMessage.events``)."""
        # The copy id owns the message's job claims: kept when the message is given back
        # (a worker lost, a visibility timeout), unlike the delivery tag. A message built
        # elsewhere has none: its task id then stands in, so a redelivery always takes over
        # its own claims (at worst two copies with one task id both run; nothing is skipped).
        copy_id = (properties or {}).get(message.COPY_ID)
        copy_id = copy_id if isinstance(copy_id, str) and copy_id else f"task:{task_id}"
        if not args:
            raise ValueError("no event")
        if len(args) > 1 and kwargs.get("handler") is not None:
            raise ValueError("a retry message carries one event")
        known = events if events is not None and len(events) == len(args) else (None,) * len(args)
        return [
            Job.from_message(
                event, kwargs, queue, registry, settings.handler_timeout, copy_id, settings.retry_caps, decoded
            )
            for event, decoded in zip(args, known, strict=True)
        ]

    @app.task(name=TASK_NAME, bind=True, Strategy="earnevents.worker.strategy:strategy")
    def dispatch(self: Any, *args: Any, **kwargs: Any) -> None:
        request = self.request
        queue = queue_of(request.delivery_info)
        try:
            jobs = decode(args, kwargs, queue, request.properties, request.id)
        except (TypeError, ValueError, RecursionError) as exc:  # it would fail the same way every time
            log.error("dropping malformed message %s on %s: %s", request.id, queue, describe(exc))
            return
        except Exception as exc:
            log.error("requeueing %s: could not decode it", request.id, exc_info=True)
            raise Reject(describe(exc), requeue=True) from exc
        try:
            worker = WorkerRuntime.get()
        except Exception as exc:
            log.error("requeueing %s: could not set up the worker's runtime: %r", request.id, exc)
            raise Reject(str(exc), requeue=True) from exc
        try:
            handle_message(jobs, registry, worker.loop, worker)
            eventlog_writer.flush()  # the log's changes of this message, written before its ack
        except Exception as exc:
            # Celery would acknowledge a task that raised, so hand the message back instead.
            # (SystemExit and KeyboardInterrupt end the pool process: Celery requeues those.)
            _log_requeue(request.id, exc)
            raise Reject(describe(exc), requeue=True) from exc

    def take(req: Any) -> Callable[[], Future[Any]] | None:
        """Under ``-P threads``, a message whose handlers are all async runs on the loop
        without a pool thread (``worker.strategy``); None: the task runs it."""
        try:
            message = req.message
            queue = queue_of(req.delivery_info)
            jobs = decode(req.args, req.kwargs, queue, message.properties, req.id, getattr(message, "events", None))
            pairs = all_async(jobs, registry)
            if pairs is None:
                return None
            worker = WorkerRuntime.get()
        except Exception:  # the task drops, or hands back, and logs it
            return None
        return lambda: worker.loop.submit(_run_on_loop(req.id, pairs, worker))

    strategy.take_with(TASK_NAME, take)
    return app


def _log_requeue(task_id: str, exc: BaseException) -> None:
    """Why a message goes back to its queue after a failure of our own (handler errors never get here)."""
    if isinstance(exc, (SettleError, SettleFailed, RedisError, mongoerrors.base(), OSError)):
        # Our own bookkeeping failed: acknowledging would lose the event.
        log.warning("requeueing %s: %r", task_id, exc)
    else:  # anything else (Celery's SoftTimeLimitExceeded while async handlers ran, a bug)
        log.error("requeueing %s after an unexpected error", task_id, exc_info=(type(exc), exc, exc.__traceback__))


async def _run_on_loop(task_id: str, pairs: list[tuple[Job, list[Handler]]], worker: WorkerRuntime) -> None:
    """The task's work for an all-async message, on the loop (``worker.strategy``): raises
    (logged) where the task would hand the message back."""
    try:
        await handle_all_async(pairs, worker)
        if eventlog_writer.active():  # the log's changes of this message, written before its ack
            await asyncio.to_thread(eventlog_writer.flush)
    except Exception as exc:
        _log_requeue(task_id, exc)
        raise


class SettleError(Exception):
    """Raised when retries could not be scheduled nor failures recorded in time."""


class WorkerRuntime:
    """Per-process state: the loop thread and the environment init() built on it."""

    _lock = threading.Lock()
    _current: tuple[int, WorkerRuntime] | None = None

    def __init__(self, loop: LoopThread, env: runtime.Environment) -> None:
        self.loop = loop
        self.env = env
        # The bookkeeping of plain `def` handlers, from their task thread (see claim_blocking):
        # a client like the loop's (connections.redis), blocking.
        timeout = redis_timeout(env.settings)
        self.blocking_redis = redisurl.sync_client(
            env.settings.redis_uri,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # callers retry (claim, settle): see connections.redis
            health_check_interval=30,
        )
        self.completions = Completions(env.connections.redis, env.settings.dedup_window, self.blocking_redis)
        self.max_deliveries = env.settings.max_deliveries
        self.gate = Gate()  # messages back after this process died run alone in it (loop and pool threads)
        eventlog_writer.configure(env.settings)  # its thread starts here: in this process, after fork
        metrics.configure(env.settings)
        self.stats: Future[None] | None = None  # the task writing this process' per-minute counts

    @classmethod
    def get(cls) -> WorkerRuntime:
        with cls._lock:
            if cls._current is None or cls._current[0] != os.getpid():
                loop = process_loop()
                env = loop.run(runtime.init(handler_modules=(), autodiscover=()))  # done at start
                current = cls(loop, env)
                current.stats = loop.submit(stats.flush_every(lambda: env.redis))
                cls._current = (os.getpid(), current)
            return cls._current[1]

    @classmethod
    def shutdown(cls) -> None:
        with cls._lock:
            entry, cls._current = cls._current, None
        if entry is not None and entry[0] == os.getpid():
            eventlog_writer.stop()
            current = entry[1]
            if current.stats is not None:
                current.stats.cancel()
                try:
                    current.loop.run(stats.flush(lambda: current.env.redis), timeout=2)
                except Exception:  # best effort at exit: at most FLUSH_INTERVAL of counts
                    log.debug("writing the last handler stats failed", exc_info=True)
            try:
                entry[1].loop.run(runtime.close(), timeout=5)
            except Exception:  # best effort at exit
                log.debug("closing earnevents connections failed", exc_info=True)
            try:
                current.blocking_redis.close()
            except Exception:  # best effort at exit
                log.debug("closing the blocking Redis client failed", exc_info=True)
            stop_process_loop()

    @staticmethod
    def _retrying(tried: int = 0) -> tenacity.AsyncRetrying:
        """Retries for SETTLE_TIMEOUT seconds, or until FINAL_TRIES tries in all (``tried`` of them
        made before) when the last one failed with a non-transient error."""
        out_of_time = tenacity.stop_after_delay(SETTLE_TIMEOUT)

        def stop(state: tenacity.RetryCallState) -> bool:
            if out_of_time(state):
                return True
            outcome = state.outcome
            if outcome is None or not outcome.failed:
                return False
            error = outcome.exception()
            return error is not None and not is_transient(error) and tried + state.attempt_number >= FINAL_TRIES

        return tenacity.AsyncRetrying(
            stop=stop,
            wait=tenacity.wait_exponential(multiplier=0.1, max=2),
            reraise=True,
        )

    async def claim(self, jobs: list[tuple[Job, list[str]]]) -> list[dict[str, int]]:
        tag = jobs[0][0].copy_id  # the jobs of one message share it
        pairs = [(job.event.id, handlers) for job, handlers in jobs]
        since = [job.event.timestamp.timestamp() for job, _ in jobs]
        return await self._claim_retrying(lambda: self.completions.claim(tag, pairs, since))

    def claim_blocking(self, jobs: list[tuple[Job, list[str]]]) -> list[dict[str, int]] | None:
        """:meth:`claim` in the calling thread, one try; None if Redis failed (then :meth:`claim`)."""
        tag = jobs[0][0].copy_id
        pairs = [(job.event.id, handlers) for job, handlers in jobs]
        since = [job.event.timestamp.timestamp() for job, _ in jobs]
        try:
            return self.completions.claim_blocking(tag, pairs, since)
        except (RedisError, OSError):
            log.debug("could not claim jobs from the task thread; claiming on the loop", exc_info=True)
            return None

    def completed_blocking(self, job: Job, handler: str) -> bool:
        """:meth:`completed` in the calling thread; False if Redis failed (then settle records it)."""
        try:
            self.completions.mark_blocking(job.event.id, [handler], job.copy_id)
        except (RedisError, OSError):
            log.debug("could not record %s as completed yet", handler, exc_info=True)
            return False
        return True

    async def started(self, job: Job, handler: str, starts: int) -> None:
        await self._claim_retrying(lambda: self.completions.started(job.event.id, handler, job.copy_id, starts))

    async def _claim_retrying(self, read: Callable[[], Awaitable[T]]) -> T:
        try:  # the usual case: one try, no retry machinery
            return await read()
        except Exception:
            log.debug("could not claim jobs; retrying", exc_info=True)
        try:
            async for attempt in self._retrying():
                with attempt:
                    return await read()
        except Exception as exc:
            raise SettleError(f"could not claim jobs: {exc!r}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def completed(self, job: Job, handler: str) -> None:
        await self.completions.mark(job.event.id, [handler], job.copy_id)

    async def settle(self, job: Job, outcomes: list[Outcome]) -> None:
        """Remember successes and schedule retries for, or record, failures.

        Transient errors (Redis/MongoDB unreachable) are retried for SETTLE_TIMEOUT
        seconds, then SettleError hands the message back. Any other error is final
        after FINAL_TRIES tries: see :meth:`_give_up`.
        """
        env = self.env
        succeeded = [o.handler for o in outcomes if o.error is None and not o.recorded]
        failed = [o for o in outcomes if o.error is not None]
        lost = [o for o in failed if isinstance(o.error, WorkerLostError)]
        tag = job.copy_id

        async def once() -> None:
            await self.completions.mark(job.event.id, succeeded, tag)
            # Claims end before a retry is scheduled, so the retry (a new message,
            # a new tag) finds the job free however soon it is delivered. A job
            # that died too often gets no retry: its claim (and delivery count)
            # ends only once its record is stored. Once settled, every failed job is
            # marked so for this message: should it come back (its acknowledgement
            # lost), it skips them instead of running them beside their retry or after
            # their failure was recorded.
            await self.completions.release(job.event.id, [o.handler for o in failed if o not in lost], tag)
            if failed:
                await settle_failures(
                    job, failed, registry, env.event_bus, env.failures, env.settings.event.retry_policy
                )
                await self.completions.settled(job.event.id, [o.handler for o in failed], tag)

        try:
            try:  # the usual case: one try, no retry machinery
                await once()
            except Exception as exc:
                if not is_transient(exc) and FINAL_TRIES <= 1:
                    raise
                log.debug("settling event %s failed; retrying", job.event.id, exc_info=True)
                async for attempt in self._retrying(tried=1):
                    with attempt:
                        await once()
        except Exception as exc:
            if is_transient(exc):
                raise SettleError(f"could not schedule retries or record failures: {exc!r}") from exc
            await self._give_up(job, succeeded, failed, exc)

    async def _give_up(self, job: Job, succeeded: list[str], failed: list[Outcome], exc: BaseException) -> None:
        """Bookkeeping that can never succeed: record what can be, log the rest; the message is acked.

        Each failed handler gets a minimal failed-job record (error and traceback cut to
        MINIMAL_TEXT characters, the settling error noted) in place of the retry or
        record that could not be made. If the store refuses that too, the event's JSON
        wire form is logged at CRITICAL level: the log is then the only copy.
        """
        wire = json.dumps(job.event.to_wire(), separators=(",", ":"))
        log.error(
            "giving up settling event %s (%s) after %d tries: %s; completed: %s; failed: %s",
            job.event.id,
            job.event.name,
            FINAL_TRIES,
            describe(exc),
            ", ".join(succeeded) or "-",
            ", ".join(o.handler for o in failed) or "-",
        )
        for outcome in failed:
            assert outcome.error is not None
            full = FailedJob.from_exception(
                job.event,
                outcome.handler,
                outcome.error,
                job.attempt + 1,
                job.queue,
                job_id=message.derived_id("failed", job.event.id, outcome.handler, job.attempt + 1),
            )
            note = f" [recorded without retries: settling failed with {describe(exc)}]"
            record = dataclasses.replace(
                full, error=full.error[:MINIMAL_TEXT] + note[:MINIMAL_TEXT], traceback=full.traceback[-MINIMAL_TEXT:]
            )
            try:
                await asyncio.wait_for(self.env.failures.add(record), SETTLE_TIMEOUT)
            except Exception as again:
                log.critical(
                    "could not record handler %s's failure for event %s either (%s); the event, "
                    "as JSON, exists only in this log: %s",
                    outcome.handler,
                    job.event.id,
                    describe(again),
                    wire,
                )


@signals.worker_process_shutdown.connect
def _close_child(**_: Any) -> None:
    WorkerRuntime.shutdown()


@signals.worker_shutdown.connect
def _close_main(**_: Any) -> None:
    WorkerRuntime.shutdown()


app = create_app()
