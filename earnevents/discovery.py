"""Autodiscovery: import each app's ``events``, ``handlers`` and ``receivers`` modules.

``EARNEVENTS_AUTODISCOVER=myapp,billing`` (or ``init(autodiscover=[...])``, or
``earnevents.autodiscover([...])`` by hand) names packages; for each, and for
each of its direct subpackages (Django-style apps: ``myapp.orders``), the
submodules named in :data:`SUBMODULES` are imported where they exist, in that
order, so definitions come before the handlers that use them.

A submodule that does not exist is skipped. One that exists and fails to import
raises its own error: a ``ModuleNotFoundError`` raised *inside* ``myapp.events``
(for a module it imports) is that module's failure, not a missing ``events``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Iterable

SUBMODULES = ("events", "handlers", "receivers")
"""The submodules autodiscovery imports from each package, in this order."""


def check_package_name(value: object, what: str = "autodiscover package") -> str:
    """``value`` if it is a dotted Python module name; TypeError/ValueError otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value or not all(part.isidentifier() for part in value.split(".")):
        raise ValueError(f"{what} {value!r} is not a module name: use dotted Python identifiers, e.g. 'myapp.billing'")
    return value


def autodiscover(packages: Iterable[str]) -> list[str]:
    """Import the ``events``, ``handlers`` and ``receivers`` submodules of each package
    in ``packages`` and of its direct subpackages; return the modules imported, in order.

    A listed package that cannot be imported raises (ModuleNotFoundError for a name that
    does not exist); so does a submodule that exists and fails to import. A listed plain
    module (not a package) is imported and has nothing to discover.
    """
    if isinstance(packages, str):
        raise TypeError("autodiscover takes a list of package names, e.g. ['myapp', 'billing']")
    imported: list[str] = []
    for package in packages:
        root = importlib.import_module(check_package_name(package))
        imported.extend(_discover(package))
        for sub in sorted(info.name for info in pkgutil.iter_modules(getattr(root, "__path__", ())) if info.ispkg):
            if sub in SUBMODULES:  # myapp/events/ is a submodule already imported, not an app
                continue
            importlib.import_module(f"{package}.{sub}")
            imported.extend(_discover(f"{package}.{sub}"))
    return imported


def _discover(package: str) -> list[str]:
    imported = []
    for sub in SUBMODULES:
        name = f"{package}.{sub}"
        if not _exists(name):
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:
            add_note = getattr(exc, "add_note", None)  # Python 3.11+: the traceback says which import failed
            if add_note is not None:
                add_note(f"(while autodiscovery imported {name})")
            raise
        imported.append(name)
    return imported


def _exists(name: str) -> bool:
    """Whether the module ``name`` exists (its parent package is imported already)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError as exc:  # the parent is a plain module, not a package
        if exc.name is not None and name.startswith(exc.name):
            return False
        raise
