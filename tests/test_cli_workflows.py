"""`earnevents workflows list|show|cancel|resume|signal`, run as operators run it (a
subprocess) against the real Redis and MongoDB stand-in (workflows: tests/workflow_ops_defs.py)."""

from __future__ import annotations

import json

import pytest
import workflow_ops_defs  # noqa: F401  (declares the workflows in this process too)
from model_fixtures import eventually, worker_env
from test_cli import assert_one_error_line
from test_cli_scheduled import run

from earnevents import keys
from earnevents.workflows import engine

pytest_plugins = ["model_fixtures"]
pytestmark = [pytest.mark.mongo]


@pytest.fixture
def cli_env(redis_url, mongo_url, mongo_db, queue):
    """The command's environment: this test's queue and database, the workflows module to import."""
    return {
        "EARNEVENTS_REDIS_URI": redis_url,
        "EARNEVENTS_QUEUE": queue,
        "EARNEVENTS_MONGO_URI": mongo_url,
        "EARNEVENTS_DATABASE": mongo_db,
        "EARNEVENTS_HANDLER_MODULES": "workflow_ops_defs",
        "EARNEVENTS_AUTODISCOVER": "",
    }


async def test_list_and_show(models_env, cli_env):
    # Given two runs of two workflows (no worker: they stay running), one with an error and odd text
    nap = await engine.start("ops_nap", seconds=1.0)
    other = await engine.start("ops_signalled")
    await models_env.db[keys.MONGO_WORKFLOW_RUNS].update_one(
        {"_id": other},
        {"$set": {"error": "bad\nline", "traceback": "Traceback\n  boom\x1b[31m", "history_count": 5}},
    )
    # When listed, newest first; filtered; as JSON; paged
    out = run(cli_env, "workflows", "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "2 run(s)"
    assert lines[1].startswith(other) and "ops_signalled  running  await_ready" in lines[1]
    assert "bad\\nline" in lines[1]  # escaped: one line per run
    assert lines[2].startswith(nap) and "ops_nap  running  nap" in lines[2]
    out = run(cli_env, "workflows", "list", "--workflow", "ops_nap", "--status", "running", "--json")
    assert out.returncode == 0, out.stderr
    [doc] = [json.loads(line) for line in out.stdout.splitlines()]
    assert doc["id"] == nap and doc["context"] == {"seconds": 1.0, "woke": False} and doc["status"] == "running"
    assert run(cli_env, "workflows", "list", "--status", "completed").stdout.splitlines() == ["0 run(s)"]
    assert run(cli_env, "workflows", "list", "--limit", "1", "--offset", "1").stdout.splitlines()[1].startswith(nap)
    # And shown: state, Context, error, traceback and history with times, all escaped
    out = run(cli_env, "workflows", "show", other)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"run        {other}" in text and "status     running" in text and "step       await_ready" in text
    assert 'context    {"note": null}' in text and "error      bad\\nline" in text
    assert "  boom\\x1b[31m" in text and "\x1b" not in text
    assert "history (4 older line(s) dropped)\n" in text and "  started  " in text
    out = run(cli_env, "workflows", "show", other, "--json")
    doc = json.loads(out.stdout)
    assert doc["id"] == other and doc["history"][0]["what"] == "started" and doc["history_dropped"] == 4
    assert doc["waiting_for"] is None and doc["wake_at"] is None and doc["attempts"] == 0
    # And an unknown run, a bad status, no MongoDB: one error line each, with their exit statuses
    out = run(cli_env, "workflows", "show", "nosuchrun")
    assert out.returncode == 1 and "nosuchrun" in out.stderr
    assert_one_error_line(out.stderr)
    out = run(cli_env, "workflows", "list", "--status", "sleepy")
    assert out.returncode == 2
    assert_one_error_line(out.stderr)
    out = run({**cli_env, "EARNEVENTS_MONGO_URI": ""}, "workflows", "list")
    assert out.returncode == 2 and "MongoDB" in out.stderr
    assert_one_error_line(out.stderr)


async def test_a_run_waiting_for_its_start_is_listed_and_shown_with_when_it_starts(models_env):
    import workflow_event_defs  # noqa: F401  (declares FeedbackRequest: 1.8 s after guest_checked_out)

    from earnevents import Event, cli
    from earnevents.worker import workflow_events

    # Given FeedbackRequest's run, created by the bridge (no worker: it keeps waiting for its start)
    await workflow_events.bridge(Event(name="guest_checked_out", data={"guest": "ada"}))
    [run] = await engine.find_runs(workflow="FeedbackRequest")
    starts = cli._time(run.wake_at)
    # Then its list line and its text say when it starts, and what it waits for
    assert cli._run_line(run).endswith(f"FeedbackRequest  waiting  ask  starts {starts}")
    text = cli._run_text(run)
    assert f"starts at  {starts}" in text and "status     waiting" in text
    assert 'waiting    {"kind": "start", "name": "guest_checked_out", "offset_minutes": 0.03, "then": "ask"}' in text


async def test_cancel_and_resume(models_env, cli_env):
    # Given a run (no worker: it stays running)
    run_id = await engine.start("ops_nap", seconds=1.0)
    # When cancelled without --yes and no terminal: refused, nothing changed
    out = run(cli_env, "workflows", "cancel", run_id)
    assert out.returncode == 2 and "--yes" in out.stderr
    assert_one_error_line(out.stderr)
    assert (await engine.get_run(run_id)).status == "running"
    # Then with --yes it is cancelled; a second cancel says there is nothing to cancel
    out = run(cli_env, "workflows", "cancel", run_id, "--yes")
    assert out.returncode == 0 and out.stdout.strip() == f"cancelled {run_id}", out.stderr
    assert (await engine.get_run(run_id)).status == "cancelled"
    out = run(cli_env, "workflows", "cancel", run_id, "--yes")
    assert out.returncode == 1 and "cancelled" in out.stderr
    assert_one_error_line(out.stderr)
    # And resume: refused without --yes, refused at a step the workflow has not (naming it), done at one it has
    assert run(cli_env, "workflows", "resume", run_id).returncode == 2
    out = run(cli_env, "workflows", "resume", run_id, "--at-step", "no_such_step", "--yes")
    assert out.returncode == 1 and "no_such_step" in out.stderr
    assert_one_error_line(out.stderr)
    out = run(cli_env, "workflows", "resume", run_id, "--at-step", "finish", "--yes")
    assert out.returncode == 0 and out.stdout.strip() == f"resumed {run_id} at step finish", out.stderr
    resumed = await engine.get_run(run_id)
    assert resumed.status == "running" and resumed.step == "finish"
    # A running run does not resume
    out = run(cli_env, "workflows", "resume", run_id, "--yes")
    assert out.returncode == 1 and "running" in out.stderr
    assert_one_error_line(out.stderr)


async def test_signal_wakes_a_waiting_run_with_its_payload(models_env, cli_env, start_worker, mongo_url, mongo_db):
    # Given a run waiting for ops:ready, moved on by a worker
    start_worker(modules="workflow_ops_defs", env=worker_env(mongo_url, mongo_db))
    run_id = await engine.start("ops_signalled")

    async def waiting():
        return (await engine.get_run(run_id)).status == "waiting"

    await eventually(waiting, 20, "the run to wait")
    # When a bad payload is given: refused, one line
    out = run(cli_env, "workflows", "signal", "ops:ready", "--payload", "[1]")
    assert out.returncode == 2 and "JSON object" in out.stderr
    assert_one_error_line(out.stderr)
    out = run(cli_env, "workflows", "signal", "ops:ready", "--payload", "{nope")
    assert out.returncode == 2
    assert_one_error_line(out.stderr)
    # Then the signal to another run wakes none, and the one to it wakes it with its payload
    out = run(cli_env, "workflows", "signal", "ops:ready", "--run", "someoneelse")
    assert out.returncode == 0 and out.stdout.strip() == "signal ops:ready woke 0 run(s)", out.stderr
    out = run(cli_env, "workflows", "signal", "ops:ready", "--payload", '{"note": "hi"}', "--run", run_id)
    assert out.returncode == 0 and out.stdout.strip() == "signal ops:ready woke 1 run(s)", out.stderr

    async def completed():
        found = await engine.get_run(run_id)
        return found if found.status == "completed" else None

    assert (await eventually(completed, 20, "the run to complete")).result == {"note": "hi"}


async def test_run_ids_and_payloads_an_operator_gets_wrong_are_one_error_line_each(models_env, cli_env):
    # A run id that names no run (empty, with a newline and a terminal escape in it): exit status 1, one line, escaped
    for command, bad in ((("show",), ""), (("cancel", "--yes"), "a\nb\x1b[31m"), (("resume", "--yes"), "$ne")):
        out = run(cli_env, "workflows", command[0], bad, *command[1:])
        assert out.returncode == 1 and "no workflow run" in out.stderr, (command, out.stderr)
        assert_one_error_line(out.stderr)
        assert "\x1b" not in out.stderr
    # A payload nested deeper than event data may: exit status 2, one line, nothing sent
    deep = "1"
    for _ in range(150):
        deep = '{"x": ' + deep + "}"
    out = run(cli_env, "workflows", "signal", "ops:ready", "--payload", deep)
    assert out.returncode == 2 and "levels deep" in out.stderr, out.stderr
    assert_one_error_line(out.stderr)
    assert await models_env.db[keys.MONGO_WORKFLOW_SIGNALS].count_documents({}) == 0
