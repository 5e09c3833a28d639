"""The `earnevents failed ...` command, run as operators run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import earnevents
from earnevents import Event, FailedJob


def cli(redis_url: str, queue: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "earnevents"
    env = {**os.environ, "EARNEVENTS_REDIS_URI": redis_url, "EARNEVENTS_QUEUE": queue, "EARNEVENTS_MONGO_URI": ""}
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
async def two_jobs(bus, queue):
    jobs = []
    for name in ("user.created", "order.paid"):
        try:
            raise RuntimeError(f"{name} broke")
        except RuntimeError as exc:
            jobs.append(FailedJob.from_exception(Event(name, {"n": 1}), "app.handlers.h", exc, 4, queue))
    env = earnevents.runtime.current()
    for job in jobs:
        await env.failures.add(job)
    return jobs


async def test_list_prints_jobs_as_json_lines(redis_url, queue, two_jobs):
    out = cli(redis_url, queue, "failed", "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert {r["id"] for r in rows} == {j.id for j in two_jobs}
    assert {r["error"] for r in rows} == {"RuntimeError: user.created broke", "RuntimeError: order.paid broke"}


async def test_list_filters_by_event_and_counts(redis_url, queue, two_jobs):
    out = cli(redis_url, queue, "failed", "list", "--event", "order.paid")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "1 failed job(s)"
    assert two_jobs[1].id in out.stdout and two_jobs[0].id not in out.stdout


async def test_show_includes_data_and_traceback(redis_url, queue, two_jobs):
    out = cli(redis_url, queue, "failed", "show", two_jobs[0].id)
    shown = json.loads(out.stdout)
    assert shown["data"] == {"n": 1} and "Traceback" in shown["traceback"]


async def test_retry_and_remove_take_jobs_off_and_unknown_ids_exit_1(redis_url, queue, rclient, two_jobs):
    retried = cli(redis_url, queue, "failed", "retry", two_jobs[0].id)
    assert retried.returncode == 0 and f"retried {two_jobs[0].id}" in retried.stdout
    assert rclient.llen(queue) == 1  # the handler's message is on the queue
    removed = cli(redis_url, queue, "failed", "remove", two_jobs[1].id, "nope")
    assert removed.returncode == 1
    assert f"removed {two_jobs[1].id}" in removed.stdout and "nope" in removed.stderr
    assert await earnevents.event_bus.get_failed_jobs() == []


def test_bad_configuration_exits_2_with_a_message(queue):
    out = cli("not-a-url", queue, "failed", "list")
    assert out.returncode == 2 and "redis://" in out.stderr
