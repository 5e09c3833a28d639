"""Prometheus metrics of a worker, served on EARNEVENTS_METRICS_PORT (off when unset).

Job metrics (started, succeeded, retried, failed per queue, event and handler; handler
durations) are counted in the process that runs the handlers: with a prefork pool, each
child. They add up across children through prometheus_client's multiprocess mode: the
worker's main process (:class:`MetricsStep`) points PROMETHEUS_MULTIPROC_DIR at a private
temporary directory before the pool forks, each child writes its counts to its own files
there, and the main process' HTTP server sums them on each scrape. A child that exits
leaves its files behind, so its counts stay in the sums; the directory goes when the worker's
main process exits (counters start from zero with the next worker, as Prometheus expects of
a restart).

Queue gauges (waiting, in flight, scheduled, failed, dead-lettered, age of the oldest
waiting event) are read from Redis by a thread of the main process every
:data:`QUEUE_INTERVAL` seconds; a scrape serves the latest reading.

``dispatch`` calls the hooks :func:`started`, :func:`finished` and :func:`settled` next to
the event log's; with metrics off each returns after one global lookup.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from base64 import b64decode
from collections.abc import Iterable, Iterator
from typing import Any

from celery import bootsteps

from .. import keys, redisurl
from ..config import Settings
from ..logtext import get_logger
from ..metrics import queue_gauge_families
from ..queuestatus import unacked_queue
from . import appsettings
from .jobs import Job, Outcome
from .periodic import PeriodicThread, consumed_queues

log = get_logger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

QUEUE_INTERVAL = 1.0
"""Seconds between two readings of the queue gauges."""

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Upper bounds (seconds) of the handler duration histogram's buckets."""

STARTS_KEPT = 10_000
"""Start times a process keeps for jobs that have not ended; the oldest are forgotten beyond."""


class _JobMetrics:
    """This process' job counters and histogram (registered nowhere: the main process reads their files)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram, values

        # prometheus_client picks its value class (in memory, or files for multiprocess mode)
        # when it is first imported: pick again, now that the worker has set the directory.
        values.ValueClass = values.get_value_class()
        labels = ("queue", "event", "handler")
        self.started = Counter("earnevents_jobs_started", "Handler tries started.", labels, registry=None)
        self.succeeded = Counter("earnevents_jobs_succeeded", "Handler tries that succeeded.", labels, registry=None)
        self.retried = Counter(
            "earnevents_jobs_retried", "Handler tries that failed and were scheduled to retry.", labels, registry=None
        )
        self.failed = Counter(
            "earnevents_jobs_failed", "Jobs recorded as failed (retries spent, or not retried).", labels, registry=None
        )
        self.duration = Histogram(
            "earnevents_handler_duration_seconds",
            "Seconds one handler try ran, successful or not.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.starts: dict[tuple[str, str], float] = {}


_current: tuple[int, _JobMetrics] | None = None


def configure(settings: Settings) -> None:
    """Count this process' jobs if the worker serves metrics (call it in the process that runs handlers)."""
    global _current
    if settings.metrics_port is None or not os.environ.get(MULTIPROC_ENV):
        _current = None
        return
    _current = (os.getpid(), _JobMetrics())


def _metrics() -> _JobMetrics | None:
    entry = _current
    if entry is None or entry[0] != os.getpid():
        return None
    return entry[1]


