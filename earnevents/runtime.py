"""init() and close(): the process' settings, clients, failure store and event bus.

``init()`` resolves settings, creates (not connects) the clients and binds the
event bus; it needs neither Redis nor MongoDB to be up. Workers call it too, on
their per-process event loop, so handlers can publish events and use models.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import discovery
from .bus import EventBus, event_bus
from .config import EventConfig, Settings
from .connections import Connections
from .errors import ConfigError, NotInitializedError
from .eventlog import EventLogStore, RedisEventLog
from .failures import FailureStore, RedisFailureStore

if TYPE_CHECKING:  # pymongo is imported only where a MongoDB is used (a faster start without one)
    from pymongo.asynchronous.database import AsyncDatabase


class Environment:
    """What ``init()`` set up; models reach it as ``self._env``."""

    def __init__(self, settings: Settings, bus: EventBus) -> None:
        self.settings = settings
        self.connections = Connections(settings)
        if self.connections.has_mongo:  # the MongoDB stores import pymongo: only when one is configured
            from .eventlog.mongo_store import MongoEventLog
            from .failures.mongo_store import MongoFailureStore
        self.failures: FailureStore = (
            MongoFailureStore(
                self.connections.db,
                settings.queue_name,
                max_jobs=settings.failed_max,
                max_age=settings.failed_max_age,
            )
            if self.connections.has_mongo
            else RedisFailureStore(
                self.connections.redis,
                settings.queue_name,
                max_jobs=settings.failed_max,
                max_age=settings.failed_max_age,
            )
        )
        self.eventlog: EventLogStore = (
            MongoEventLog(self.connections.db, settings.queue_name, ttl=settings.event_log_ttl)
            if self.connections.has_mongo
            else RedisEventLog(self.connections.redis, settings.queue_name, ttl=settings.event_log_ttl)
        )
        self.event_bus = bus

    @property
    def db(self) -> AsyncDatabase[Any]:
        """The configured MongoDB database (needs a mongo_uri)."""
        return self.connections.db()

    @property
    def redis(self) -> Any:
        """The asyncio Redis client for the running loop."""
        return self.connections.redis()


_env: Environment | None = None


async def init(
    mongo_uri: str | None = None,
    database: str | None = None,
    redis_uri: str | None = None,
    event_config: Mapping[str, Any] | EventConfig | None = None,
    handler_modules: Iterable[str] = (),
    *,
    mongodb_uri: str | None = None,
    autodiscover: Iterable[str] | None = None,
) -> Environment:
    """Configure earnevents for this process and bind ``event_bus``.

    Each argument falls back to its EARNEVENTS_* variable, then to the default
    (see ``earnevents.config.DEFAULTS``). ``mongodb_uri`` is an alias of
    ``mongo_uri``. ``handler_modules`` are imported now, so their handlers are
    registered in this process. ``autodiscover`` (default: EARNEVENTS_AUTODISCOVER)
    names packages whose ``events``, ``handlers`` and ``receivers`` submodules are
    imported now (see :mod:`earnevents.discovery`), so that definitions are known
    here (strict mode, schemas). Calling init again replaces the configuration.
    """
    global _env
    if mongo_uri is not None and mongodb_uri is not None and mongo_uri != mongodb_uri:
        raise ConfigError("pass mongo_uri or mongodb_uri, not two different values")
    settings = Settings.resolve(
        redis_uri=redis_uri,
        mongo_uri=mongo_uri if mongo_uri is not None else mongodb_uri,
        database=database,
        event_config=event_config,
        handler_modules=list(handler_modules),
        autodiscover=autodiscover,
    )
    for module in settings.handler_modules:
        importlib.import_module(module)
    discovery.autodiscover(settings.autodiscover)
    if _env is not None:
        await close()
    env = Environment(settings, event_bus)
    event_bus.bind(settings, env.connections, env.failures, env.eventlog)
    _env = env
    return env


async def close() -> None:
    """Release the clients and unbind the event bus; ``init()`` may be called again."""
    global _env
    env, _env = _env, None
    await event_bus.flush_event_log()
    event_bus.unbind()
    if env is not None:
        await env.connections.aclose()


def current() -> Environment:
    """The environment ``init()`` created; NotInitializedError before that."""
    if _env is None:
        raise NotInitializedError("earnevents is not initialized: call `await earnevents.init(...)` first")
    return _env
