"""End to end: a worker holds the retry policy a message carries within its caps."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import results, token

from earnevents import Event, message

pytestmark = pytest.mark.worker


async def test_a_raw_message_asking_for_endless_instant_retries_fails_after_the_workers_cap(
    bus, start_worker, rclient, queue
):
    # Given a worker that allows a message's policy 2 retries
    start_worker(env={"EARNEVENTS_MAX_RETRIES_CAP": "2", "EARNEVENTS_MIN_RETRY_INTERVAL": "0.05"}, concurrency=1)
    # When a message built without the library asks for 10**12 retries at 0 s for a failing handler
    tok = token()
    event = Event("t.always_fails", {"token": tok})
    absurd = {"max_retries": 10**12, "interval_start": 0, "interval_step": 0, "interval_max": 0}
    rclient.lpush(queue, message.build(event.to_wire(), queue=queue, task_id=event.id, retry_policy=absurd))
    # Then the handler is tried 3 times and recorded as one failed job
    deadline = time.monotonic() + 20
    while not (jobs := await bus.get_failed_jobs()):
        assert time.monotonic() < deadline, f"no failed job; tries so far: {len(results(rclient, tok))}"
        await asyncio.sleep(0.05)
    [job] = jobs
    assert (job.handler, job.attempts) == ("e2e_handlers.always_fails", 3)
    tries = [r["attempt"] for r in results(rclient, tok) if r["handler"] == "always_fails"]
    assert tries == [1, 2, 3]
    # And no retry is left pending
    assert await bus.count_scheduled() == 0
