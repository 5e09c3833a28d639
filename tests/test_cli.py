"""The `earnevents failed ...` command, run as operators run it."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import earnevents
from earnevents import Event, FailedJob, connections
from earnevents import cli as cli_module
from earnevents.testing import free_port


def cli(redis_url: str, queue: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as a subprocess, its stdin not a terminal (/dev/null)."""
    exe = Path(sys.executable).parent / "earnevents"
    env = {**os.environ, "EARNEVENTS_REDIS_URI": redis_url, "EARNEVENTS_QUEUE": queue, "EARNEVENTS_MONGO_URI": ""}
    return subprocess.run(
        [str(exe), *args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


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
    retried = cli(redis_url, queue, "failed", "retry", two_jobs[0].id, "--yes")
    assert retried.returncode == 0 and f"retried {two_jobs[0].id}" in retried.stdout
    assert rclient.llen(queue) == 1  # the handler's message is on the queue
    removed = cli(redis_url, queue, "failed", "remove", two_jobs[1].id, "nope", "--yes")
    assert removed.returncode == 1
    assert f"removed {two_jobs[1].id}" in removed.stdout and "nope" in removed.stderr
    assert await earnevents.event_bus.get_failed_jobs() == []


def test_bad_configuration_exits_2_with_a_message(queue):
    out = cli("not-a-url", queue, "failed", "list")
    assert out.returncode == 2 and "redis://" in out.stderr


# --- purge, confirmation, errors (issue 10) ---------------------------------------------


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """``earnevents ARGV`` in this process: exit status, stdout, stderr."""
    try:
        status = cli_module.main(list(argv))
    except SystemExit as exc:  # argparse (usage errors, --help)
        status = int(exc.code or 0)
    out = capsys.readouterr()
    return status, out.out, out.err


def assert_one_error_line(err: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


def add_jobs(redis_url: str, queue: str, *specs: tuple[str, float]) -> list[FailedJob]:
    """Failed jobs (event name, hours ago) in the Redis store, from outside any event loop."""
    now = dt.datetime.now(dt.timezone.utc)
    jobs = [
        FailedJob(Event(name, {}), "app.handlers.h", "RuntimeError: x", "tb", 4, queue, now - dt.timedelta(hours=h))
        for name, h in specs
    ]

    async def add() -> None:
        env = await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue})
        try:
            for job in jobs:
                await env.failures.add(job)
        finally:
            await earnevents.close()

    asyncio.run(add())
    return jobs


def listed(redis_url: str, queue: str) -> set[str]:
    out = cli(redis_url, queue, "failed", "list", "--json")
    return {json.loads(line)["id"] for line in out.stdout.splitlines()}


def test_purge_deletes_by_age_and_event_with_yes(redis_url, queue):
    # Given jobs that failed 3 days, 2 hours and 1 hour ago
    _old, mid, new = add_jobs(redis_url, queue, ("a.x", 72), ("b.x", 2), ("a.x", 1))
    # When purging those older than a day, then those of event b.x
    out = cli(redis_url, queue, "failed", "purge", "--older-than", "1d", "--yes")
    assert out.returncode == 0 and out.stdout.strip() == "purged 1 failed job(s)", out.stderr
    assert listed(redis_url, queue) == {mid.id, new.id}
    out = cli(redis_url, queue, "failed", "purge", "--event", "b.x", "--yes")
    # Then only what matched is gone
    assert out.returncode == 0 and out.stdout.strip() == "purged 1 failed job(s)", out.stderr
    assert listed(redis_url, queue) == {new.id}


def test_destructive_commands_without_a_terminal_refuse_unless_yes(redis_url, queue):
    # Given a failed job and a dead letter, and a stdin that is not a terminal
    [job] = add_jobs(redis_url, queue, ("a.x", 1))
    for args in (
        ("failed", "remove", job.id),
        ("failed", "retry", job.id),
        ("failed", "purge"),
        ("failed", "purge", "--older-than", "1s"),
        ("dead", "remove", "some-id"),
    ):
        # When a command that deletes or re-runs is given without --yes
        out = cli(redis_url, queue, *args)
        # Then it refuses with a usage error naming --yes, and changes nothing
        assert out.returncode == 2, (args, out.stderr)
        assert_one_error_line(out.stderr)
        assert "pass --yes" in out.stderr
    assert listed(redis_url, queue) == {job.id}


def test_on_a_terminal_it_asks_and_only_yes_goes_ahead(redis_url, queue, capsys, monkeypatch):
    # Given a failed job and an operator at a terminal
    [job] = add_jobs(redis_url, queue, ("a.x", 1))
    monkeypatch.setenv("EARNEVENTS_REDIS_URI", redis_url)
    monkeypatch.setenv("EARNEVENTS_QUEUE", queue)
    monkeypatch.setenv("EARNEVENTS_MONGO_URI", "")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    # When they answer anything but y, nothing is removed (exit 1)
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    status, _, err = run_main(capsys, "failed", "remove", job.id)
    assert status == 1 and "remove 1 failed job(s) for good? [y/N]" in err and "nothing was changed" in err
    assert listed(redis_url, queue) == {job.id}
    # When they answer y, it is
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    status, out, _ = run_main(capsys, "failed", "remove", job.id)
    assert status == 0 and f"removed {job.id}" in out
    assert listed(redis_url, queue) == set()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("failed", "list", "--limit", "-1"), "--limit: must be >= 0, got -1"),
        (("failed", "list", "--offset", "x"), "--offset: 'x' is not a whole number"),
        (("dead", "list", "--limit", "-5"), "--limit: must be >= 0"),
        (("failed", "purge", "--older-than", "7"), "'7' is not a duration"),
        (("failed", "purge", "--older-than=-1d"), "--older-than: '-1d' is not a duration"),
        (("failed", "frobnicate"), "invalid choice"),
        ((), "required"),
    ],
)
def test_bad_arguments_are_one_error_line_and_exit_2(capsys, argv, says):
    status, out, err = run_main(capsys, *argv)
    assert status == 2 and out == ""
    assert_one_error_line(err)
    assert says in err


