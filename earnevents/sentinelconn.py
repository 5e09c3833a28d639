"""Connections to the primary Redis Sentinel names, which follow a failover on a refused write.

redis-py's Sentinel connections already follow a primary that was demoted: READONLY
disconnects them and becomes a ConnectionError, and the next connect asks the sentinels
for the primary again. But a failover promotes the replica first and demotes the old
primary only when a sentinel next checks it (up to ~10 s later); meanwhile the old primary
still accepts writes, and its demotion discards them. With ``min-replicas-to-write`` set
(see the README's Sentinel notes) the old primary refuses writes with NOREPLICAS as soon as
its replica has left it. These connections treat that refusal as redis-py treats READONLY,
so every earnevents path that retries a lost connection (publish, the worker's
bookkeeping, the consumer's reconnect) goes on against the new primary.

A NOREPLICAS from a primary that is still the primary (its replicas lag) reconnects to the
same server: a retried transient error, as it should be.

A subscription writes nothing, so no refusal tells it: :class:`FailoverWatch` listens to
the sentinels' own announcement of a new primary instead.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.exceptions import ConnectionError, ResponseError
from redis.sentinel import SentinelManagedConnection

REFUSED = "NOREPLICAS"
"""The error code of a write the primary refuses for want of good replicas (also from a script)."""


def _refused(exc: ResponseError) -> bool:
    return str(exc).startswith(REFUSED)


def _lost(exc: ResponseError) -> ConnectionError:
    return ConnectionError(f"the primary refused a write ({exc}); asking the sentinels for the primary again")


class PrimaryConnection(SentinelManagedConnection):
    """A blocking connection to the Sentinel-named primary (Celery's broker, worker threads)."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if not (_refused(exc) and self.connection_pool.is_master):
                raise
            self.disconnect()  # type: ignore[no-untyped-call]
            raise _lost(exc) from exc


class AsyncPrimaryConnection(AsyncSentinelManagedConnection):
    """An asyncio connection to the Sentinel-named primary (publishers)."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if not (_refused(exc) and self.connection_pool.is_master):
                raise
            await self.disconnect()
            raise _lost(exc) from exc


SWITCH_CHANNEL = "+switch-master"
"""What sentinels publish when a failover named a new primary: ``<name> <old ip> <old port> <new ip> <new port>``."""

WATCH_RETRY = 30.0
"""Seconds between tries to subscribe again when no sentinel answered (a try may wait out
each sentinel's connect timeout, and it holds up the delay scheduler meanwhile)."""


class FailoverWatch:
    """The sentinels' word that the primary of a (blocking) client changed.

    A subscription holds its connection and writes nothing, so nothing tells it that the
    primary it listens on was replaced: the delay scheduler would listen to the old primary
    for wake-ups published on the new one. This subscribes to one sentinel's
    :data:`SWITCH_CHANNEL` (the next sentinel if one is down); :meth:`switched` says when
    a failover of the client's primary was announced. For a client that does not go
    through Sentinel it watches nothing.
    """

    def __init__(self, client: Any) -> None:
        pool = client.connection_pool
        self._manager: Any = getattr(pool, "sentinel_manager", None)
        self._name = getattr(pool, "service_name", None)
        self._pubsub: Any = None
        self._retry_at = 0.0

    def socket(self) -> Any:
        """The subscription's socket (to wait on with select), or None."""
        return subscription_socket(self._pubsub)

    def switched(self) -> bool:
        """Whether a failover of the primary was announced since the last call; subscribes
        first (again, after a sentinel was lost), so call it before each use of the primary."""
        if self._manager is None:
            return False
        if self._pubsub is None and not self._subscribe():
            return False
        switched = False
        try:
            while (message := self._pubsub.get_message(timeout=0)) is not None:
                data = message.get("data")
                text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
                if message.get("type") in ("message", b"message") and text.split(" ")[0] == self._name:
                    switched = True
        except (redis.RedisError, OSError):  # that sentinel went away: the next call asks another
            self.close()
        return switched

    def _subscribe(self) -> bool:
        now = time.monotonic()
        if now < self._retry_at:
            return False
        for sentinel in self._manager.sentinels:
            pubsub = sentinel.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(SWITCH_CHANNEL)
            except (redis.RedisError, OSError):
                pubsub.close()
                continue
            self._pubsub = pubsub
            return True
        self._retry_at = now + WATCH_RETRY
        return False

    def close(self) -> None:
        close_quietly(self._pubsub)
        self._pubsub = None


def subscription_socket(pubsub: Any) -> Any:
    """The socket of a subscription's connection (None: no subscription, or not connected)."""
    connection = getattr(pubsub, "connection", None)
    return getattr(connection, "_sock", None)


def close_quietly(pubsub: Any) -> None:
    """Close a subscription (None: nothing) whose connection may be broken already."""
    if pubsub is None:
        return
    try:
        pubsub.close()
    except Exception:  # closing a broken connection: nothing to hand back
        pass