def started(job: Job, handlers: Iterable[str]) -> None:
    """``handlers`` start now for ``job``'s event."""
    m = _metrics()
    if m is None:
        return
    now = time.time()
    if len(m.starts) > STARTS_KEPT:  # jobs that never ended here (their message handed back)
        for key in list(m.starts)[: STARTS_KEPT // 10]:
            m.starts.pop(key, None)
    for handler in handlers:
        m.starts[(job.event.id, handler)] = now
        m.started.labels(job.queue, job.event.name, handler).inc()


def finished(job: Job, outcomes: Iterable[Outcome]) -> None:
    """The tries of ``outcomes`` ended: count successes, time every try that started here."""
    m = _metrics()
    if m is None:
        return
    for outcome in outcomes:
        labels = (job.queue, job.event.name, outcome.handler)
        began = m.starts.pop((job.event.id, outcome.handler), None)
        if began is not None:  # None: recorded as failed unrun (its worker died too often)
            m.duration.labels(*labels).observe(max(0.0, outcome.at - began))
        if outcome.error is None:
            m.succeeded.labels(*labels).inc()


def settled(job: Job, outcome: Outcome, retrying: bool) -> None:
    """A failed try was scheduled for a retry (``retrying``) or recorded as a failed job."""
    m = _metrics()
    if m is not None:
        (m.retried if retrying else m.failed).labels(job.queue, job.event.name, outcome.handler).inc()


class QueueGauges(PeriodicThread):
    """Reads the queue gauges of ``queues`` from Redis every :data:`QUEUE_INTERVAL` seconds."""

    what = "metrics queue reader"

    def __init__(self, settings: Settings, queues: list[str], interval: float = QUEUE_INTERVAL) -> None:
        super().__init__(interval)
        self.queues = queues
        self.failed_max_age = settings.failed_max_age
        self._redis = redisurl.sync_client(settings.redis_uri, socket_timeout=5, socket_connect_timeout=5)
        self._mongo: Any = None
        if settings.mongo_uri is not None:
            from pymongo import MongoClient

            client: Any = MongoClient(settings.mongo_uri, tz_aware=True, serverSelectionTimeoutMS=5000)
            self._mongo = client[settings.database][keys.MONGO_FAILED_COLLECTION]
        self.readings: dict[str, dict[str, float]] = {}
        """Queue -> gauge name -> value, as of the last tick."""

    def tick(self) -> None:
        readings: dict[str, dict[str, float]] = {}
        now = time.time()
        cutoff = now - self.failed_max_age
        in_flight = self._in_flight()
        for queue in self.queues:
            pipe = self._redis.pipeline(transaction=False)
            pipe.llen(queue)
            pipe.lindex(queue, -1)  # LPUSHed, taken from the right: the oldest
            pipe.zcard(keys.scheduled_zset(queue))
            pipe.zcard(keys.dead_index(queue))
            pipe.zcount(keys.failed_index(queue), repr(cutoff), "+inf")
            pipe.smembers(keys.inflight_consumers(queue))
            waiting, oldest, scheduled, dead, failed, consumers = pipe.execute()
            taking = 0
            if consumers:
                pipe = self._redis.pipeline(transaction=False)
                for consumer in consumers:
                    name = consumer.decode() if isinstance(consumer, bytes) else str(consumer)
                    pipe.llen(keys.inflight_list(queue, name))
                taking = sum(int(n) for n in pipe.execute())
            if self._mongo is not None:
                since = dt.datetime.fromtimestamp(cutoff, dt.timezone.utc)
                failed = self._mongo.count_documents({"queue": queue, "failed_at": {"$gte": since}})
            readings[queue] = {
                "waiting": int(waiting),
                "in_flight": in_flight.get(queue, 0) + taking,
                "scheduled": int(scheduled),
                "failed": int(failed),
                "dead": int(dead),
                "oldest_age": _age(oldest, now),
            }
        self.readings = readings

    def _in_flight(self) -> dict[str, int]:
        """Messages delivered and not yet acknowledged, per queue (kombu's unacked records)."""
        counts: dict[str, int] = {}
        for raw in self._redis.hvals(keys.UNACKED):
            queue = unacked_queue(raw)
            if queue is not None:
                counts[queue] = counts.get(queue, 0) + 1
        return counts

    def close(self) -> None:
        self._redis.close()
        if self._mongo is not None:
            self._mongo.database.client.close()


def _age(item: bytes | str | None, now: float) -> float:
    """Seconds since the event of a queue item was published (0 for an empty queue or an unreadable item)."""
    if item is None:
        return 0.0
    try:
        body = json.loads(b64decode(json.loads(item)["body"]))
        published = dt.datetime.fromisoformat(body[0][0]["timestamp"]).timestamp()
    except Exception:  # not an earnevents message: the worker dead-letters it
        return 0.0
    return max(0.0, now - published)


WORKER_GAUGES = ("waiting", "in_flight", "scheduled", "failed", "dead", "oldest_age")
"""The fields of :data:`earnevents.metrics.QUEUE_GAUGES` a :class:`QueueGauges` reading has."""


class QueueCollector:
    """Serves :class:`QueueGauges`' latest readings as Prometheus gauges."""

    def __init__(self, gauges: QueueGauges) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[Any]:
        return queue_gauge_families(self.gauges.readings, WORKER_GAUGES)


class MetricsStep(bootsteps.StartStopStep):
    """Worker bootstep serving the metrics on EARNEVENTS_METRICS_PORT, when it is set.

    The multiprocess directory is set up when the step is made, before the pool forks.
    """

    label = "earnevents metrics"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.settings = appsettings.settings_of(worker.app)
        self.directory: str | None = None
        self.server: Any = None
        self.gauges: QueueGauges | None = None
        if self.settings.metrics_port is not None:
            self.directory = tempfile.mkdtemp(prefix="earnevents-metrics-")
            os.environ[MULTIPROC_ENV] = self.directory
            atexit.register(_remove, self.directory, os.getpid())

    def start(self, worker: Any) -> None:
        if self.directory is None or self.settings.metrics_port is None:
            return
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)
        self.gauges = QueueGauges(self.settings, consumed_queues(worker))
        registry.register(QueueCollector(self.gauges))
        host, port = self.settings.metrics_host, self.settings.metrics_port
        try:
            self.server, _ = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {host}:{port} (EARNEVENTS_METRICS_PORT): {exc}") from exc
        self.gauges.start()
        log.info("serving Prometheus metrics on http://%s:%d/metrics", host, port)

    def stop(self, worker: Any) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        gauges, self.gauges = self.gauges, None
        if gauges is not None:
            gauges.stop()

    shutdown = stop


def _remove(directory: str, pid: int) -> None:
    """At the main process' exit (pool children may write until they are gone): drop the counts."""
    if os.getpid() == pid:
        shutil.rmtree(directory, ignore_errors=True)
