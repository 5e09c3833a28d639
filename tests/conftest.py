"""Fixtures: a private redis-server and MongoDB stand-in per session, workers per test.

Set EARNEVENTS_TEST_MONGO_URI to run every Mongo test against a real MongoDB
(docker-compose gives one); otherwise an nx-27017 server is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import earnevents
from earnevents.testing import MongoServer, RedisServer, SentinelServer, WorkerProcess, wait_for

TESTS_DIR = Path(__file__).parent
sys.path.insert(0, str(TESTS_DIR))

# Web pages in a real browser: serve_asgi, browser and screenshot (tests/browser_harness.py).
from browser_harness import _chromium, browser, screenshot, serve_asgi  # noqa: E402, F401  (fixtures)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test that opens Chromium is a browser test (`-m "not browser"` leaves them out).
    for item in items:
        if "_chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    external = os.environ.get("EARNEVENTS_TEST_MONGO_URI")
    if external:
        yield external
        return
    with MongoServer() as server:
        yield server.url


@pytest.fixture
def mongo_db(mongo_url: str) -> Iterator[str]:
    """A database name of this test's own, dropped afterwards."""
    from pymongo import MongoClient

    name = f"ee_test_{uuid.uuid4().hex[:10]}"
    yield name
    client: MongoClient[Any] = MongoClient(mongo_url, serverSelectionTimeoutMS=2000)
    try:
        client.drop_database(name)
    finally:
        client.close()


@pytest.fixture
def queue() -> str:
    """A queue name of this test's own, so tests never see each other's messages."""
    return f"q-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def bus(redis_url: str, queue: str) -> AsyncIterator[earnevents.EventBus]:
    """earnevents initialized for this test's queue (Redis failure store)."""
    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue})
    yield earnevents.event_bus
    await earnevents.close()


@pytest.fixture(params=["redis", "mongo"])
async def env(request: pytest.FixtureRequest, redis_url: str, queue: str) -> AsyncIterator[Any]:
    """earnevents initialized for this test's queue, once with each failure store."""
    if request.param == "mongo":
        mongo_url = request.getfixturevalue("mongo_url")
        database = request.getfixturevalue("mongo_db")
        environment = await earnevents.init(
            redis_uri=redis_url, mongo_uri=mongo_url, database=database, event_config={"queue_name": queue}
        )
    else:
        environment = await earnevents.init(redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue})
    yield environment
    await earnevents.close()


WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(redis_url: str, queue: str, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start ``celery -A earnevents worker`` subprocesses for this test's queue."""
    started: list[WorkerProcess] = []

    def start(
        modules: str = "e2e_handlers",
        pool: str = "prefork",
        concurrency: int = 2,
        wait: bool = True,
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> WorkerProcess:
        worker_env = {
            "EARNEVENTS_REDIS_URI": redis_url,
            "EARNEVENTS_QUEUE": queue,
            "EARNEVENTS_HANDLER_MODULES": modules,
            "EARNEVENTS_MONGO_URI": "",
            "EARNEVENTS_SCHEDULER_INTERVAL": "0.05",
            "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        }
        worker = WorkerProcess(
            worker_env,
            pool=pool,
            concurrency=concurrency,
            log_path=str(tmp_path / f"worker-{len(started)}.log"),
            **kwargs,
        )
        started.append(worker)
        worker.start(wait=wait)
        return worker

    yield start
    for worker in started:
        worker.stop()


def token() -> str:
    return uuid.uuid4().hex


def results(client: redis.Redis, tok: str) -> list[dict[str, Any]]:
    """What e2e_handlers recorded for events carrying ``tok``."""
    return [json.loads(raw) for raw in client.lrange(f"results:{tok}", 0, -1)]


def wait_results(client: redis.Redis, tok: str, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    """Poll until at least ``count`` records exist for ``tok``."""
    return wait_for(
        lambda: (r := results(client, tok)) and len(r) >= count and r,
        timeout,
        f"{count} handler record(s) for token {tok}",
    )


def handled(client: redis.Redis, tok: str, handler: str) -> list[dict[str, Any]]:
    """The records of one handler among :func:`results`."""
    return [r for r in results(client, tok) if r["handler"] == handler]


def wait_handled(
    client: redis.Redis, tok: str, handler: str, count: int = 1, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Poll until ``handler`` left at least ``count`` records for ``tok``."""
    return wait_for(
        lambda: (found := handled(client, tok, handler)) and len(found) >= count and found,
        timeout,
        f"{count} record(s) of {handler} for {tok}",
    )


def stays(check: Callable[[], Any], seconds: float) -> bool:
    """True if ``check()`` holds for the whole of ``seconds`` (for "nothing more happens" claims)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            return False
        time.sleep(0.05)
    return True


class LostReply:
    """A TCP proxy to Redis that forwards the first LPUSH, then drops the connection
    before Redis' reply reaches the client: the push landed, the publisher cannot know.
    ``then_down``: from then on it accepts no connection (Redis looks gone)."""

    def __init__(self, redis_port: int, then_down: bool = False) -> None:
        self.redis_port = redis_port
        self.then_down = then_down
        self.dropped = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)

        async def replies() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        pump = asyncio.create_task(replies())
        try:
            while data := await reader.read(65536):
                if b"LPUSH" in data and not self.dropped:
                    self.dropped += 1
                    pump.cancel()  # Redis' reply to this one never reaches the client
                    if self.then_down:
                        self.server.close()  # no new connection from now on
                    up_writer.write(data)
                    await up_writer.drain()
                    await asyncio.sleep(0.2)  # Redis runs it; its reply is dropped with the connection
                    break
                up_writer.write(data)
                await up_writer.drain()
        finally:
            pump.cancel()
            writer.close()
            up_writer.close()

    async def stop(self) -> None:
        self.server.close()


class Failover:
    """A primary, its replica and a sentinel watching them (see :func:`failover_setup`), with
    clients straight to each server: ``old`` the primary, ``new`` the replica a failover promotes."""

    def __init__(self, primary: RedisServer, replica: RedisServer, sentinel: SentinelServer) -> None:
        self.primary, self.replica, self.sentinel = primary, replica, sentinel
        self.old = redis.Redis(port=primary.port, socket_timeout=5)
        self.new = redis.Redis(port=replica.port, socket_timeout=5)

    def fail_over(self) -> None:
        self.sentinel.failover(to=self.replica)


@contextlib.contextmanager
def failover_setup() -> Iterator[Failover]:
    """Private servers for a Sentinel failover, the sentinel already watching the replica."""
    with (
        RedisServer() as primary,
        RedisServer(replica_of=primary) as replica,
        SentinelServer(primary) as sentinel,
    ):
        watcher = redis.Redis(port=sentinel.port, socket_timeout=5)
        setup = Failover(primary, replica, sentinel)
        try:
            wait_for(lambda: watcher.sentinel_slaves(sentinel.master_name), 20, "the sentinel to see the replica")
            yield setup
        finally:
            for client in (watcher, setup.old, setup.new):
                client.close()
