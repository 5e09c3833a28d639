"""No credentials in what earnevents shows: errors, the CLI, repr(), failure records, worker config."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import traceback
import uuid
from typing import Any

import pytest

import earnevents
from earnevents import ConfigError, Event, FailedJob, PublishError, cli
from earnevents.config import Settings
from earnevents.testing import free_port

SECRET = "s3cr3t-Pw"


@pytest.mark.parametrize(
    ("redis_uri", "mongo_uri"),
    [
        ("redis://localhost/0", f"postgres://app:{SECRET}@db.example/app"),
        ("redis://localhost/0", f"mongo://app:{SECRET}@db.example/app"),
        (f"redis://:pa/{SECRET}@localhost:6379/0", ""),  # an unescaped "/" puts the password in the path
        (f"sentinel://:{SECRET}@s1:26379/0?master_name=m", f"mongodb:/app:{SECRET}@db.example/"),  # one "/" short
    ],
)
def test_a_config_error_for_a_bad_uri_does_not_show_its_password(redis_uri, mongo_uri):
    # When settings are resolved with a URI earnevents refuses
    with pytest.raises(ConfigError) as info:
        Settings.resolve(redis_uri=redis_uri, mongo_uri=mongo_uri, environ={})
    # Then the error does not contain the password
    assert SECRET not in str(info.value)


def test_the_repr_of_settings_masks_both_uris():
    # Given settings with passwords in both URIs
    settings = Settings.resolve(
        redis_uri=f"unix:///run/redis.sock?db=0&password={SECRET}",
        mongo_uri=f"mongodb://app:{SECRET}@db.example/?authSource=admin",
        environ={},
    )
    # When they are printed (a log line, a traceback, a debugger)
    shown = repr(settings)
    # Then the URIs are shown masked, the rest as it is
    assert SECRET not in shown
    assert "mongodb://app:***@db.example/?authSource=admin" in shown
    assert "unix:///run/redis.sock?db=0&password=***" in shown
    assert "queue_name='earnevents'" in shown


@pytest.mark.parametrize(
    "uri",
    [
        f"redis://:{SECRET}@127.0.0.1:{{port}}/0?password={SECRET}",
        f"unix:///nonexistent-dir/redis.sock?password={SECRET}",
    ],
)
async def test_a_publish_error_for_an_unreachable_redis_does_not_show_its_password(uri):
    # Given a Redis URL with a password that nothing listens on
    await earnevents.init(redis_uri=uri.format(port=free_port()), mongo_uri="", event_config={"publish_timeout": 0.3})
    try:
        # When a publish gives up
        with pytest.raises(PublishError) as info:
            await earnevents.event_bus.publish(Event("secret.test", {}))
    finally:
        await earnevents.close()
    # Then its message names where it tried, masked
    message = str(info.value)
    assert SECRET not in message
    assert ":***@127.0.0.1" in message or "password=***" in message


@pytest.mark.parametrize(
    "args",
    [
        ["--mongo-uri", f"postgres://app:{SECRET}@db.example/app", "failed", "list"],
        ["--redis-uri", f"redis://:pa/{SECRET}@127.0.0.1:6379/0", "failed", "list"],
        # Redis unreachable (a closed port), with a password in the userinfo and the query
        ["--redis-uri", f"redis://:{SECRET}@127.0.0.1:{{port}}/0?password={SECRET}", "failed", "list", "--limit", "1"],
    ],
)
def test_the_cli_does_not_show_a_password_when_it_fails(args, capsys, monkeypatch):
    # Given no EARNEVENTS_* settings but the command line's
    for name in [name for name in os.environ if name.startswith("EARNEVENTS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EARNEVENTS_PUBLISH_TIMEOUT", "0.3")
    # When the command fails
    args = [arg.format(port=free_port()) for arg in args]
    try:
        status: Any = cli.main(args)
        raised = ""
    except BaseException as exc:  # today some failures end in a traceback: it must not show the password either
        status = exc
        raised = "".join(traceback.format_exception(exc))
    out = capsys.readouterr()
    # Then it failed, and nothing it printed contains the password
    assert status != 0
    assert SECRET not in out.out + out.err + raised


def _handler_holding_a_secret(probe: object) -> None:
    api_token = "".join(["s3cr3t", "-local"])  # noqa: F841 (the local is the point)
    reached = probe  # noqa: F841
    raise RuntimeError("payment service refused the request")


class _ReprProbe:
    """A local whose repr() notes that it ran: capturing a frame's locals calls repr on each."""

    def __init__(self) -> None:
        self.shown = False

    def __repr__(self) -> str:
        self.shown = True
        return "<probe>"


