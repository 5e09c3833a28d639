"""What starting earnevents costs (issue 15, target 5: worker start to first event, and the
CLI's time per invocation): libraries a process does not use stay unimported, and a worker's
pool processes start from frozen objects (no full garbage collection over them at each fork).

Without a MongoDB configured, ``import earnevents``, the worker's app and the CLI's commands do
not import PyMongo; the CLI imports rich only to draw a table or a bar on a terminal; nothing
here imports the dashboard's Starlette, Jinja2 or uvicorn. Nor does a worker (issue 15, target 9:
its memory, three times over with two pool processes) carry what only some features use:
pydantic (event schemas, models, workflow contexts), bson (ObjectIds), tenacity (retries after
a failure), OpenTelemetry's propagators, the models and the workflows (MongoDB features).
Each check runs in a fresh interpreter (``python -c``) and reads its ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import token, wait_results

import earnevents
from earnevents import Event, event_bus, mongoerrors

NOT_AT_START = ("pymongo", "rich", "starlette", "jinja2", "uvicorn")

FEATURES = (
    "pydantic",
    "bson",
    "tenacity",
    "opentelemetry.propagate",
    "earnevents.models",
    "earnevents.workflows",
    "earnevents.worker.workflows",
    "earnevents.worker.occurrences",
)
"""What a worker (or publisher) without schemas, models, workflows nor MongoDB leaves unimported."""


def imported(code: str, modules: tuple[str, ...] = NOT_AT_START, **env: str) -> list[str]:
    """Which of ``modules`` a fresh interpreter imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "EARNEVENTS_MONGO_URI": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def cli_code(*commands: tuple[str, ...]) -> str:
    """Run the ``earnevents`` command once per ``commands`` entry (its output discarded), then go on."""
    return (
        "import contextlib, io, sys\n"
        "from earnevents.cli import main\n"
        f"for args in {[list(c) for c in commands]!r}:\n"
        "    sys.argv = ['earnevents', *args]\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            code = main()\n"
        "        except SystemExit as exc:\n"
        "            code = exc.code\n"
        "    assert code == 0, (args, code)"
    )


def test_importing_earnevents_and_the_worker_app_imports_no_pymongo_nor_the_dashboard():
    assert imported("import earnevents") == []
    assert imported("import earnevents; earnevents.app", EARNEVENTS_HANDLER_MODULES="") == []


def test_the_cli_without_mongodb_nor_a_terminal_imports_no_pymongo_rich_nor_the_dashboard(redis_url, queue):
    commands = [("--help",), ("failed", "list"), ("status",), ("scheduled", "list"), ("dead", "list")]
    assert imported(cli_code(*commands), EARNEVENTS_REDIS_URI=redis_url, EARNEVENTS_QUEUE=queue) == []


def test_pymongo_error_clauses_match_pymongo_errors_once_it_is_imported():
    from pymongo import errors

    assert mongoerrors.base() is errors.PyMongoError
    assert mongoerrors.named("DuplicateKeyError") is errors.DuplicateKeyError
    with pytest.raises(errors.AutoReconnect):  # not caught by the clause of another error
        try:
            raise errors.AutoReconnect("down")
        except mongoerrors.named("DuplicateKeyError"):
            pass
    try:
        raise errors.AutoReconnect("down")
    except mongoerrors.base() as exc:
        assert isinstance(exc, errors.AutoReconnect)


def test_a_worker_and_a_publisher_without_mongodb_import_none_of_the_feature_libraries():
    assert imported("import earnevents", FEATURES) == []
    assert imported("import earnevents; earnevents.app", FEATURES, EARNEVENTS_HANDLER_MODULES="") == []
    publish = "import earnevents\nfrom earnevents import Event, event\nevent.encode(Event('a.b', {'n': 1}).to_wire())"
    assert imported(publish, FEATURES) == []


def test_a_worker_with_mongodb_configured_loads_workflows_and_model_automations():
    code = (
        "import earnevents\n"
        "steps = {s.__name__ for s in earnevents.app.steps['worker']}\n"
        "assert {'OccurrencesStep', 'WorkflowRebuildStep'} <= steps, steps\n"
        "from earnevents.handlers import registry\n"
        "from earnevents import keys\n"
        "assert registry.get(keys.WORKFLOW_HANDLER) and registry.get(keys.OCCURRENCE_HANDLER)"
    )
    found = imported(code, FEATURES, EARNEVENTS_MONGO_URI="mongodb://127.0.0.1:9/", EARNEVENTS_HANDLER_MODULES="")
    assert {"earnevents.workflows", "earnevents.worker.workflows", "earnevents.worker.occurrences"} <= set(found)


def test_the_models_and_objectids_are_imported_on_first_use():
    # earnevents.BaseModel and friends bring pydantic when first looked up
    assert "pydantic" in imported("from earnevents import BaseModel, EventDefinition", FEATURES)
    # an event carrying an ObjectId decodes to one: bson is imported then
    code = (
        "from earnevents.event import TAG, decode\n"
        "value = decode({TAG: 'objectid', 'v': '65a1b2c3d4e5f60718293a4b'})\n"
        "assert type(value).__name__ == 'ObjectId' and str(value) == '65a1b2c3d4e5f60718293a4b'"
    )
    assert "bson" in imported(code, FEATURES)


@pytest.mark.worker
async def test_a_workers_pool_processes_start_from_frozen_objects_and_without_pymongo(
    start_worker, redis_url, queue, rclient
):
    start_worker("startup_handlers", concurrency=1)
    tok = token()
    await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue})
    try:
        await event_bus.publish(Event("startup.probe", {"token": tok, "modules": [*NOT_AT_START, *FEATURES]}))
    finally:
        await earnevents.close()
    (seen,) = wait_results(rclient, tok, 1)
    assert seen["frozen"] > 10_000  # the main process' modules, classes and app, frozen before the fork
    assert seen["imported"] == []
