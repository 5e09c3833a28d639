"""Rendering a page: :func:`render` fills a template of ``templates/`` for a request.

The Jinja2 environment escapes everything it prints (``autoescape=True`` for every
template, whatever its name): event data, names and errors show as text. Templates get:

- ``url(name, **params)``: the path of a route of the dashboard by its name, with the
  mount's ``root_path`` in front (links work under ``Mount("/ops", app=create_app())``);
- ``static(file)``: the path of a file of ``static/``;
- ``csrf_token``: the hidden field's value every POST form carries
  (``<input type="hidden" name="csrf_token" value="{{ csrf_token }}">``);
- ``read_only``: whether action buttons must be left out; ``signed_in``: whether a token
  is configured (then the layout shows a logout button);
- ``nav``: the pages listed in the layout's navigation (``pages.NAV``), ``current``: the
  name of the page rendered (its nav entry is marked).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from . import security

TEMPLATES = Path(__file__).parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def url(request: Request, name: str, **params: Any) -> str:
    """The path of the dashboard's route ``name``, under the mount's root_path."""
    root: str = request.scope.get("root_path", "")
    return root + str(request.app.url_path_for(name, **params))


def render(
    request: Request, template: str, context: Mapping[str, Any] | None = None, *, current: str = "", status: int = 200
) -> HTMLResponse:
    """``template`` rendered with ``context`` and the names the module lists."""
    from .pages import NAV  # the pages import this module

    guard = security.guard(request)
    values = {
        "url": lambda name, **params: url(request, name, **params),
        "static": lambda file: url(request, "static", path=file),
        "csrf_token": security.csrf_token(request),
        "read_only": guard.read_only,
        "signed_in": guard.token is not None,
        "nav": NAV,
        "current": current,
        **(context or {}),
    }
    return HTMLResponse(_env.get_template(template).render(values), status_code=status)
