"""Clients through Redis Sentinel treat a write the primary refuses for want of replicas
(NOREPLICAS: an old primary after a failover, with min-replicas-to-write set) as a lost
connection, so the retry asks the sentinels for the primary again (earnevents.sentinelconn)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from conftest import failover_setup
from test_scheduler_wake import park, queued, redis_now

from earnevents import keys, redisurl
from earnevents.testing import RedisServer, SentinelServer, wait_for
from earnevents.worker.scheduler import Mover

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


def wake_subscribers(client: redis.Redis) -> int:
    """Subscribers of the delay scheduler's wake-up channel for queue "q" on that server."""
    return int(client.pubsub_numsub(keys.scheduled_wake_channel("q"))[0][1])


def test_the_delay_scheduler_follows_a_failover_at_once():
    # Given a primary, its replica, a sentinel, and a delay scheduler through the sentinel
    # that reads the schedule by itself only once a minute (only a wake-up explains a timely move)
    with failover_setup() as servers:
        mover = Mover(servers.sentinel.url, ["q"], 0.1, recheck=60.0)
        mover.start()
        try:
            wait_for(lambda: wake_subscribers(servers.old), 10, "the scheduler's subscription on the primary")
            # When the sentinel fails over to the replica
            servers.fail_over()
            # Then the scheduler listens on the new primary at once (it stayed on the old one,
            # which takes no more wake-ups, until its next read of the schedule)...
            wait_for(lambda: wake_subscribers(servers.new), 5, "the scheduler's subscription on the new primary")
            # ...and moves what comes due there on time
            park(servers.new, "m1", at=redis_now(servers.new) + 0.5)
            wait_for(lambda: queued(servers.new) == ["m1"], 5, "the message on the new primary's queue")
        finally:
            mover.stop()


def test_without_sentinel_nothing_is_watched(refusing):
    from earnevents.sentinelconn import FailoverWatch

    with RedisServer() as server:
        plain = redis.Redis.from_url(server.url)
        watch = FailoverWatch(plain)
        assert not watch.switched() and watch.socket() is None
        plain.close()
    through = redisurl.sync_client(refusing.url, socket_timeout=5)
    watch = FailoverWatch(through)
    assert not watch.switched() and watch.socket() is not None  # subscribed to a sentinel
    watch.close()
    through.close()
