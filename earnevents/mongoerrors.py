"""PyMongo's exception classes for ``except`` clauses and checks, without importing PyMongo.

PyMongo takes tens of milliseconds to import; workers and the CLI without a MongoDB never
need it. A process that has not imported ``pymongo.errors`` cannot have raised one of its
exceptions, so where it is not loaded the clauses match nothing. Look the classes up when
an exception is being handled (``except mongoerrors.base():``), never at import time:
PyMongo may be imported later (a MongoDB configured, a handler module using it).
"""

from __future__ import annotations

import sys
from types import ModuleType


class _NeverRaised(Exception):
    """Stands in for PyMongo's classes while PyMongo is not imported: nothing raises it."""


def loaded() -> ModuleType | None:
    """``pymongo.errors`` if this process imported it, else None."""
    return sys.modules.get("pymongo.errors")


def base() -> type[Exception]:
    """``pymongo.errors.PyMongoError``, or a class nothing raises while PyMongo is not imported."""
    errors = loaded()
    return errors.PyMongoError if errors is not None else _NeverRaised


def named(name: str) -> type[Exception]:
    """``pymongo.errors.<name>`` (DuplicateKeyError, ...), or a class nothing raises while PyMongo is not imported."""
    errors = loaded()
    return getattr(errors, name) if errors is not None else _NeverRaised
