"""Workers that stall and come back, end to end with real `celery -A earnevents worker` processes."""

from __future__ import annotations

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
