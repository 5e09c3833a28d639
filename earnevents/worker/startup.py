"""What a worker does at start, before it takes any message: import the handler
modules (EARNEVENTS_HANDLER_MODULES), autodiscover (EARNEVENTS_AUTODISCOVER), and in
strict mode (EARNEVENTS_STRICT) check that every handler subscribes to a defined event.

It runs in the worker's main process, from Celery's ``import_modules`` signal, whose
receivers' errors Celery raises: a module that fails to import, or a handler
subscribed to an undefined name in strict mode, stops the worker with that error.
Prefork pool processes are forked afterwards and inherit what was imported.
"""

from __future__ import annotations

import importlib

from ..config import Settings
from ..definitions import registry as definitions
from ..discovery import autodiscover


def prepare(settings: Settings) -> None:
    """Import the worker's handler modules and discovered modules; check strict mode."""
    for module in settings.handler_modules:
        importlib.import_module(module)
    autodiscover(settings.autodiscover)
    if settings.strict:
        definitions.check_subscriptions()