def test_a_failure_record_keeps_the_traceback_without_local_variables():
    # Given a handler that fails while a local variable holds a secret
    probe = _ReprProbe()
    try:
        _handler_holding_a_secret(probe)
    except RuntimeError as exc:
        error = exc
    # When its failure is recorded
    job = FailedJob.from_exception(Event("pay", {}), "app.handlers.pay", error, 1, "q")
    # Then the record has the traceback (file, line, function) but no local variable
    assert "_handler_holding_a_secret" in job.traceback
    assert "RuntimeError: payment service refused the request" in job.traceback
    stored = str(job.to_doc())
    assert "s3cr3t-local" not in stored
    assert "api_token" not in job.traceback
    assert not probe.shown, "the traceback was formatted with the frames' locals"
    # (and the probe does notice a capture of locals)
    traceback.TracebackException.from_exception(error, capture_locals=True)
    assert probe.shown


@pytest.mark.worker
def test_no_broker_client_can_read_a_password_from_a_workers_configuration(
    start_worker, rclient, redis_url, mongo_url, queue
):
    # Given a Redis user with a password, and a worker whose Redis and MongoDB URIs carry passwords
    user = f"ee-{uuid.uuid4().hex[:8]}"
    rclient.execute_command("ACL", "SETUSER", user, "on", f">{SECRET}", "~*", "&*", "+@all")
    try:
        host_port = redis_url.split("://", 1)[1].split("/", 1)[0]
        env = {
            "EARNEVENTS_REDIS_URI": f"redis://{user}:{SECRET}@{host_port}/0",
            # A user the server does not know: the relay's MongoDB calls fail at once
            "EARNEVENTS_MONGO_URI": f"mongodb://app:{SECRET}@{mongo_url.split('://', 1)[1].rsplit('@', 1)[-1]}",
            "EARNEVENTS_QUEUE": queue,
        }
        worker = start_worker(env=env, concurrency=1)
        name = worker.args[worker.args.index("-n") + 1].replace("%h", socket.gethostname())
        celery = [sys.executable, "-m", "celery", "-A", "earnevents"]
        # When broker clients ask the worker for its configuration and statistics, and
        # `celery report` prints the app's configuration (run side by side: each is a Python start)
        commands = {
            "inspect conf": [*celery, "inspect", "conf", "-d", name, "-t", "10"],
            "inspect stats": [*celery, "inspect", "stats", "-d", name, "-t", "10"],
            "report": [*celery, "report"],
        }
        children = {
            what: subprocess.Popen(
                command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for what, command in commands.items()
        }
        shown = {what: child.communicate(timeout=60)[0] for what, child in children.items()}
    finally:
        rclient.execute_command("ACL", "DELUSER", user)
    # Then each answered (naming the broker's user) and none shows the password
    for what, output in shown.items():
        assert user in output, f"{what}:\n{output}"
        assert SECRET not in output, f"{what}:\n{output}"
    assert queue in shown["inspect conf"] and queue in shown["report"]
    assert f"redis://{user}:********@" in shown["inspect conf"]
    # Nor did the worker log it
    assert SECRET not in worker.log()
