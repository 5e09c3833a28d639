"""Celery's own tools name earnevents jobs by event and handler, not ``earnevents.dispatch``.

Every message carries a ``shadow`` header (earnevents.message.shadow_name), which the
worker takes as the task's name: ``celery inspect active/reserved`` and Flower (through
inspect, and through task events when the worker sends them, ``-E``) show it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import TESTS_DIR, token, wait_handled

from earnevents import Event, message
from earnevents.config import Settings
from earnevents.testing import free_port, wait_for

pytestmark = pytest.mark.worker


def _hostname(worker: Any) -> str:
    """The node name the worker was started with (``-n earnevents-<port>@%h``)."""
    name = worker.args[worker.args.index("-n") + 1]
    return name.replace("%h", socket.gethostname())


def _block(rclient: Any, queue: str, tok: str) -> tuple[Event, str]:
    """Put two blocking jobs on ``queue``: a fresh ``t.slow`` event and another one's job
    for one handler (as a retry, a replay or ``retry_job`` sends it). Returns the fresh
    event and the job's task id."""
    event, other = Event("t.slow", {"token": tok}), Event("t.slow", {"token": tok})
    rclient.lpush(queue, message.build(event.to_wire(), queue=queue, task_id=event.id))
    job_id = message.new_task_id()
    rclient.lpush(
        queue, message.build(other.to_wire(), queue=queue, task_id=job_id, handler="e2e_handlers.slow", attempt=1)
    )
    return event, job_id


def test_inspect_active_shows_event_and_handler_names(start_worker, rclient, queue, redis_url):
    # Given a worker running a fresh event's handler and one handler's job, both blocked
    from earnevents.worker.app import create_app

    app = create_app(
        Settings.resolve(
            environ={"EARNEVENTS_REDIS_URI": redis_url, "EARNEVENTS_QUEUE": queue, "EARNEVENTS_MONGO_URI": ""}
        )
    )
    worker = start_worker(concurrency=2)
    hostname = _hostname(worker)
    tok = token()
    event, job_id = _block(rclient, queue, tok)
    try:
        wait_handled(rclient, tok, "slow_started", count=2)

        # When an operator runs `celery inspect active`
        def active() -> dict[str, str] | None:
            replies = app.control.inspect(destination=[hostname], timeout=2).active() or {}
            names = {task["id"]: task["name"] for task in replies.get(hostname, [])}
            return names if len(names) == 2 else None

        names = wait_for(active, 10, "both jobs in inspect active")
        # Then it names each job by its event, and the handler's job by event and handler
        assert names == {event.id: "t.slow", job_id: "t.slow -> e2e_handlers.slow"}
    finally:
        rclient.set(f"release:{tok}", 1)
        app.close()
    wait_handled(rclient, tok, "slow_done", count=2)


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def _get_or_none(port: int, path: str) -> Any:
    try:
        return _get(port, path)
    except OSError:  # not listening yet, or 404 for a task it has not seen
        return None


@pytest.mark.skipif(importlib.util.find_spec("flower") is None, reason="Flower is not installed (a dev dependency)")
def test_flower_api_shows_event_and_handler_names(start_worker, rclient, queue, redis_url, tmp_path: Path):
    # Given a worker sending task events (-E: Flower's task list is made of them) and
    # `celery -A earnevents flower` on the same Redis
    worker = start_worker(concurrency=2, extra_args=["-E"])
    hostname = _hostname(worker)
    port = free_port()
    env = {
        **os.environ,
        "EARNEVENTS_REDIS_URI": redis_url,
        "EARNEVENTS_QUEUE": queue,
        "EARNEVENTS_MONGO_URI": "",
        "EARNEVENTS_HANDLER_MODULES": "e2e_handlers",
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
        "FLOWER_UNAUTHENTICATED_API": "true",  # the API is closed without auth; this one listens on 127.0.0.1
    }
    args = [sys.executable, "-m", "celery", "-A", "earnevents", "flower", f"--port={port}", "--address=127.0.0.1"]
    # --enable_events=False: Flower would otherwise turn task events on in every worker on
    # this Redis (other tests' too); the worker here sends them itself (-E).
    args += ["--enable_events=False", "--inspect_timeout=3000"]
    with open(tmp_path / "flower.log", "wb") as log:
        flower = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _get_or_none(port, "/api/workers?status=1") is not None, 20, "Flower's HTTP API")

        # Flower takes task events only once its receiver is connected: publish until it names one
        def flower_saw_one() -> bool:
            warm = Event("t.sleepy", {"seconds": 0})
            rclient.lpush(queue, message.build(warm.to_wire(), queue=queue, task_id=warm.id))
            return wait_for(
                lambda: (_get_or_none(port, f"/api/task/info/{warm.id}") or {}).get("name"),
                1,
                "",
                interval=0.1,
            )

        wait_for(lambda: _tries(flower_saw_one), 15, "Flower to receive task events")
        tok = token()
        event, job_id = _block(rclient, queue, tok)
        try:
            wait_handled(rclient, tok, "slow_started", count=2)
            # When the API lists the tasks (from task events) and the worker's active tasks (inspect)
            tasks = wait_for(
                lambda: (t := _get_or_none(port, f"/api/tasks?workername={hostname}")) and job_id in t and t,
                10,
                "the jobs in Flower's task list",
            )
            workers = _get(port, f"/api/workers?refresh=1&workername={hostname}")
            # Then both name each job by its event, and a handler's job by event and handler
            assert tasks[event.id]["name"] == "t.slow"
            assert tasks[job_id]["name"] == "t.slow -> e2e_handlers.slow"
            active = {task["id"]: task["name"] for task in workers[hostname]["active"]}
            assert active == {event.id: "t.slow", job_id: "t.slow -> e2e_handlers.slow"}
        finally:
            rclient.set(f"release:{tok}", 1)
        wait_handled(rclient, tok, "slow_done", count=2)
    finally:
        flower.terminate()
        try:
            flower.wait(10)
        except subprocess.TimeoutExpired:
            flower.kill()
            flower.wait()


def _tries(check: Any) -> bool:
    """``check()``, False when its own short wait gave up."""
    try:
        return bool(check())
    except TimeoutError:
        return False
