"""`earnevents status`, `earnevents publish`, and `earnevents failed` filters and --all (issue 14)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from test_cli import add_jobs, assert_one_error_line, listed, run_main

import earnevents
from earnevents import Event, FailedJob, keys
from earnevents import cli as cli_module
from earnevents.deadletters import ADD_SCRIPT, DeadItem, add_args
from earnevents.failures import selection
from earnevents.testing import free_port, wait_for

TESTS_DIR = Path(__file__).parent


def cli(
    redis_url: str, queue: str, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """The command as a subprocess, its stdin not a terminal (/dev/null)."""
    exe = Path(sys.executable).parent / "earnevents"
    full_env = {
        **os.environ,
        "EARNEVENTS_REDIS_URI": redis_url,
        "EARNEVENTS_QUEUE": queue,
        "EARNEVENTS_MONGO_URI": "",
        **env,
    }
    return subprocess.run(
        [str(exe), *args], env=full_env, cwd=cwd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def sent_event(raw: bytes) -> dict[str, object]:
    """The event (wire form) a queue message carries."""
    args, _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    return args[0]


def status(redis_url: str, queue: str) -> dict[str, object]:
    out = cli(redis_url, queue, "status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# --- publish ----------------------------------------------------------------------------


def test_publish_prints_the_id_and_sends_the_event_now_or_later(redis_url, queue, rclient):
    now = cli(redis_url, queue, "publish", "user.created", "--data", '{"n": 1}', "--sender", "ops")
    assert now.returncode == 0, now.stderr
    event_id = now.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", event_id)
    (message,) = rclient.lrange(queue, 0, -1)
    event = sent_event(message)
    assert (event["id"], event["name"], event["data"]) == (event_id, "user.created", {"n": 1})
    assert event["metadata"]["sender"] == "ops"

    later = cli(redis_url, queue, "publish", "user.created", "--delay", "1m")
    at = cli(redis_url, queue, "publish", "user.created", "--at", "2030-01-01T09:00:00+01:00")
    assert later.returncode == 0 and at.returncode == 0, later.stderr + at.stderr
    scheduled = cli(redis_url, queue, "scheduled", "list", "--json")
    due = {row["event_id"]: row["due_at"] for row in map(json.loads, scheduled.stdout.splitlines())}
    assert set(due) == {later.stdout.strip(), at.stdout.strip()}
    assert due[at.stdout.strip()] == "2030-01-01T08:00:00+00:00"
    assert rclient.llen(queue) == 1  # neither delayed one is on the queue


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--data", "{nope"], "not JSON"),
        (["--data", "[1]"], "JSON object"),
        (["--delay", "5", "--at", "2030-01-01T00:00:00Z"], "not allowed with"),
        (["--at", "2030-01-01T00:00:00"], "time zone"),
        (["--delay", "-3"], "seconds >= 0"),
    ],
)
def test_publish_bad_arguments_exit_2_and_send_nothing(redis_url, queue, rclient, args, says):
    out = cli(redis_url, queue, "publish", "user.created", *args)
    assert out.returncode == 2 and says in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
    assert rclient.llen(queue) == 0 and rclient.zcard(keys.scheduled_zset(queue)) == 0


def test_publish_validates_against_the_applications_schema(redis_url, queue, rclient, tmp_path):
    (tmp_path / "ops_events.py").write_text(
        "import pydantic\nfrom earnevents import define_event\n"
        "class Paid(pydantic.BaseModel):\n    amount: int\n"
        "define_event('order.paid', schema=Paid)\n"
    )
    env = {"EARNEVENTS_HANDLER_MODULES": "ops_events"}
    bad = cli(redis_url, queue, "publish", "order.paid", "--data", '{"amount": "lots"}', cwd=tmp_path, **env)
    assert bad.returncode == 2 and "amount" in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert rclient.llen(queue) == 0
    good = cli(redis_url, queue, "publish", "order.paid", "--data", '{"amount": "12"}', cwd=tmp_path, **env)
    assert good.returncode == 0, good.stderr
    assert sent_event(rclient.lindex(queue, 0))["data"] == {"amount": 12}  # sent as validated


# --- status -----------------------------------------------------------------------------


def test_status_counts_each_state_and_live_workers(redis_url, queue, rclient, start_worker):
    for _ in range(2):
        assert cli(redis_url, queue, "publish", "nobody.listens").returncode == 0
    assert cli(redis_url, queue, "publish", "user.created", "--delay", "1h").returncode == 0
    add_jobs(redis_url, queue, ("user.created", 1), ("user.created", 2), ("order.paid", 3))
    item = DeadItem("d" * 32, queue, "not a message", dt.datetime.now(dt.timezone.utc), 3, "abc", False)
    script_keys, argv = add_args(item, 100)
    rclient.eval(ADD_SCRIPT, len(script_keys), *script_keys, *argv)

    before = status(redis_url, queue)
    assert {k: before[k] for k in ("queue", "waiting", "in_flight", "scheduled", "failed", "dead", "workers")} == {
        "queue": queue,
        "waiting": 2,
        "in_flight": 0,
        "scheduled": 1,
        "failed": 3,
        "dead": 1,
        "workers": 0,
    }
    text = cli(redis_url, queue, "status")
    assert (
        f"queue {queue}: 2 waiting, 0 in flight, 1 scheduled, 3 failed, 1 dead-lettered; 0 live worker(s)"
        in text.stdout
    ), text.stdout

    # Given a worker holding one slow job
    start_worker(concurrency=1)
    token = "st" + queue
    assert cli(redis_url, queue, "publish", "t.slow", "--data", json.dumps({"token": token})).returncode == 0
    busy = wait_for(
        lambda: (s := status(redis_url, queue))["in_flight"] == 1 and s["waiting"] == 0 and s,
        30,
        "the slow job in flight",
    )
    assert busy["workers"] >= 1
    rclient.set(f"release:{token}", 1)
    wait_for(lambda: status(redis_url, queue)["in_flight"] == 0, 30, "the slow job done")


def test_status_watch_prints_again_until_interrupted(redis_url, queue):
    exe = Path(sys.executable).parent / "earnevents"
    env = {**os.environ, "EARNEVENTS_REDIS_URI": redis_url, "EARNEVENTS_QUEUE": queue, "EARNEVENTS_MONGO_URI": ""}
    proc = subprocess.Popen(
        [str(exe), "status", "--json", "--watch", "0.2"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert all(json.loads(line)["queue"] == queue for line in lines)
    finally:
        proc.send_signal(2)  # SIGINT, as Ctrl-C
        assert proc.wait(10) == 130


# --- failed: filters and --all ----------------------------------------------------------


def store_jobs(redis_url: str, queue: str, jobs: list[FailedJob], mongo_uri: str = "", database: str = "") -> None:
    async def add() -> None:
        env = await earnevents.init(
            redis_uri=redis_url, mongo_uri=mongo_uri, database=database or None, event_config={"queue_name": queue}
        )
        try:
            for job in jobs:
                await env.failures.add(job)
        finally:
            await earnevents.close()

    asyncio.run(add())


@pytest.fixture(params=["redis", "mongo"])
def store(request, redis_url, queue) -> dict[str, str]:
    """The failure store the CLI reads: Redis's, or MongoDB's (its own database)."""
    if request.param == "redis":
        return {}
    return {
        "EARNEVENTS_MONGO_URI": request.getfixturevalue("mongo_url"),
        "EARNEVENTS_DATABASE": request.getfixturevalue("mongo_db"),
    }


def test_list_filters_by_error_text_and_time_in_either_store(redis_url, queue, store):
    now = dt.datetime.now(dt.timezone.utc)
    specs = [
        ("a.x", 1, "ConnectionError: refused"),
        ("a.x", 3, "ValueError: bad"),
        ("b.y", 5, "ConnectionError: reset"),
    ]
    jobs = [FailedJob(Event(n, {}), "app.h", err, "tb", 1, queue, now - dt.timedelta(hours=h)) for n, h, err in specs]
    store_jobs(redis_url, queue, jobs, store.get("EARNEVENTS_MONGO_URI", ""), store.get("EARNEVENTS_DATABASE", ""))

    def ids(*args: str) -> list[str]:
        out = cli(redis_url, queue, "failed", "list", "--json", *args, **store)
        assert out.returncode == 0, out.stderr
        return [json.loads(line)["id"] for line in out.stdout.splitlines()]

    assert ids("--error", "ConnectionError") == [jobs[0].id, jobs[2].id]
    assert ids("--error", "ConnectionError", "--event", "b.y") == [jobs[2].id]
    assert ids("--since", "4h") == [jobs[0].id, jobs[1].id]
    assert ids("--until", "2h") == [jobs[1].id, jobs[2].id]
    assert ids("--since", "4h", "--until", "2h") == [jobs[1].id]
    iso = (now - dt.timedelta(hours=2)).replace(tzinfo=None).isoformat()  # no zone: UTC
    assert ids("--since", iso) == [jobs[0].id]
    assert ids("--error", "Error", "--limit", "1", "--offset", "1") == [jobs[1].id]
    text = cli(redis_url, queue, "failed", "list", "--error", "ValueError", **store)
    assert text.stdout.splitlines()[0] == "1 failed job(s) matching error containing 'ValueError'"
    removed = cli(redis_url, queue, "failed", "remove", "--all", "--error", "ConnectionError", "--yes", **store)
    assert removed.returncode == 0 and "removed 2 failed job(s)" in removed.stdout, removed.stderr
    assert ids() == [jobs[1].id]
    bad = cli(redis_url, queue, "failed", "list", "--since", "yesterday")
    assert bad.returncode == 2 and "ISO time" in bad.stderr
    backwards = cli(redis_url, queue, "failed", "list", "--since", "1h", "--until", "2h")
    assert backwards.returncode == 2 and "after until" in backwards.stderr


def test_retry_all_matching_asks_with_the_count_and_sends_each(redis_url, queue, rclient):
    jobs = add_jobs(redis_url, queue, ("a.x", 1), ("a.x", 3), ("b.y", 5))
    refused = cli(redis_url, queue, "failed", "retry", "--all", "--event", "a.x")
    assert refused.returncode == 2 and "retry 2 failed job(s)" in refused.stderr and "--yes" in refused.stderr
    assert listed(redis_url, queue) == {j.id for j in jobs}

    done = cli(redis_url, queue, "failed", "retry", "--all", "--event", "a.x", "--yes")
    assert done.returncode == 0, done.stderr
    assert "retried 2 failed job(s)" in done.stdout and "retry: 2/2" in done.stderr
    assert listed(redis_url, queue) == {jobs[2].id}
    assert rclient.llen(queue) == 2
    nothing = cli(redis_url, queue, "failed", "retry", "--all", "--event", "a.x", "--yes")
    assert nothing.returncode == 0 and "nothing to do" in nothing.stdout


def test_remove_all_goes_in_batches_with_progress(redis_url, queue, capsys, monkeypatch):
    jobs = add_jobs(redis_url, queue, ("a.x", 1), ("a.x", 2), ("a.x", 3), ("a.x", 4), ("a.x", 9))
    monkeypatch.setattr(cli_module, "BATCH", 2)
    monkeypatch.setattr(selection, "PAGE", 2)  # the walk over the store's pages too
    monkeypatch.setenv("EARNEVENTS_QUEUE", queue)
    status_, out, err = run_main(
        capsys, "--redis-uri", redis_url, "--mongo-uri", "", "failed", "remove", "--all", "--since", "5h", "--yes"
    )
    assert status_ == 0, err
    assert err.splitlines() == ["remove: 2/4", "remove: 4/4"]
    assert "removed 4 failed job(s)" in out
    assert listed(redis_url, queue) == {jobs[4].id}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["retry"], "give the JOB_IDs, or --all"),
        (["remove", "--all", "0" * 32], "not both"),
        (["retry", "0" * 32, "--error", "x"], "--error select jobs for --all only"),
    ],
)
def test_retry_and_remove_usage_errors_exit_2(redis_url, queue, args, says):
    out = cli(redis_url, queue, "failed", *args, "--yes")
    assert out.returncode == 2 and says in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr


# --- tables on a terminal -----------------------------------------------------------------


def terminal_env(redis_url: str, queue: str) -> dict[str, str]:
    return {
        **os.environ,
        "EARNEVENTS_REDIS_URI": redis_url,
        "EARNEVENTS_QUEUE": queue,
        "EARNEVENTS_MONGO_URI": "",
        "TERM": "xterm",
        "COLUMNS": "200",  # rich takes it over the pty's size (xdist workers may set it)
    }


def open_terminal() -> tuple[int, int]:
    """A pty, 50 lines of 200 columns: (the controller's end, the terminal's end)."""
    import fcntl
    import pty
    import struct
    import termios

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    return controller, terminal


def on_a_terminal(redis_url: str, queue: str, *args: str, stderr_too: bool = False) -> str:
    """What the command prints with its stdout (and with ``stderr_too`` its stderr) a terminal
    (a pty, 200 columns wide)."""
    exe = Path(sys.executable).parent / "earnevents"
    env = terminal_env(redis_url, queue)
    controller, terminal = open_terminal()
    try:
        proc = subprocess.run(
            [str(exe), *args],
            env=env,
            stdout=terminal,
            stderr=terminal if stderr_too else subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        os.close(terminal)
        terminal = -1
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the pty's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    assert proc.returncode == 0, proc.stderr
    return b"".join(chunks).decode()


def test_lists_and_status_are_tables_on_a_terminal_and_markup_stays_text(redis_url, queue):
    now = dt.datetime.now(dt.timezone.utc)
    job = FailedJob(Event("a.x", {}), "app.h", "[bold]boom[/bold] \x1b[31m", "tb", 2, queue, now)
    store_jobs(redis_url, queue, [job])
    shown = on_a_terminal(redis_url, queue, "failed", "list")
    assert "┏━" in shown and "failed at (UTC)" in shown, shown  # a rich table and its header
    assert job.id in shown and "[bold]boom[/bold]" in shown  # markup shown as text
    assert "\x1b[31m" not in shown and "\\x1b" in shown  # the control character escaped
    status_ = on_a_terminal(redis_url, queue, "status")
    assert "live workers" in status_ and queue in status_
    plain = cli(redis_url, queue, "failed", "list")  # not a terminal: the plain lines
    assert plain.stdout.splitlines()[0] == "1 failed job(s)" and "│" not in plain.stdout


def test_purge_takes_the_error_and_time_filters_too(redis_url, queue):
    now = dt.datetime.now(dt.timezone.utc)
    specs = [("ConnectionError: a", 1), ("ConnectionError: b", 10), ("ValueError: c", 10), ("ConnectionError: d", 30)]
    jobs = [FailedJob(Event("a.x", {}), "app.h", e, "tb", 1, queue, now - dt.timedelta(hours=h)) for e, h in specs]
    store_jobs(redis_url, queue, jobs)
    out = cli(redis_url, queue, "failed", "purge", "--error", "ConnectionError", "--older-than", "5h", "--since", "1d")
    assert out.returncode == 2 and "remove 1 failed job(s)" in out.stderr, out.stderr
    out = cli(
        redis_url,
        queue,
        "failed",
        "purge",
        "--error",
        "ConnectionError",
        "--older-than",
        "5h",
        "--since",
        "1d",
        "--yes",
    )
    assert out.returncode == 0 and "removed 1 failed job(s)" in out.stdout, out.stderr
    assert listed(redis_url, queue) == {jobs[0].id, jobs[2].id, jobs[3].id}


# --- on a terminal: the progress bar, status --watch in place ------------------------------

_SHOWN = re.compile(r"\x1b\[[?0-9;]*[A-Za-z]|\r|\n|[^\x1b\r\n]+")


def screen(output: str) -> list[str]:
    """The lines a terminal shows once ``output`` is written to it: text, CR, LF, cursor up
    (ESC[nA) and erase line (ESC[2K); colours (ESC[..m) and showing or hiding the cursor
    change nothing shown. Any other control sequence fails the test: it is not modelled."""
    lines = [""]
    row = col = 0
    for token in _SHOWN.findall(output):
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
            lines.extend("" for _ in range(row + 1 - len(lines)))
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token == "\x1b[2K":
                lines[row] = ""
            else:
                assert token.endswith("m") or token in ("\x1b[?25l", "\x1b[?25h"), repr(token)
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return lines


def test_bulk_progress_is_a_bar_on_a_terminal(redis_url, queue):
    *_, other = add_jobs(redis_url, queue, ("a.x", 1), ("a.x", 2), ("b.y", 3))
    shown = on_a_terminal(redis_url, queue, "failed", "retry", "--all", "--event", "a.x", "--yes", stderr_too=True)
    lines = screen(shown)
    bars = [line for line in lines if re.fullmatch(r"retry ━+ 2/2 \d+:\d\d:\d\d", line.rstrip())]
    assert len(bars) == 1, lines  # one bar, drawn complete, in place of the lines a log gets
    assert "retried 2 failed job(s)" in lines and not any("retry: " in line for line in lines), lines
    assert "\x1b[?25h" in shown[shown.rindex("━") :]  # the cursor shown again after the bar
    assert listed(redis_url, queue) == {other.id}


def test_status_watch_on_a_terminal_redraws_one_table_in_place_until_interrupted(redis_url, queue):
    import select

    exe = Path(sys.executable).parent / "earnevents"
    controller, terminal = open_terminal()
    proc = subprocess.Popen(
        [str(exe), "status", "--watch", "0.2"],
        env=terminal_env(redis_url, queue),
        stdout=terminal,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    os.close(terminal)
    output = b""

    def read(wait: float) -> bool:
        nonlocal output
        if select.select([controller], [], [], wait)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command ended and all it wrote is read
                return False
            output += chunk
            return bool(chunk)
        return False

    try:
        wait_for(lambda: read(0.1) and output.count(b"live workers") >= 3, 30, "three draws of the table")
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        returncode = proc.wait(10)
        while read(0.5):
            pass
        os.close(controller)
        assert proc.stderr is not None
        err = proc.stderr.read()
    text = output.decode()
    assert returncode == cli_module.INTERRUPTED == 130, err
    assert err.splitlines() == ["error: interrupted"]
    lines = screen(text)
    assert sum("live workers" in line for line in lines) == 1, lines  # redrawn over, not below
    assert sum("every 0.2s (Ctrl-C to stop)" in line for line in lines) == 1
    assert any(queue in line for line in lines)
    assert "\x1b[1A" in text and text.rindex("\x1b[?25h") > text.rindex("\x1b[?25l")  # cursor up; shown at the end


# --- dead remove --all, scheduled cancel --all ----------------------------------------------


def add_dead(rclient, queue: str, count: int) -> list[str]:
    """``count`` dead items on ``queue``: their ids."""
    ids = []
    for _ in range(count):
        item = DeadItem(uuid.uuid4().hex, queue, "not a message", dt.datetime.now(dt.timezone.utc), 3, "abc", False)
        script_keys, argv = add_args(item, 100)
        rclient.eval(ADD_SCRIPT, len(script_keys), *script_keys, *argv)
        ids.append(item.id)
    return ids


def schedule_events(redis_url: str, queue: str, *names: str) -> list[str]:
    """Events of these names published an hour ahead: their ids."""

    async def publish() -> list[str]:
        await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue})
        try:
            return [await earnevents.event_bus.publish(Event(name, {}), delay=3600) for name in names]
        finally:
            await earnevents.close()

    return asyncio.run(publish())


@pytest.fixture
def in_process(redis_url, queue, capsys, monkeypatch):
    """``earnevents ARGS`` in this process on this test's queue, stdin not a terminal, 2 items a batch."""
    monkeypatch.setenv("EARNEVENTS_QUEUE", queue)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    monkeypatch.setattr(cli_module, "BATCH", 2)

    def run(*args: str) -> tuple[int, str, str]:
        return run_main(capsys, "--redis-uri", redis_url, "--mongo-uri", "", *args)

    return run


def test_dead_remove_all_counts_asks_and_goes_in_batches(in_process, queue, rclient, monkeypatch):
    add_dead(rclient, queue, 3)
    status_, _, err = in_process("dead", "remove", "--all")
    assert status_ == 2 and "remove 3 dead item record(s) of queue" in err and "pass --yes" in err, err
    assert rclient.zcard(keys.dead_index(queue)) == 3

    # An id gone between the count and its turn (another operator removed it) is counted, not an error
    read = cli_module.dead_ids

    async def and_one_gone(client, queue_name):
        return [*await read(client, queue_name), uuid.uuid4().hex]

    monkeypatch.setattr(cli_module, "dead_ids", and_one_gone)
    status_, out, err = in_process("dead", "remove", "--all", "--yes")
    assert status_ == 0, err
    assert err.splitlines() == ["remove: 2/4", "remove: 4/4"]
    assert out.splitlines() == ["removed 3 dead item record(s); 1 were gone already (removed meanwhile)"]
    assert rclient.zcard(keys.dead_index(queue)) == 0 and rclient.hlen(keys.dead_items(queue)) == 0
    monkeypatch.setattr(cli_module, "dead_ids", read)
    status_, out, _ = in_process("dead", "remove", "--all")
    assert status_ == 0 and "nothing to do" in out


def test_scheduled_cancel_all_takes_an_event_name_asks_and_goes_in_batches(redis_url, queue, rclient, in_process):
    *_, other = schedule_events(redis_url, queue, "a.x", "a.x", "a.x", "b.y")
    status_, _, err = in_process("scheduled", "cancel", "--all", "--event", "a.x")
    assert status_ == 2 and "cancel 3 scheduled message(s)" in err and "event 'a.x'" in err, err
    assert rclient.zcard(keys.scheduled_zset(queue)) == 4

    status_, out, err = in_process("scheduled", "cancel", "--all", "--name", "a.x", "--yes")
    assert status_ == 0, err
    assert err.splitlines() == ["cancel: 2/3", "cancel: 3/3"] and out.splitlines() == [
        "cancelled 3 scheduled message(s)"
    ]
    assert rclient.zrange(keys.scheduled_zset(queue), 0, -1) == [other.encode()]
    status_, out, _ = in_process("scheduled", "cancel", "--all", "--yes")
    assert status_ == 0 and out.splitlines() == ["cancelled 1 scheduled message(s)"]
    assert rclient.zcard(keys.scheduled_zset(queue)) == 0 and rclient.hlen(keys.scheduled_payloads(queue)) == 0
    status_, out, _ = in_process("scheduled", "cancel", "--all", "--event", "a.x", "--yes")
    assert status_ == 0 and "nothing to do" in out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["dead", "remove"], "give the IDs, or --all"),
        (["dead", "remove", "--all", "0" * 32], "not both"),
        (["scheduled", "cancel"], "give the IDs, or --all"),
        (["scheduled", "cancel", "--all", "some-id"], "not both"),
        (["scheduled", "cancel", "some-id", "--event", "a.x"], "--event selects messages for --all only"),
    ],
)
def test_dead_and_scheduled_usage_errors_exit_2(in_process, args, says):
    status_, out, err = in_process(*args, "--yes")
    assert status_ == 2 and out == "" and says in err, err
    assert_one_error_line(err)


