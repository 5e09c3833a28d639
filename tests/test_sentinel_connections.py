"""Clients through Redis Sentinel treat a write the primary refuses for want of replicas
(NOREPLICAS: an old primary after a failover, with min-replicas-to-write set) as a lost
connection, so the retry asks the sentinels for the primary again (earnevents.sentinelconn)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from earnevents import redisurl
from earnevents.testing import RedisServer, SentinelServer

pytestmark = pytest.mark.timeout(60)

SCRIPT = "return redis.call('SET', KEYS[1], ARGV[1])"


@pytest.fixture(scope="module")
def refusing() -> Iterator[SentinelServer]:
    """A sentinel naming a primary that has no replica and needs one to accept writes."""
    with RedisServer() as primary, SentinelServer(primary) as sentinel:
        direct = redis.Redis(port=primary.port)
        direct.lpush("a-list", "x")
        direct.config_set("min-replicas-to-write", 1)
        direct.close()
        yield sentinel


def test_a_refused_write_is_a_lost_connection_and_the_connection_is_dropped(refusing):
    client = redisurl.sync_client(refusing.url, socket_timeout=5)
    try:
        for write in (
            lambda: client.set("k", "v"),
            lambda: client.eval(SCRIPT, 1, "k", "v"),  # refused inside a script: same code
            lambda: client.pipeline(transaction=True).set("k", "v").incr("n").execute(),
            lambda: client.blmove("q", "p", 0.1),
        ):
            with pytest.raises(redis.ConnectionError, match="NOREPLICAS"):
                write()
            assert all(c._sock is None for c in client.connection_pool._available_connections)
        # Reads still work, and other errors stay what they are
        assert client.lrange("a-list", 0, -1) == [b"x"]
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            client.get("a-list")
    finally:
        client.close()


async def test_asyncio_clients_do_the_same(refusing):
    client = redisurl.async_client(refusing.url, socket_timeout=5)
    try:
        with pytest.raises(redis.ConnectionError, match="NOREPLICAS"):
            await client.lpush("k", "v")
        with pytest.raises(redis.ConnectionError, match="NOREPLICAS"):
            await client.eval(SCRIPT, 1, "k", "v")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await client.get("a-list")
    finally:
        await client.aclose()


def test_the_worker_transport_uses_them():
    from earnevents.sentinelconn import PrimaryConnection
    from earnevents.worker.transport import SentinelChannel

    assert issubclass(SentinelChannel.connection_class, PrimaryConnection)
