"""Libraries only some features use, imported on their first use.

pydantic serves event schemas (``define_event(schema=...)``), models and workflow contexts;
importing it and building its model machinery is about 8 MiB per process and a good part
of a worker's start, paid three times by a prefork worker of two pool processes (issue 15).
A worker, or a publisher, that uses none of these features never imports it. A module that
calls such a library only inside its functions names it here, once, at the top::

    if TYPE_CHECKING:
        import pydantic
    else:
        pydantic = lazy.module("pydantic")

``pydantic.X`` then imports pydantic when first evaluated: in a function call, or in an
``except pydantic.ValidationError`` clause while an exception is handled (nothing but pydantic
raises it, so the import happens only where pydantic ran already). Classes that subclass a
library's class (``earnevents.models.BaseModel``) import it for real, in modules imported on
first use (``earnevents.BaseModel`` is looked up lazily). For ``isinstance`` checks,
:func:`loaded_class` needs no import at all (bson's ObjectId in the event codec).
tests/test_startup.py checks which libraries a worker and a publisher import.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


class _NeverInstance:
    """Stands in for a class of a module not imported yet: nothing is an instance of it."""


class _Module:
    """Stands in for a module until an attribute is read; then reads it from the imported module."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def module(name: str) -> Any:
    """A stand-in for the module ``name`` that imports it when one of its attributes is first read."""
    return _Module(name)


def loaded_class(module_name: str, name: str) -> type:
    """``module_name.name`` if this process imported that module, else a class nothing is an instance of.

    For ``isinstance`` checks (``isinstance(value, lazy.loaded_class("bson", "ObjectId"))``): while a
    module is not imported, no value can be an instance of its classes, so checking needs no import.
    Look the class up at each check, never at import time: the module may be imported later.
    """
    loaded = sys.modules.get(module_name)
    found = getattr(loaded, name, None) if loaded is not None else None
    return found if isinstance(found, type) else _NeverInstance