def test_an_interrupted_bulk_command_says_how_far_it_got_and_exits_130(in_process, queue, rclient, monkeypatch):
    add_dead(rclient, queue, 5)
    monkeypatch.setattr(cli_module, "CONCURRENCY", 1)  # one at a time: the 3rd is the last done
    remove = cli_module.event_bus.remove_dead_item
    calls = 0

    async def then_ctrl_c(item_id: str) -> None:
        nonlocal calls
        await remove(item_id)
        calls += 1
        if calls == 3:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(cli_module.event_bus, "remove_dead_item", then_ctrl_c)
    status_, out, err = in_process("dead", "remove", "--all", "--yes")
    assert status_ == cli_module.INTERRUPTED == 130
    assert out.splitlines() == ["interrupted: removed 3 of 5 dead item record(s)"]
    assert err.splitlines() == ["remove: 2/5", "error: interrupted"]
    assert rclient.zcard(keys.dead_index(queue)) == 2


def test_a_bulk_command_stopped_by_an_error_says_how_far_it_got_and_exits_1(in_process, queue, rclient, monkeypatch):
    add_dead(rclient, queue, 5)
    monkeypatch.setattr(cli_module, "CONCURRENCY", 1)
    remove = cli_module.event_bus.remove_dead_item
    calls = 0

    async def third_fails(item_id: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise redis.exceptions.ConnectionError("Redis went away")
        await remove(item_id)

    monkeypatch.setattr(cli_module.event_bus, "remove_dead_item", third_fails)
    status_, out, err = in_process("dead", "remove", "--all", "--yes")
    assert status_ == 1
    # the rest of the batch (the 4th) was done; the next batch was not started
    assert out.splitlines() == ["stopped by an error: removed 3 of 5 dead item record(s)"]
    assert err.splitlines()[:-1] == ["remove: 2/5", "remove: 3/5"] and "Redis went away" in err.splitlines()[-1]
    assert rclient.zcard(keys.dead_index(queue)) == 2


def test_ctrl_c_at_the_question_stops_at_once_with_130_and_changes_nothing(redis_url, queue, rclient):
    import select

    add_dead(rclient, queue, 2)
    exe = Path(sys.executable).parent / "earnevents"
    controller, terminal = open_terminal()
    proc = subprocess.Popen(
        [str(exe), "dead", "remove", "--all"],
        env=terminal_env(redis_url, queue),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""

    def read() -> bytes:
        nonlocal output
        if select.select([controller], [], [], 0.1)[0]:
            try:
                output += os.read(controller, 65536)
            except OSError:  # EIO: the command ended
                pass
        return output

    try:
        wait_for(lambda: b"[y/N]" in read(), 30, "the question")
        proc.send_signal(signal.SIGINT)  # once: the answer's read must not swallow it
        returncode = proc.wait(10)
    finally:
        proc.kill()
        proc.wait()
        read()
        os.close(controller)
    assert returncode == cli_module.INTERRUPTED, output
    assert screen(output.decode())[-2:] == ["error: interrupted", ""] and b"Traceback" not in output, output
    assert rclient.zcard(keys.dead_index(queue)) == 2


@pytest.mark.parametrize("args", [("failed", "list", "--json"), ("status", "--json")])
def test_a_reader_gone_from_stdout_is_exit_1_and_nothing_said(redis_url, queue, args):
    add_jobs(redis_url, queue, ("a.x", 1))
    exe = Path(sys.executable).parent / "earnevents"
    env = {**os.environ, "EARNEVENTS_REDIS_URI": redis_url, "EARNEVENTS_QUEUE": queue, "EARNEVENTS_MONGO_URI": ""}
    reader, writer = os.pipe()
    os.close(reader)  # as `| head -0` does: gone before the first line
    try:
        out = subprocess.run(
            [str(exe), *args], env=env, stdout=writer, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60
        )
    finally:
        os.close(writer)
    assert (out.returncode, out.stderr) == (cli_module.FAILURE, b"")  # not "error: Redis: BrokenPipeError"


# --- exit statuses ----------------------------------------------------------------------------


def test_the_exit_statuses_help_documents_are_what_commands_return(redis_url, queue, rclient, in_process, monkeypatch):
    status_, out, _ = in_process("--help")
    table = out[out.index("exit status:") :]
    documented = {int(code) for code in re.findall(r"^  (\d+) ", table, re.MULTILINE)}
    assert status_ == 0 and documented == {0, cli_module.FAILURE, cli_module.USAGE, cli_module.INTERRUPTED}
    assert (cli_module.FAILURE, cli_module.USAGE, cli_module.INTERRUPTED) == (1, 2, 130)
    [dead] = add_dead(rclient, queue, 1)

    # 0: done, nothing to do
    assert in_process("failed", "list")[0] == 0
    assert in_process("scheduled", "cancel", "--all", "--yes")[0] == 0
    # 1: an id not found (the others still handled), a confirmation declined, Redis unreachable
    status_, out, _ = in_process("dead", "remove", uuid.uuid4().hex, dead, "--yes")
    assert status_ == 1 and out.splitlines() == [f"removed {dead}"]
    [dead] = add_dead(rclient, queue, 1)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert in_process("dead", "remove", "--all")[0] == 1
    assert rclient.zcard(keys.dead_index(queue)) == 1
    assert run_main_down(in_process) == 1
    # 2: bad arguments, bad settings, without --yes while stdin is not a terminal
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert in_process("failed", "list", "--limit", "-1")[0] == 2
    assert in_process("--redis-uri", "not-a-url", "failed", "list")[0] == 2
    assert in_process("dead", "remove", "--all")[0] == 2
    assert rclient.zcard(keys.dead_index(queue)) == 1
    # 130: interrupted -- test_status_watch_on_a_terminal_... and test_an_interrupted_bulk_command_...


def run_main_down(in_process) -> int:
    """``failed list`` against a port where no Redis listens: the exit status."""
    return in_process("--redis-uri", f"redis://127.0.0.1:{free_port()}/0", "failed", "list")[0]
