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

from .. import keys, redisurl, runtime
from ..config import Settings
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
            **broker.transport_options,
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
        earnevents_redis_uri=settings.redis_uri,
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
        try:
            if not args:
                raise ValueError("no event")
            if len(args) > 1 and kwargs.get("handler") is not None:
                raise ValueError("a retry message carries one event")
            jobs = [Job.from_message(event, kwargs, queue) for event in args]
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

    async def already_done(self, job: Job, handlers: list[str]) -> set[str]:
        return await self._read_completions(lambda: self.completions.done(job.event.id, handlers))

    async def already_done_many(self, jobs: list[tuple[Job, list[str]]]) -> list[set[str]]:
        pairs = [(job.event.id, handlers) for job, handlers in jobs]
        return await self._read_completions(lambda: self.completions.done_many(pairs))

    async def _read_completions(self, read: Callable[[], Awaitable[T]]) -> T:
        try:  # the usual case: one try, no retry machinery
            return await read()
        except Exception:
            log.debug("could not read completed handlers; retrying", exc_info=True)
        try:
            async for attempt in self._retrying():
                with attempt:
                    return await read()
        except Exception as exc:
            raise SettleError(f"could not read completed handlers: {exc!r}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def completed(self, job: Job, handler: str) -> None:
        await self.completions.mark(job.event.id, [handler])

    async def settle(self, job: Job, outcomes: list[Outcome]) -> None:
        env = self.env
        succeeded = [o.handler for o in outcomes if o.error is None and not o.recorded]
        failed = [o for o in outcomes if o.error is not None]
        try:
            async for attempt in self._retrying():
                with attempt:
                    await self.completions.mark(job.event.id, succeeded)
                    if failed:
                        await settle_failures(
                            job, failed, registry, env.event_bus, env.failures, env.settings.event.retry_policy
                        )
        except Exception as exc:
            raise SettleError(f"could not schedule retries or record failures: {exc!r}") from exc


@signals.worker_process_shutdown.connect
def _close_child(**_: Any) -> None:
    WorkerRuntime.shutdown()


@signals.worker_shutdown.connect
def _close_main(**_: Any) -> None:
    WorkerRuntime.shutdown()


app = create_app()
