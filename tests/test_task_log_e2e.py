"""Celery's per-task INFO lines for earnevents' dispatch task ("received", "succeeded in") are
off by default: each is a log record formatted and written per event by the consumer and by
the pool process. EARNEVENTS_TASK_LOG=1 brings them back; earnevents' own lines (a handler's
failure, a retry, a requeue) are written either way."""

from __future__ import annotations

import json
import re

import pytest
from conftest import token, wait_handled

from earnevents import Event
from earnevents.testing import wait_for

pytestmark = pytest.mark.worker

NO_RETRY = json.dumps({"max_retries": 0})
# Celery names the task by the event it carries: "Task t.record[<id>] received".
RECEIVED = re.compile(r"Task \S+\[[0-9a-f-]+\] received")
SUCCEEDED = re.compile(r"Task \S+\[[0-9a-f-]+\] succeeded in")
FAILED_JOB = "recorded as a failed job"


async def test_by_default_a_worker_writes_no_line_per_handled_event_but_its_own_failures(bus, start_worker, rclient):
    # Given a worker with one pool process and no retries
    worker = start_worker(concurrency=1, env={"EARNEVENTS_RETRY_POLICY": NO_RETRY})
    tok = token()

    # When events are handled, then one whose handler fails (taken after them: one process)
    await bus.publish_batch([Event("t.record", {"token": tok, "n": i}) for i in range(3)])
    await bus.publish(Event("t.always_fails", {"token": tok}))
    wait_handled(rclient, tok, "record_async", 3)
    wait_for(lambda: FAILED_JOB in worker.log(), 20, "the failure's log line")

    # Then the log has earnevents' line for the failure and no Celery line per task
    log = worker.log()
    assert "always_fails" in log
    assert not RECEIVED.search(log) and not SUCCEEDED.search(log)


# t.sleepy's handlers are all async: under -P threads it runs on the loop (worker.strategy),
# which writes the "succeeded in" line itself.
@pytest.mark.parametrize(
    ("pool", "name", "handler"), [("prefork", "t.record", "record_async"), ("threads", "t.sleepy", "sleepy")]
)
async def test_earnevents_task_log_on_brings_back_celerys_lines_per_task(
    pool, name, handler, bus, start_worker, rclient
):
    worker = start_worker(pool=pool, concurrency=1, env={"EARNEVENTS_TASK_LOG": "1"})
    tok = token()

    await bus.publish(Event(name, {"token": tok, "seconds": 0}))
    wait_handled(rclient, tok, handler)

    wait_for(lambda: RECEIVED.search(worker.log()) and SUCCEEDED.search(worker.log()), 20, "Celery's task lines")
