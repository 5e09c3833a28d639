"""The plain-Celery side of the benchmarks: same Redis, same work as bench/handlers.py.

Celery is configured as earnevents configures it where that is a choice of
semantics (late acknowledgement, prefetch 1, json, no results).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
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

_redis: redis.Redis | None = None


def client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URI", "redis://localhost:6379/0"))
    return _redis


@app.task(name="plain.noop")
def noop(payload: dict[str, Any]) -> None:
    """One Redis round trip: count the message (same as bench.handlers.noop)."""
    client().incr(payload["key"])


@app.task(name="plain.io")
def io(payload: dict[str, Any]) -> None:
    """10 ms of I/O wait, then count (same as bench.handlers.io)."""
    time.sleep(0.01)
    client().incr(payload["key"])


@app.task(name="plain.latency")
def latency(payload: dict[str, Any]) -> None:
    """Record how long after publishing the task started (same as bench.handlers.latency)."""
    client().rpush(payload["key"], time.time() - payload["published_at"])


@app.task(name="plain.tick")
def tick(payload: dict[str, Any]) -> None:
    """Does nothing: what countdown tasks run in the memory figure (never, within it)."""


@app.task(name="plain.step")
def chain_step(payload: dict[str, Any]) -> None:
    """One task of figure 9's 5-task chain: count it (same as a step of bench.workflow_defs)."""
    client().incr(payload["key"])
