"""The dashboard's pages: one module each, registering its routes.

A page module defines ``routes``, a list of Starlette routes whose endpoints answer with
:func:`earnevents.dashboard.render.render`, each route named (``Route(..., name=...)``) so
templates link to it with ``url(name)``. A state-changing action is a ``methods=["POST"]``
route: the guard (:mod:`earnevents.dashboard.security`) has checked its CSRF token, origin
and read-only mode before the endpoint runs; the endpoint reads its fields with
``security.form(request)`` and answers with a 303 redirect (``RedirectResponse(url(...), 303)``).

To add a page: write ``pages/NAME.py`` with its ``routes`` (and templates in ``templates/``),
add the module to :data:`MODULES` and, to list it in the navigation, an entry to :data:`NAV`.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.routing import BaseRoute

from . import auth, events, failed, metrics, overview, scheduled, workflows


@dataclass(frozen=True)
class NavEntry:
    """A link of the layout's navigation: its text and the name of the route it opens."""

    title: str
    route: str


MODULES = (overview, failed, scheduled, events, workflows, metrics, auth)
"""The modules whose ``routes`` the app mounts, in this order."""

NAV = (
    NavEntry("Overview", "overview"),
    NavEntry("Failed jobs", "failed"),
    NavEntry("Scheduled", "scheduled"),
    NavEntry("Events", "events"),
    NavEntry("Workflows", "workflows"),
)
"""The navigation, in order."""


def routes() -> list[BaseRoute]:
    """Every page's routes."""
    return [route for module in MODULES for route in module.routes]
