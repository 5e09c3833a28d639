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
"""

from __future__ import annotations

from typing import Any

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
