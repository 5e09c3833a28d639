"""The web dashboard (issue 14): ``earnevents dashboard`` serves it, :func:`create_app` gives
it to mount inside an ASGI application (``Mount("/ops", app=create_app())``).

Layout: :mod:`.app` builds the Starlette app; :mod:`.security` guards it (token, CSRF,
read-only, headers); :mod:`.render` fills the Jinja2 templates of ``templates/``;
:mod:`.pages` holds one module per page, each registering its routes.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
