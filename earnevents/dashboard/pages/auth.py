"""Signing in and out when the dashboard has an access token.

``POST /login`` with the right ``token`` sets the session cookie and redirects to the
overview; a wrong one answers 401 with the form again. ``POST /logout`` clears the cookie.
Both are CSRF-checked like every POST (see :mod:`earnevents.dashboard.security`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .. import security
from ..render import render, url


async def login_page(request: Request, error: str | None = None) -> Response:
    """The login form (the guard answers an unauthenticated request with it, status 401)."""
    return render(request, "login.html", {"error": error}, current="login")


async def login(request: Request) -> Response:
    guard = security.guard(request)
    if guard.token is None:
        return RedirectResponse(url(request, "overview"), status_code=303)
    if not guard.token_matches(security.form(request).get("token", "")):
        response = await login_page(request, "wrong token")
        response.status_code = 401
        return response
    response = RedirectResponse(url(request, "overview"), status_code=303)
    cookie = security.cookie_header(request.scope, security.SESSION_COOKIE, guard.session_value())
    response.headers.append("set-cookie", cookie)
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse(url(request, "overview"), status_code=303)
    response.headers.append("set-cookie", security.cookie_header(request.scope, security.SESSION_COOKIE, "", 0))
    return response


routes = [
    Route("/login", login_page, name="login_page", methods=["GET"]),
    Route("/login", login, name="login", methods=["POST"]),
    Route("/logout", logout, name="logout", methods=["POST"]),
]