def test_durations_take_one_unit():
    assert [cli_module.parse_duration(t) for t in ("90s", "30m", "12h", "7d", "2w", "1.5h")] == [
        90,
        1800,
        43200,
        604800,
        1209600,
        5400,
    ]
    for bad in ("", "7", "d", "7 days", "7dd", "-1s", "1e3s"):
        with pytest.raises(ValueError, match="is not a duration: give a number and a unit"):
            cli_module.parse_duration(bad)


def test_unknown_ids_and_redis_down_are_one_error_line_and_exit_1(redis_url, queue, capsys, monkeypatch):
    monkeypatch.setenv("EARNEVENTS_MONGO_URI", "")
    # An unknown id
    status, _, err = run_main(capsys, "--redis-uri", redis_url, "failed", "show", "nope")
    assert status == 1
    assert_one_error_line(err)
    assert "'nope'" in err
    # Redis down, whatever the command
    down = f"redis://127.0.0.1:{free_port()}/0"
    for argv in (
        ("failed", "list"),
        ("dead", "list"),
        ("failed", "purge", "--yes"),
        ("failed", "remove", "0" * 32, "-y"),
    ):
        status, _, err = run_main(capsys, "--redis-uri", down, *argv)
        assert status == 1, err
        assert_one_error_line(err)
        assert err.startswith("error: Redis: ConnectionError")


def test_mongo_down_is_one_error_line_and_exit_1(redis_url, capsys, monkeypatch):
    monkeypatch.setattr(connections, "MONGO_SERVER_SELECTION_MS", 300)
    down = f"mongodb://127.0.0.1:{free_port()}"
    status, _, err = run_main(capsys, "--redis-uri", redis_url, "--mongo-uri", down, "failed", "list")
    assert status == 1, err
    assert_one_error_line(err)
    assert err.startswith("error: MongoDB: ServerSelectionTimeoutError")


async def test_listed_errors_cannot_forge_lines_or_drive_the_terminal(redis_url, queue, bus):
    hostile = "broke\nFAKE 1 failed job(s)\x1b[2J\x07"
    try:
        raise RuntimeError(hostile)
    except RuntimeError as exc:
        job = FailedJob.from_exception(Event("user.created", {}), "app.handlers.h", exc, 1, queue)
    await earnevents.runtime.current().failures.add(job)
    listed = cli(redis_url, queue, "failed", "list")
    assert listed.returncode == 0, listed.stderr
    out = listed.stdout
    lines = out.splitlines()
    assert len(lines) == 2 and not any(line.startswith("FAKE") for line in lines), out
    assert "\x1b" not in out and "\x07" not in out
    assert "broke\\nFAKE" in lines[1] and "\\x1b[2J" in lines[1]
