"""Every Redis URL form earnevents accepts, and the one place that turns it into clients.

- ``redis://[[user]:password@]host[:port][/db]``: plain TCP.
- ``rediss://...``: TLS, with the query options ``ssl_cert_reqs`` (``required``, the
  default, ``optional`` or ``none``), ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``
  and ``ssl_check_hostname``.
- ``unix:///path/to/redis.sock[?db=N]``: a Unix socket (``password=`` in the query too).
- ``sentinel://[[user]:password@]host:port[/db][;sentinel://host2:port2...]?master_name=NAME``:
  Redis Sentinel (several sentinels separated by ``;``, as kombu spells them); the
  password is the primary's.

Publishers (asyncio), the worker's background threads (blocking) and the Celery
broker (:func:`broker`) all go through here, so a URL means the same to each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from .errors import ConfigError
from .redact import redact_uri
from .sentinelconn import AsyncPrimaryConnection, PrimaryConnection

SCHEMES = ("redis", "rediss", "unix", "sentinel")

SSL_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
"""Query options of a ``rediss://`` URL that configure TLS (for the broker as for the clients)."""

CERT_REQS = ("none", "optional", "required")

UNIX_SOCKET_OPTION = "earnevents_unix_socket"
"""Broker transport option naming the Unix socket (kombu's URL has no room for it with our transport)."""

SENTINEL_PORT = 26379

TRANSPORTS = {
    "redis": "earnevents.worker.transport:Transport",
    "unix": "earnevents.worker.transport:UnixSocketTransport",
    "sentinel": "earnevents.worker.transport:SentinelTransport",
}
"""kombu transport (earnevents' reliable-fetch variants of kombu's redis transport) per URL kind."""


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL points at, parsed and checked."""

    scheme: str
    netloc: str = ""
    """``[user:password@]host:port`` of a redis/rediss URL (kept quoted, as given)."""
    db: int = 0
    path: str = ""
    """The socket of a ``unix://`` URL."""
    username: str | None = None
    password: str | None = None
    ssl: dict[str, Any] = field(default_factory=dict)
    """TLS options of a ``rediss://`` URL, ``ssl_cert_reqs`` always set."""
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""


def parse(url: str) -> RedisTarget:
    """Parse and check ``url``; ConfigError naming the problem (the URL shown masked: ``redact``)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        given = f"scheme {scheme!r}" if "://" in url else "no scheme"  # never any more of the URL: secrets
        raise ConfigError(f"redis_uri must be a redis://, rediss://, unix:// or sentinel:// URL, got {given}")
    if scheme == "sentinel":
        return _parse_sentinel(url)
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    db = _db(query.pop("db", "") or (parts.path.strip("/") if scheme != "unix" else "") or "0", url)
    try:
        parts.port  # noqa: B018  (parsing it is the check)
    except ValueError:
        raise ConfigError(f"redis_uri has an invalid port: {redact_uri(url)}") from None
    ssl: dict[str, Any] = {}
    if scheme == "rediss":
        reqs = query.get("ssl_cert_reqs", "required").lower()
        if reqs not in CERT_REQS:
            raise ConfigError(f"ssl_cert_reqs must be one of {', '.join(CERT_REQS)}, got {reqs!r}")
        ssl["ssl_cert_reqs"] = reqs
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if query.get(name):
                ssl[name] = query[name]
        if "ssl_check_hostname" in query:
            ssl["ssl_check_hostname"] = query["ssl_check_hostname"].lower() in ("1", "true", "yes", "on")
    if scheme == "unix" and not parts.path:
        raise ConfigError("a unix:// redis_uri needs the socket's path: unix:///path/to/redis.sock?db=0")
    return RedisTarget(
        scheme=scheme,
        netloc=parts.netloc,
        db=db,
        path=unquote(parts.path) if scheme == "unix" else "",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else query.get("password"),
        ssl=ssl,
    )


def _parse_sentinel(url: str) -> RedisTarget:
    sentinels: list[tuple[str, int]] = []
    query: dict[str, str] = {}
    db: int | None = None
    username = password = None
    for piece in url.split(";"):
        parts = urlsplit(piece.strip())
        if parts.scheme.lower() != "sentinel" or not parts.hostname:
            raise ConfigError("each sentinel must be written sentinel://host:port, separated by ';'")
        try:
            port = parts.port or SENTINEL_PORT
        except ValueError:
            raise ConfigError(f"a sentinel has an invalid port: {redact_uri(url)}") from None
        sentinels.append((parts.hostname, port))
        query.update(parse_qsl(parts.query))
        if parts.path.strip("/"):
            db = _db(parts.path.strip("/"), url)
        username = username or (unquote(parts.username) if parts.username else None)
        password = password or (unquote(parts.password) if parts.password else None)
    if any(name.startswith("ssl_") for name in query):
        raise ConfigError("TLS to Sentinel is not supported: use sentinel:// without ssl_* options")
    if "db" in query:
        db = _db(query["db"], url)
    master = query.get("master_name", "")
    if not master:
        raise ConfigError("a sentinel:// redis_uri needs ?master_name=NAME (the primary's name in Sentinel)")
    return RedisTarget(
        scheme="sentinel",
        db=db or 0,
        username=username,
        password=password or query.get("password"),
        sentinels=tuple(sentinels),
        master_name=master,
    )


def _db(raw: str, url: str) -> int:
    # The URL is shown masked, not ``raw``: a password with an unescaped "/" ends up in the path.
    try:
        db = int(raw)
    except ValueError:
        raise ConfigError(f"the Redis database must be a number (the path or ?db=): {redact_uri(url)}") from None
    if db < 0:
        raise ConfigError(f"the Redis database must be >= 0, got {db}")
    return db


def _credentials(target: RedisTarget) -> dict[str, Any]:
    return {"db": target.db, "username": target.username, "password": target.password}


SENTINEL_TIMEOUT = 5.0
"""Seconds one query to a sentinel may take (connect and reply) before the next is asked."""


def sentinel_kwargs(retry: Any) -> dict[str, Any]:
    """Options of the connections to the sentinels themselves.

    No retries: asking the next sentinel is the retry. (redis-py's default of three
    retries with backoff made a sentinel that is down cost ~4.5 s per connection.)
    """
    return {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT, "retry": retry}


MAX_CONNECTIONS = 2**31
"""Connections a client's pool may open: as many as its commands in flight need, as redis-py
did before version 8. redis-py 8 caps a pool at 100 and fails the next command at once
(``MaxConnectionsError``): a worker with ``-P threads -c 100``, whose handlers share the
process' clients with its claims and completion records, runs more commands at once than that."""


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client for ``url``; ``options`` are redis-py's (timeouts, retry...)."""
    options.setdefault("max_connections", MAX_CONNECTIONS)
    target = parse(url)
    if target.scheme == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels),
            sentinel_kwargs=sentinel_kwargs(Retry(NoBackoff(), 0)),
            **_credentials(target),
            **options,
        )
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            target.master_name, connection_class=PrimaryConnection
        )
        return client
    return redis.Redis.from_url(url, **_socket_options(target, options))


