"""``earnevents dashboard``: serve the dashboard with uvicorn, safely by default.

It binds to 127.0.0.1 unless told otherwise, and refuses (:class:`UnsafeBind`, exit status 2)
a host that is not a loopback address unless an access token is configured
(EARNEVENTS_DASHBOARD_TOKEN) or the dashboard is ``--read-only``.
"""

from __future__ import annotations

import ipaddress
import sys

from ..errors import ConfigError
from .app import TOKEN_ENV, create_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787


class UnsafeBind(ConfigError):
    """A non-loopback host was asked for without a token or --read-only."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or "localhost") only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def check_bind(host: str, token: str | None, read_only: bool) -> None:
    """UnsafeBind unless serving on ``host`` is safe with this token and mode."""
    if not is_loopback(host) and not token and not read_only:
        raise UnsafeBind(
            f"refusing to serve the dashboard on {host} (not a loopback address) without an access token: "
            f"set {TOKEN_ENV}, or pass --read-only, or bind to 127.0.0.1"
        )


def serve(host: str, port: int, token: str | None, read_only: bool, banner: str) -> int:
    """Run the dashboard until interrupted; 0 when it stopped cleanly, 1 when it could not start."""
    import uvicorn

    check_bind(host, token, read_only)
    config = uvicorn.Config(
        create_app(read_only=read_only, token=token or ""),
        host=host,
        port=port,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        log_level="info",
    )
    server = uvicorn.Server(config)
    print(banner, file=sys.stderr, flush=True)
    server.run()
    return 0 if server.started else 1
