"""The plain-Celery side of the benchmarks: the same Redis, a trivial task, Celery's defaults
for what earnevents sets on purpose (acks_late, prefetch 1, json, no results)."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("plain", broker=os.environ.get("BENCH_REDIS_URI", "redis://localhost:6379/0"))
app.conf.update(
    task_default_queue=os.environ.get("BENCH_QUEUE", "plain"),
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    accept_content=["json"],
    task_serializer="json",
    broker_connection_retry_on_startup=True,
)


@app.task(name="plain.tick")
def tick(payload: dict) -> None:  # type: ignore[type-arg]
    """Does nothing: the benchmarks measure the framework, not the work."""
