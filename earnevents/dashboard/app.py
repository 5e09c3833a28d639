"""create_app(): the dashboard as a Starlette application.

Standalone (``earnevents dashboard``, or any ASGI server running the app's lifespan), the
app initializes earnevents from the EARNEVENTS_* environment at startup unless the process
has done so already, and closes at shutdown only what it opened. Mounted inside another
application (``Mount("/ops", app=create_app())``), it uses the host's ``earnevents.init()``:
a mounted app's lifespan is not run by Starlette, so the host must have called init (in its
own lifespan); until then pages answer 503 saying so.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import redis.exceptions as redis_errors
from pymongo.errors import PyMongoError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from .. import runtime
from ..errors import NotInitializedError
from . import bulks, pages
from .pages.auth import login_page
from .render import render
from .security import Guard

TOKEN_ENV = "EARNEVENTS_DASHBOARD_TOKEN"
STATIC = Path(__file__).parent / "static"


def create_app(*, read_only: bool = False, token: str | None = None) -> Starlette:
    """The dashboard app. ``token`` (None: $EARNEVENTS_DASHBOARD_TOKEN; "" or unset: none)
    is then required of every request (see :mod:`earnevents.dashboard.security`);
    ``read_only`` refuses every state-changing POST with 403 and renders no action buttons."""
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            runtime.current()
            opened = False
        except NotInitializedError:
            await runtime.init(autodiscover=())  # like the CLI: never imports the application
            opened = True
        try:
            yield
        finally:
            await bulks.stop_all(app)  # before closing what they use
            if opened:
                await runtime.close()

    return Starlette(
        routes=[*pages.routes(), Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static")],
        middleware=[Middleware(Guard, token=token, read_only=read_only, login_page=login_page)],
        exception_handlers={
            NotInitializedError: _not_initialized,
            redis_errors.RedisError: _unreachable,
            OSError: _unreachable,
            PyMongoError: _unreachable,
        },
        lifespan=lifespan,
    )


async def _not_initialized(request: Request, exc: Exception) -> Response:
    message = "earnevents is not initialized: call `await earnevents.init()` in the application's lifespan"
    return render(request, "error.html", {"message": message}, status=503)


async def _unreachable(request: Request, exc: Exception) -> Response:
    # The type only: a driver's message may quote its connection string.
    where = "MongoDB" if isinstance(exc, PyMongoError) else "Redis"
    message = f"{where} is unreachable or failed ({type(exc).__name__}); see the dashboard's log"
    return render(request, "error.html", {"message": message}, status=503)
