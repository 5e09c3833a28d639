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
first use (``earnevents.BaseModel`` is looked up lazily). tests/test_startup.py checks which
libraries a worker and a publisher import.
"""

from __future__ import annotations

import importlib
from typing import Any


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
