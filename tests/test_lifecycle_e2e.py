"""Workers that stall and come back, or stop consuming, end to end with real `celery -A earnevents worker` processes."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import token, wait_results

from earnevents import Event, keys
from earnevents.testing import wait_for

pytestmark = pytest.mark.worker

TTL = "2"
"""EARNEVENTS_VISIBILITY_TIMEOUT here: also the consumers' alive-key TTL."""


def consumer_of(rclient, queue: str, pid: int) -> str | None:
    """The listed consumer id of the worker process ``pid``, if it is listed."""
    for member in rclient.smembers(keys.inflight_consumers(queue)):
        consumer = member.decode()
        if consumer.split(":")[-2] == str(pid):
            return consumer
    return None


async def test_a_worker_stopped_longer_than_its_ttl_is_listed_again_when_it_resumes(bus, start_worker, rclient, queue):
    # Given two workers, both listed for the orphan sweep
    stalled = start_worker(concurrency=1, env={"EARNEVENTS_VISIBILITY_TIMEOUT": TTL})
    start_worker(concurrency=1, env={"EARNEVENTS_VISIBILITY_TIMEOUT": TTL})
    assert stalled.proc is not None
    pid = stalled.proc.pid
    consumer = wait_for(lambda: consumer_of(rclient, queue, pid), 10, "the worker's consumer to be listed")
    # When one is stopped (SIGSTOP) until the other sweeps it as dead, then resumes
    os.killpg(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: consumer_of(rclient, queue, pid) is None, 10, "the stopped worker to be swept")
    finally:
        os.killpg(pid, signal.SIGCONT)
    # Then it is listed and alive again within a keep-alive interval, and stays so
    wait_for(lambda: consumer_of(rclient, queue, pid) == consumer, 5, "the resumed worker to be listed again")
    deadline = time.monotonic() + 3  # beyond its TTL
    while time.monotonic() < deadline:
        assert consumer_of(rclient, queue, pid) == consumer and rclient.exists(keys.consumer_alive(consumer))
        time.sleep(0.1)
    # And both workers go on handling events
    tok = token()
    for _ in range(6):
        await bus.publish(Event("t.record", {"token": tok}))
    assert len(wait_results(rclient, tok, 12)) == 12


def unacked_records(app, rclient, task_id: str) -> list[str]:
    """Delivery tags recorded as unacknowledged for the message with ``task_id``."""
    key = (app.conf.broker_transport_options or {}).get("unacked_key", "unacked")
    return [
        tag.decode()
        for tag, raw in rclient.hgetall(key).items()
        if json.loads(raw)[0].get("headers", {}).get("id") == task_id
    ]


async def test_cancel_consumer_sends_the_acknowledgements_of_messages_finished_afterwards(
    bus, start_worker, rclient, queue, redis_url
):
    # Given a worker running a handler, and its app's control client
    from earnevents.config import Settings
    from earnevents.worker.app import create_app

    app = create_app(
        Settings.resolve(
            environ={"EARNEVENTS_REDIS_URI": redis_url, "EARNEVENTS_QUEUE": queue, "EARNEVENTS_MONGO_URI": ""}
        )
    )
    start_worker(concurrency=1)
    tok = token()
    event = Event("t.slow", {"token": tok})
    await bus.publish(event)
    wait_results(rclient, tok, 1)
    # When an operator cancels its consumer (`celery control cancel_consumer`), then the handler ends
    replies = app.control.cancel_consumer(queue, reply=True, timeout=10)
    assert replies and all("ok" in reply for r in replies for reply in r.values())
    rclient.set(f"release:{tok}", 1)
    wait_results(rclient, tok, 2)
    # Then the message's acknowledgement reaches Redis (it is not redelivered later)
    wait_for(lambda: not unacked_records(app, rclient, event.id), 5, "the acknowledgement")
