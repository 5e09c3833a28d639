"""earnevents.redisurl: every URL form, checked at configuration time, spelled for kombu."""

from __future__ import annotations

import os
import threading

import pytest

from earnevents import ConfigError, redisurl
from earnevents.config import Settings
from earnevents.worker.periodic import PeriodicThread


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://:secret@redis.example:6380/2?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
        "unix:///run/redis/redis.sock?db=1",
        "sentinel://s1:26379/0;sentinel://s2:26380/0?master_name=main",
    ],
)
def test_every_documented_url_form_is_accepted_by_settings(url):
    # When settings are resolved with the URL
    # Then it is taken as given
    assert Settings.resolve(redis_uri=url, environ={}).redis_uri == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://localhost:6379", "redis://, rediss://, unix:// or sentinel://"),
        ("sentinel://s1:26379/0", "master_name"),
        ("sentinel://s1:26379;redis://x:1?master_name=m", "sentinel://host:port"),
        ("rediss://h:6380/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis://h:6379/zero", "database must be a number"),
        ("unix://", "socket's path"),
        ("redis://h:notaport/0", "invalid port"),
        ("sentinel://s1:26379/0?master_name=m&ssl_cert_reqs=none", "TLS to Sentinel is not supported"),
    ],
)
def test_a_url_no_client_can_use_is_a_config_error_at_resolve_time(url, problem):
    # When settings are resolved with a broken URL
    # Then ConfigError names the problem at once (not in the worker)
    with pytest.raises(ConfigError, match=problem):
        Settings.resolve(redis_uri=url, environ={})


@pytest.mark.parametrize("url", ["redi://:hunter2@h:6379/0", ":hunter2@h:6379/0", "redis://:hunter2@h:port/0"])
def test_a_config_error_never_shows_the_password(url):
    # Given a broken URL with a password
    with pytest.raises(ConfigError) as info:
        redisurl.parse(url)
    # Then the message does not contain the password
    assert "hunter2" not in str(info.value)


def test_rediss_is_tls_for_the_broker_with_certificates_required_by_default():
    # When a rediss:// URL without options is mapped for kombu
    broker = redisurl.broker("rediss://:pw@h:6380/3")
    # Then the broker URL is kombu's plain redis form and TLS is in broker_use_ssl, verifying
    assert broker.url == "redis://:pw@h:6380/3"
    assert broker.use_ssl == {"ssl_cert_reqs": "required"}
    assert broker.transport.endswith(":Transport")


def test_rediss_options_reach_broker_use_ssl():
    broker = redisurl.broker(
        "rediss://h:6380/0?ssl_cert_reqs=none&ssl_ca_certs=/ca&ssl_certfile=/c&ssl_keyfile=/k&ssl_check_hostname=false"
    )
    assert broker.use_ssl == {
        "ssl_cert_reqs": "none",
        "ssl_ca_certs": "/ca",
        "ssl_certfile": "/c",
        "ssl_keyfile": "/k",
        "ssl_check_hostname": False,
    }


def test_a_unix_socket_url_keeps_its_database_and_names_the_socket_for_the_transport():
    broker = redisurl.broker("unix:///run/redis.sock?db=4")
    assert broker.url == "redis://localhost/4"
    assert broker.transport_options == {redisurl.UNIX_SOCKET_OPTION: "/run/redis.sock"}
    assert broker.transport.endswith(":UnixSocketTransport")


def test_several_sentinels_become_kombus_alternates_with_the_master_name_as_option():
    broker = redisurl.broker("sentinel://:pw@s1:26379/2;sentinel://s2/2?master_name=main")
    assert broker.url == "sentinel://:pw@s1:26379/2;sentinel://:pw@s2:26379/2"
    assert broker.transport_options["master_name"] == "main"
    assert broker.transport_options["sentinel_kwargs"]["retry"]._retries == 0  # next sentinel, not a retry
    assert broker.transport.endswith(":SentinelTransport")


def test_a_fork_waits_for_a_background_threads_redis_io_to_end():
    # Given a worker background thread in the middle of its tick (its Redis/TLS I/O)
    in_tick, release, finished = threading.Event(), threading.Event(), threading.Event()

    class Busy(PeriodicThread):
        def tick(self) -> None:
            in_tick.set()
            release.wait(10)
            finished.set()

    busy = Busy(interval=60)
    busy.start()
    try:
        assert in_tick.wait(10)
        # When the process forks (as the prefork pool does) while the tick runs
        timer = threading.Timer(0.2, release.set)
        timer.start()
        pid = os.fork()
        if pid == 0:  # the child: nothing to do
            os._exit(0)
        os.waitpid(pid, 0)
        # Then the fork happened only after the tick had finished
        assert finished.is_set()
    finally:
        release.set()
        busy.stop()


async def test_the_async_client_runs_more_commands_at_once_than_redis_py_8s_default_pool_cap(redis_url):
    # redis-py 8 caps a pool at 100 connections and fails the next command at once
    # (MaxConnectionsError); a worker with -P threads -c 100 runs more at once than that.
    import asyncio

    from earnevents.redisurl import async_client

    client = async_client(redis_url)
    try:
        replies = await asyncio.gather(*(client.blpop([f"never-{i}"], timeout=0.3) for i in range(150)))
    finally:
        await client.aclose()
    assert replies == [None] * 150


def test_the_blocking_client_runs_more_commands_at_once_than_redis_py_8s_default_pool_cap(redis_url):
    from concurrent.futures import ThreadPoolExecutor

    from earnevents.redisurl import sync_client

    client = sync_client(redis_url)
    with ThreadPoolExecutor(150) as pool:
        replies = list(pool.map(lambda i: client.blpop([f"never-{i}"], timeout=1), range(150)))
    client.close()
    assert replies == [None] * 150
