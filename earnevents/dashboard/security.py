"""The dashboard's guard: access token, CSRF, read-only mode and security headers.

:class:`Guard` is a pure ASGI middleware wrapped around every route of the app. Per request:

- **Headers**: each response gets :data:`SECURITY_HEADERS` (a CSP without inline script,
  no framing, no sniffing, same-origin referrers) and ``Cache-Control: no-store``.
- **CSRF** (every POST, login included; here any method but GET and HEAD counts as a POST):
  the browser holds a random nonce in the HttpOnly, SameSite=Strict cookie :data:`CSRF_COOKIE`
  (set on the first response to a browser without it); forms carry ``csrf_token`` =
  HMAC-SHA256(per-app secret, nonce) as a hidden field (:func:`csrf_token`). A POST passes
  when its field matches its cookie's HMAC (``hmac.compare_digest``) and its ``Origin``
  (else ``Referer``) is this very origin. A POST whose ``Authorization: Bearer`` carries the
  access token is exempt: browsers never attach that header on their own.
- **Token** (when one is configured): a request passes with ``Authorization: Bearer TOKEN``
  or the session cookie :data:`SESSION_COOKIE` that ``POST /login`` sets (HttpOnly,
  SameSite=Strict; its value is an HMAC of the token, never the token). Otherwise the
  answer is 401 with the login form. ``/static/`` is served to anyone (the login page's CSS).
- **Read-only**: every POST other than login and logout is refused with 403.

Behind a proxy that terminates TLS, the app must see the scheme and host the browser used
(uvicorn's ``--proxy-headers`` and ``--forwarded-allow-ips``), or every POST fails the origin check.

The body of a POST is read here (at most :data:`MAX_FORM_BYTES`) and handed on unchanged;
:func:`form` parses it (``application/x-www-form-urlencoded``) for the endpoints.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSRF_COOKIE = "earnevents_csrf"
SESSION_COOKIE = "earnevents_session"
CSRF_FIELD = "csrf_token"
MAX_FORM_BYTES = 64 * 1024
"""The largest POST body the dashboard reads (413 beyond)."""

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

AUTH_PATHS = ("/login", "/logout")
"""Routes a POST may reach in read-only mode (they change no state of earnevents)."""

_SCOPE_NONCE = "earnevents.dashboard.csrf_nonce"
_SCOPE_FORM = "earnevents.dashboard.form"


class Guard:
    """The ASGI middleware described in the module; ``token`` None or "" means no token."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        read_only: bool,
        login_page: Callable[[Request, str | None], Awaitable[Any]],
    ) -> None:
        self.app = app
        self.token = token or None
        self.read_only = read_only
        self.login_page = login_page
        self.secret = secrets.token_bytes(32)

    # --- values derived from the per-app secret -------------------------------------

    def form_token(self, nonce: str) -> str:
        return hmac.new(self.secret, b"csrf:" + nonce.encode(), hashlib.sha256).hexdigest()

    def session_value(self) -> str:
        assert self.token is not None
        return hmac.new(self.secret, b"session:" + self.token.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    # --- the middleware ---------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = route_path(scope)
        cookies = request.cookies
        nonce = cookies.get(CSRF_COOKIE, "")
        new_nonce = None
        if len(nonce) != 43:  # secrets.token_urlsafe(32)
            nonce = new_nonce = secrets.token_urlsafe(32)
        scope[_SCOPE_NONCE] = nonce
        scope["earnevents.dashboard.guard"] = self
        send = self._with_headers(scope, send, new_nonce)
        bearer = _bearer(request.headers.get("authorization", ""))
        by_header = bearer is not None and self.token_matches(bearer)
        if scope["method"] not in ("GET", "HEAD"):
            body, too_big = await _read_body(receive)
            if too_big:
                await _plain(413, "request body too large", send)
                return
            scope[_SCOPE_FORM] = body
            receive = _replay(body, receive)
            if not by_header:
                refusal = self._csrf_refusal(request, cookies.get(CSRF_COOKIE, ""), body)
                if refusal is not None:
                    await _plain(403, refusal, send)
                    return
            if self.read_only and path not in AUTH_PATHS:
                await _plain(403, "the dashboard is read-only", send)
                return
        if self.token is not None and not path.startswith("/static/") and path not in AUTH_PATHS:
            session = cookies.get(SESSION_COOKIE, "")
            if not (by_header or hmac.compare_digest(session.encode(), self.session_value().encode())):
                response = await self.login_page(Request(scope, receive), None)
                response.status_code = 401
                response.headers["www-authenticate"] = 'Bearer realm="earnevents"'
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _csrf_refusal(self, request: Request, nonce: str, body: bytes) -> str | None:
        """Why this POST is refused, or None when its CSRF token and origin are good."""
        if not same_origin(request):
            return "cross-origin request refused (Origin/Referer is not this dashboard)"
        field = parse_qs(body.decode("latin-1")).get(CSRF_FIELD, [""])[0]
        if not nonce or not hmac.compare_digest(field.encode(), self.form_token(nonce).encode()):
            return "missing or wrong CSRF token: reload the page and try again"
        return None

    def _with_headers(self, scope: Scope, send: Send, new_nonce: str | None) -> Send:
        cookie = None
        if new_nonce is not None:
            cookie = cookie_header(scope, CSRF_COOKIE, new_nonce)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                if cookie is not None:
                    headers.append((b"set-cookie", cookie.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        return sending


def guard(request: Request) -> Guard:
    """The :class:`Guard` that let ``request`` through."""
    found: Guard = request.scope["earnevents.dashboard.guard"]
    return found


def csrf_token(request: Request) -> str:
    """The value of the hidden ``csrf_token`` field of a form rendered for ``request``."""
    return guard(request).form_token(request.scope[_SCOPE_NONCE])


def form(request: Request) -> dict[str, str]:
    """The POST's url-encoded form fields (the first value of each), as the guard read them."""
    body: bytes = request.scope.get(_SCOPE_FORM, b"")
    return {name: values[0] for name, values in parse_qs(body.decode("utf-8", "replace")).items()}


def route_path(scope: Scope) -> str:
    """The request's path inside the dashboard (without the mount's root_path)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def same_origin(request: Request) -> bool:
    """Whether the request's Origin (else Referer) is the origin it was sent to."""
    own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.lower() == own
    referer = request.headers.get("referer")
    if not referer:
        return False
    parts = urlsplit(referer)
    return f"{parts.scheme}://{parts.netloc}".lower() == own


def cookie_header(scope: Scope, name: str, value: str, max_age: int | None = None) -> str:
    """A Set-Cookie value: HttpOnly, SameSite=Strict, Path the dashboard's root, Secure over https."""
    cookie: SimpleCookie = SimpleCookie()
    cookie[name] = value
    morsel = cookie[name]
    morsel["path"] = scope.get("root_path", "") or "/"
    morsel["httponly"] = True
    morsel["samesite"] = "Strict"
    if scope.get("scheme") == "https":
        morsel["secure"] = True
    if max_age is not None:
        morsel["max-age"] = max_age
    return morsel.OutputString()


def _bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), False


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body read already, then waits on the connection's own."""
    sent = False

    async def replaying() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replaying


async def _plain(status: int, text: str, send: Send) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
