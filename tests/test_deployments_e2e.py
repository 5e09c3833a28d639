"""Workers and publishers over every kind of Redis deployment: TLS, a Unix socket, Sentinel.

Each runs against a private redis-server started for it (a self-signed certificate made
at test time, a socket in a temp dir, a sentinel watching a primary) and a real
``celery -A earnevents worker`` subprocess.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from conftest import failover_setup, token

import earnevents
from earnevents import Event, event_bus, redisurl
from earnevents.testing import RedisServer, SentinelServer, free_port, redis_tls_unsupported, wait_for

pytestmark = pytest.mark.worker

FAST = {"max_retries": 1, "interval_start": 0.2}


@pytest.fixture(scope="module")
def tls_support() -> None:
    """Skips, saying why, where the redis-server binary cannot serve TLS (.ci/run installs one that can)."""
    reason = redis_tls_unsupported()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def tls_server(tls_support: None) -> Iterator[RedisServer]:
    with RedisServer(tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def tls_url(tls_server: RedisServer) -> str:
    return tls_server.url


@pytest.fixture
def tls_plain_url(tls_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """``rediss://host:port/0`` with no query: the CA is trusted system-wide (SSL_CERT_FILE
    stands for the system store here), as with a managed Redis behind a public CA."""
    assert tls_server.ca_file is not None
    monkeypatch.setenv("SSL_CERT_FILE", tls_server.ca_file)  # this process and the workers it starts
    return tls_server.url.partition("?")[0]


@pytest.fixture(scope="module")
def tls_client_cert_url(tls_support: None) -> Iterator[str]:
    """TLS where the server also checks the client's certificate (ssl_certfile, ssl_keyfile)."""
    with RedisServer(tls_client_certs=True) as server:
        yield server.url


@pytest.fixture(scope="module")
def unix_url() -> Iterator[str]:
    with RedisServer(unixsocket=True) as server:
        assert server.url.endswith("?db=0")
        yield server.url[: -len("0")] + "1"  # not the default database: it must be honoured everywhere


@pytest.fixture(scope="module")
def sentinel_url() -> Iterator[str]:
    with RedisServer() as primary, SentinelServer(primary) as sentinel:
        yield sentinel.url


@pytest.fixture(scope="module")
def sentinels_url(sentinel_url: str) -> str:
    """Two sentinels separated by ';', the first one down: clients go on to the next."""
    return f"sentinel://127.0.0.1:{free_port()}/0;{sentinel_url}"


@pytest.fixture(params=["tls", "tls_plain", "tls_client_cert", "unix", "sentinel", "sentinels"])
def deployment_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
async def deployed_bus(deployment_url: str, queue: str) -> AsyncIterator[earnevents.EventBus]:
    await earnevents.init(
        redis_uri=deployment_url, mongo_uri="", event_config={"queue_name": queue, "retry_policy": FAST}
    )
    yield event_bus
    await earnevents.close()


@pytest.fixture
def client(deployment_url: str) -> Iterator[redis.Redis]:
    sync = redisurl.sync_client(deployment_url, socket_timeout=5)
    yield sync
    sync.close()


