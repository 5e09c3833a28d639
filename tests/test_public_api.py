"""The public API is explicit and complete (httpx-style)."""

from __future__ import annotations

import subprocess
import sys

import earnevents
import earnevents.events


def test_all_lists_every_public_name_and_nothing_missing():
    public = {name for name in vars(earnevents) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(earnevents, name)).__name__ == "module"}
    # looked up on first access (earnevents.__getattr__): the worker's app, the models
    lazy = {"app", "celery", "BaseModel", "EventDefinition", "dispatch_model_event"}
    assert set(earnevents.__all__) - lazy == public - modules - {"annotations", "TYPE_CHECKING", "Any"}


def test_every_name_in_all_resolves():
    for name in earnevents.__all__:
        assert getattr(earnevents, name) is not None


def test_seed_import_paths():
    assert {"Event", "event_handler", "model_event_handler"} <= set(earnevents.events.__all__)
    assert earnevents.events.Event is earnevents.Event


def test_errors_share_one_root_and_keep_builtin_meanings():
    assert issubclass(earnevents.PublishError, earnevents.EarnEventsError)
    assert issubclass(earnevents.JobNotFoundError, earnevents.EarnEventsError)
    assert issubclass(earnevents.JobNotFoundError, LookupError)
    assert issubclass(earnevents.ConfigError, ValueError)


def test_importing_earnevents_does_not_import_the_worker_or_celery():
    code = "import sys, earnevents; print('celery' in sys.modules, 'earnevents.worker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_app_and_celery_are_the_worker_app():
    from celery import Celery

    assert isinstance(earnevents.app, Celery)
    assert earnevents.celery is earnevents.app
