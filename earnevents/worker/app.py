"""The Celery app workers run: ``celery -A earnevents worker``.

Configured from the EARNEVENTS_* environment. Messages are acknowledged only
after their handlers finished or their failures were scheduled for retry or
recorded (``acks_late``); a worker killed mid-handler leaves the message
unacknowledged, and kombu puts it back on the queue once ``visibility_timeout``
has passed. Live workers keep their messages fresh (``keepalive``), so only a
dead worker's messages are redelivered, however long a handler runs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from celery import Celery, signals
from celery.exceptions import Reject
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, stop_after_delay, wait_exponential

from .. import message, runtime
from ..config import Settings
from ..errors import WorkerLostError
from ..handlers import registry
from ..keys import TASK_NAME
from .completions import Completions
from .dispatch import Job, Outcome, SettleFailed, handle_message, settle_failures
from .keepalive import KeepAliveStep
from .loop import LoopThread, process_loop, stop_process_loop
from .relay import RelayStep
from .scheduler import SchedulerStep

log = logging.getLogger(__name__)

T = TypeVar("T")

RELAY_INTERVAL = 1.0
"""Seconds between a worker's checks of the MongoDB outbox."""

SETTLE_TIMEOUT = 30.0
"""Seconds a worker keeps trying to schedule retries / record failures before requeueing."""


def create_app(settings: Settings | None = None) -> Celery:
    """Build the Celery app for ``settings`` (default: from the environment)."""
    settings = settings or Settings.resolve()
    visibility = settings.visibility_timeout
    app = Celery("earnevents")
    app.conf.update(
        broker_url=settings.redis_uri,
        # kombu's redis transport with reliable fetch; a malformed item is dropped, not fatal.
        broker_transport="earnevents.worker.transport:Transport",
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
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "health_check_interval": 10,
        },
        task_default_queue=settings.queue_name,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Keep handlers running through a broker reconnect: acknowledging on Redis works on
        # any connection (the unacked state lives in Redis keys), so nothing must be killed.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        accept_content=["json"],
        task_serializer="json",
        include=list(settings.handler_modules),
        earnevents_scheduler_interval=settings.scheduler_interval,
        earnevents_mongo_uri=settings.mongo_uri,
        earnevents_database=settings.database,
        earnevents_relay_interval=RELAY_INTERVAL,
    )
    app.steps["worker"].add(SchedulerStep)
    app.steps["worker"].add(KeepAliveStep)
    app.steps["worker"].add(RelayStep)

    @app.task(name=TASK_NAME, bind=True)
    def dispatch(self: Any, *args: Any, **kwargs: Any) -> None:
        queue = (self.request.delivery_info or {}).get("routing_key") or settings.queue_name
        # The copy id owns the message's job claims: kept when the message is given back
        # (a worker lost, a visibility timeout), unlike the delivery tag. A message built
        # elsewhere has none: its task id then stands in, so a redelivery always takes over
        # its own claims (at worst two copies with one task id both run; nothing is skipped).
        copy_id = (self.request.properties or {}).get(message.COPY_ID)
        copy_id = copy_id if isinstance(copy_id, str) and copy_id else f"task:{self.request.id}"
        try:
            if not args:
                raise ValueError("no event")
            if len(args) > 1 and kwargs.get("handler") is not None:
                raise ValueError("a retry message carries one event")
            jobs = [Job.from_message(event, kwargs, queue, copy_id) for event in args]
        except (TypeError, ValueError) as exc:
            log.error("dropping malformed message %s on %s: %s", self.request.id, queue, exc)
            return
        worker = WorkerRuntime.get()
        try:
            handle_message(jobs, registry, worker.loop, worker)
        except (SettleError, SettleFailed, RedisError, PyMongoError, OSError) as exc:
            # Our own bookkeeping failed (handler errors never get here): acknowledging
            # would lose the event, so hand the message back to be run again.
            log.warning("requeueing %s: %r", self.request.id, exc)
            raise Reject(str(exc), requeue=True) from exc

    return app


class SettleError(Exception):
    """Raised when retries could not be scheduled nor failures recorded in time."""


class WorkerRuntime:
    """Per-process state: the loop thread and the environment init() built on it."""

    _lock = threading.Lock()
    _current: tuple[int, WorkerRuntime] | None = None

    def __init__(self, loop: LoopThread, env: runtime.Environment) -> None:
        self.loop = loop
        self.env = env
        self.completions = Completions(env.connections.redis, env.settings.dedup_window)
        self.max_deliveries = env.settings.max_deliveries

    @classmethod
    def get(cls) -> WorkerRuntime:
        with cls._lock:
            if cls._current is None or cls._current[0] != os.getpid():
                loop = process_loop()
                env = loop.run(runtime.init(handler_modules=()))
                cls._current = (os.getpid(), cls(loop, env))
            return cls._current[1]

    @classmethod
    def shutdown(cls) -> None:
        with cls._lock:
            entry, cls._current = cls._current, None
        if entry is not None and entry[0] == os.getpid():
            try:
                entry[1].loop.run(runtime.close(), timeout=5)
            except Exception:  # best effort at exit
                log.debug("closing earnevents connections failed", exc_info=True)
            stop_process_loop()

    @staticmethod
    def _retrying() -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_delay(SETTLE_TIMEOUT), wait=wait_exponential(multiplier=0.1, max=2), reraise=True
        )

    async def claim(self, jobs: list[tuple[Job, list[str]]]) -> list[dict[str, int]]:
        tag = jobs[0][0].copy_id  # the jobs of one message share it
        pairs = [(job.event.id, handlers) for job, handlers in jobs]
        return await self._claim_retrying(lambda: self.completions.claim(tag, pairs))

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
        env = self.env
        succeeded = [o.handler for o in outcomes if o.error is None and not o.recorded]
        failed = [o for o in outcomes if o.error is not None]
        lost = [o for o in failed if isinstance(o.error, WorkerLostError)]
        tag = job.copy_id
        try:
            async for attempt in self._retrying():
                with attempt:
                    await self.completions.mark(job.event.id, succeeded, tag)
                    # Claims end before a retry is scheduled, so the retry (a new message,
                    # a new tag) finds the job free however soon it is delivered. A job
                    # that died too often gets no retry: its claim (and delivery count)
                    # ends only once its record is stored.
                    await self.completions.release(job.event.id, [o.handler for o in failed if o not in lost], tag)
                    if failed:
                        await settle_failures(
                            job, failed, registry, env.event_bus, env.failures, env.settings.event.retry_policy
                        )
                    await self.completions.release(job.event.id, [o.handler for o in lost], tag)
        except Exception as exc:
            raise SettleError(f"could not schedule retries or record failures: {exc!r}") from exc


@signals.worker_process_shutdown.connect
def _close_child(**_: Any) -> None:
    WorkerRuntime.shutdown()


@signals.worker_shutdown.connect
def _close_main(**_: Any) -> None:
    WorkerRuntime.shutdown()


app = create_app()