def records(client: redis.Redis, tok: str, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        got = [json.loads(raw) for raw in client.lrange(f"results:{tok}", 0, -1)]
        return got if len(got) >= count else None

    return wait_for(check, timeout, f"{count} handler record(s) for {tok}")


async def test_events_published_from_asyncio_are_handled_by_the_worker(
    deployed_bus, deployment_url, start_worker, client
):
    # Given a worker configured with the same URL as the publisher
    start_worker(env={"EARNEVENTS_REDIS_URI": deployment_url})
    tok = token()
    # When three events are published from asyncio
    for i in range(3):
        await deployed_bus.publish(Event("t.record", {"token": tok, "i": i}))
    # Then each of the two handlers ran for each event
    recs = records(client, tok, 6)
    assert sorted((r["handler"], r["repr"]["i"]) for r in recs) == sorted(
        (h, repr(i)) for h in ("record_async", "record_sync") for i in range(3)
    )


async def test_a_sentinel_that_is_down_costs_no_retries(sentinels_url):
    # Given a URL whose first sentinel is down
    started = time.monotonic()
    # When a blocking and an asyncio client reach the primary through it
    sync = redisurl.sync_client(sentinels_url, socket_timeout=5)
    try:
        assert sync.ping()
    finally:
        sync.close()
    aclient = redisurl.async_client(sentinels_url, socket_timeout=5)
    try:
        assert await aclient.ping()
    finally:
        await aclient.aclose()
    # Then the dead sentinel was skipped at once (redis-py's default retries took ~4.5 s each)
    assert time.monotonic() - started < 2


async def test_over_tls_a_delayed_event_runs_after_its_delay(tls_url, queue, start_worker):
    # Given a worker over TLS
    await earnevents.init(redis_uri=tls_url, mongo_uri="", event_config={"queue_name": queue})
    client = redisurl.sync_client(tls_url)
    try:
        start_worker(env={"EARNEVENTS_REDIS_URI": tls_url})
        tok = token()
        t0 = time.time()
        # When an event is published with a delay of one second
        await event_bus.publish(Event("t.record", {"token": tok}), delay=1)
        # Then its handlers run once the delay has passed
        recs = records(client, tok, 2)
        assert min(r["at"] for r in recs) >= t0 + 1
    finally:
        client.close()
        await earnevents.close()


async def test_over_tls_a_failing_handler_is_recorded(tls_url, queue, start_worker):
    # Given a worker over TLS and a policy of one retry
    await earnevents.init(redis_uri=tls_url, mongo_uri="", event_config={"queue_name": queue, "retry_policy": FAST})
    try:
        start_worker(env={"EARNEVENTS_REDIS_URI": tls_url})
        # When a handler always fails
        await event_bus.publish(Event("t.always_fails", {"token": token()}))

        # Then one failed job is recorded (in Redis, over TLS) after its retry
        async def failed() -> list[Any]:
            return await event_bus.get_failed_jobs()

        deadline = time.monotonic() + 20
        while not (jobs := await failed()) and time.monotonic() < deadline:
            await _sleep(0.05)
        assert [job.handler for job in jobs] == ["e2e_handlers.always_fails"]
        assert jobs[0].attempts == 2
    finally:
        await earnevents.close()


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def test_a_plain_celery_app_on_the_same_database_keeps_its_own_visibility_timeout(
    redis_url, queue, start_worker, rclient
):
    from celery import Celery

    # Given a plain Celery app's worker (late acks, kombu's default one-hour visibility timeout)
    # and an earnevents worker with a 1 s visibility timeout, on one Redis database
    plain_queue = f"plain-{queue}"
    plain_env = {"PLAIN_BROKER_URL": redis_url, "PLAIN_QUEUE": plain_queue}
    start_worker(app="plain_celery_app", pool="solo", concurrency=1, env=plain_env)
    start_worker(env={"EARNEVENTS_VISIBILITY_TIMEOUT": "1"})
    # When the plain app runs a task for 4 s, longer than earnevents' visibility timeout
    sender = Celery("plain", broker=redis_url)
    try:
        tok = token()
        sender.send_task("plain.long", args=[tok, 4], queue=plain_queue)
        runs = f"plain:{tok}"
        wait_for(lambda: rclient.lrange(runs, 0, -1) == [b"start", b"end"], 30, "the plain task to finish")
    finally:
        sender.close()
    # Then it ran once: earnevents never gave the plain app's message back to its queue
    deadline = time.monotonic() + 2  # a restored copy would be taken at once by the idle worker
    while time.monotonic() < deadline:
        assert rclient.lrange(runs, 0, -1) == [b"start", b"end"]
        time.sleep(0.1)
    assert rclient.llen(plain_queue) == 0


async def test_over_tls_pool_processes_replaced_after_every_task_handle_every_event(tls_url, queue, start_worker):
    # Given a prefork worker over TLS whose pool processes are replaced after each task,
    # so it forks all the time while its background threads talk TLS to Redis
    await earnevents.init(redis_uri=tls_url, mongo_uri="", event_config={"queue_name": queue})
    client = redisurl.sync_client(tls_url)
    try:
        start_worker(
            env={"EARNEVENTS_REDIS_URI": tls_url, "EARNEVENTS_SCHEDULER_INTERVAL": "0.01"},
            extra_args=["--max-tasks-per-child", "1"],
        )
        tok = token()
        # When 30 events are published
        for i in range(30):
            await event_bus.publish(Event("t.record", {"token": tok, "i": i}))
        # Then every one is handled: no new pool process is stuck at its first TLS connection
        assert len(records(client, tok, 60, timeout=60)) == 60
    finally:
        client.close()
        await earnevents.close()


async def test_through_sentinel_publishers_and_workers_follow_a_failover(queue, start_worker):
    # Given a primary that refuses writes without a replica (min-replicas-to-write, as the
    # README advises), its replica, a sentinel watching them, and a worker through the sentinel
    with failover_setup() as servers:
        old, new, url = servers.old, servers.new, servers.sentinel.url
        old.config_set("min-replicas-to-write", 1)
        wait_for(lambda: old.set("earnevents-test:writable", 1), 20, "the primary to count its replica as good")
        await earnevents.init(redis_uri=url, mongo_uri="", event_config={"queue_name": queue})
        client = redisurl.sync_client(url, socket_timeout=5)
        try:
            start_worker(env={"EARNEVENTS_REDIS_URI": url})
            before = token()
            await event_bus.publish(Event("t.record", {"token": before}))
            records(client, before, 2)
            # When the sentinel fails over to the replica (the old primary stays a primary
            # until the sentinel demotes it, seconds later, and its demotion discards its data)
            servers.fail_over()
            # Then events published afterwards reach the new primary, not the old one...
            after = [token() for _ in range(3)]
            for tok in after:
                await event_bus.publish(Event("t.record", {"token": tok}))
            # ...and the worker handles every one there
            for tok in after:
                assert len(records(new, tok, 2, timeout=45)) == 2
            assert not any(old.exists(f"results:{tok}") for tok in after)
        finally:
            client.close()
            await earnevents.close()
