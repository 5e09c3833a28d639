"""What a worker does at start, before it takes any message: import the handler
modules (EARNEVENTS_HANDLER_MODULES), autodiscover (EARNEVENTS_AUTODISCOVER), and in
strict mode (EARNEVENTS_STRICT) check that every handler subscribes to a defined event.

It runs in the worker's main process, from Celery's ``import_modules`` signal, whose
receivers' errors Celery raises: a module that fails to import, or a handler
subscribed to an undefined name in strict mode, stops the worker with that error.
Prefork pool processes are forked afterwards and inherit what was imported.

Before forking its first pool process, the main process freezes what it holds
(``gc.freeze``, :func:`freeze_before_first_fork`): Celery runs a full garbage collection
before each fork, which walked every object the imports made (tens of milliseconds per
process, more on a busy machine: most of earnevents' start over plain Celery's); frozen
objects are skipped, there and in the pool processes' own collections, which then leave
the memory pages they share with the main process unwritten (copy-on-write).
"""

from __future__ import annotations

import gc
import importlib
import os
from typing import Any

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


_frozen_in: int | None = None


def freeze_before_first_fork(**_: Any) -> None:
    """Freeze the objects the worker's main process holds, once, before its first fork.

    Celery's ``worker_before_create_process`` signal, sent before each pool process is
    forked. Only the first time in a process: what it holds then (modules, classes, the app)
    lives as long as it does; objects made later (messages, requests) stay collectable.
    """
    global _frozen_in
    if _frozen_in == os.getpid():
        return
    _frozen_in = os.getpid()
    gc.freeze()