def async_client(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url``; ``options`` are redis-py's (timeouts, retry...)."""
    options.setdefault("max_connections", MAX_CONNECTIONS)
    target = parse(url)
    if target.scheme == "sentinel":
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels),
            sentinel_kwargs=sentinel_kwargs(AsyncRetry(NoBackoff(), 0)),
            **_credentials(target),
            **options,
        )
        client: aioredis.Redis = sentinel.master_for(target.master_name, connection_class=AsyncPrimaryConnection)
        return client
    return aioredis.Redis.from_url(url, **_socket_options(target, options))


def _socket_options(target: RedisTarget, options: dict[str, Any]) -> dict[str, Any]:
    if target.scheme == "unix":  # no TCP connect step or keepalive on a Unix socket
        return {k: v for k, v in options.items() if k not in ("socket_connect_timeout", "socket_keepalive")}
    if target.scheme == "rediss":  # the defaults parse() chose (ssl_cert_reqs) win over redis-py's
        return {**target.ssl, **options}
    return options


@dataclass(frozen=True)
class BrokerSettings:
    """What Celery/kombu need for a URL: broker_url, broker_use_ssl and transport options."""

    url: str
    transport: str
    use_ssl: dict[str, Any] | None = None
    transport_options: dict[str, Any] = field(default_factory=dict)


def broker(url: str) -> BrokerSettings:
    """The kombu spelling of ``url`` for earnevents' transport.

    kombu only switches to TLS for ``rediss://`` when its own transport is named by the
    URL (earnevents names its transport explicitly), so TLS goes in ``broker_use_ssl``;
    a Unix socket is given as a transport option; Sentinel takes kombu's
    ``sentinel://h:p;sentinel://h2:p2`` with ``master_name`` as a transport option.
    """
    target = parse(url)
    db = f"/{target.db}"
    if target.scheme == "sentinel":
        auth = _auth(target)
        hosts = ";".join(f"sentinel://{auth}{host}:{port}{db}" for host, port in target.sentinels)
        options = {"master_name": target.master_name, "sentinel_kwargs": sentinel_kwargs(Retry(NoBackoff(), 0))}
        return BrokerSettings(url=hosts, transport=TRANSPORTS["sentinel"], transport_options=options)
    if target.scheme == "unix":
        return BrokerSettings(
            url=f"redis://{_auth(target)}localhost{db}",
            transport=TRANSPORTS["unix"],
            transport_options={UNIX_SOCKET_OPTION: target.path},
        )
    return BrokerSettings(
        url=f"redis://{target.netloc}{db}", transport=TRANSPORTS["redis"], use_ssl=dict(target.ssl) or None
    )


def _auth(target: RedisTarget) -> str:
    if target.password is None and target.username is None:
        return ""
    user = quote(target.username or "", safe="")
    return f"{user}:{quote(target.password or '', safe='')}@"
