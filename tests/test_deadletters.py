"""Dead letters (queue items workers refused) through the event bus and `earnevents dead`,
and the size limit at publish time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import earnevents
from earnevents import (
    ConfigError,
    DeadItemNotFoundError,
    EarnEventsError,
    Event,
    EventTooLargeError,
    deadletters,
    keys,
)
from earnevents.config import DEFAULTS, MIN_MESSAGE_SIZE, Settings


def drop(rclient, queue: str, item: bytes, reason: str, cap: int = 100) -> deadletters.DeadItem:
    """File a dead letter as a worker does (same script, same record)."""
    dead = deadletters.DeadItem.new(item, queue, reason, task_id="t-" + reason)
    script_keys, argv = deadletters.add_args(dead, cap)
    rclient.eval(deadletters.ADD_SCRIPT, len(script_keys), *script_keys, *argv)
    return dead


def cli(redis_url: str, queue: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "earnevents"
    env = {**os.environ, "EARNEVENTS_REDIS_URI": redis_url, "EARNEVENTS_QUEUE": queue, "EARNEVENTS_MONGO_URI": ""}
    return subprocess.run(
        [str(exe), *args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


@pytest.fixture
def three(rclient, queue):
    return [drop(rclient, queue, f"item {i}".encode(), f"reason {i}") for i in range(3)]


# --- the event bus ------------------------------------------------------------------


async def test_dead_items_are_listed_newest_first_and_paged(bus, three):
    items = await bus.get_dead_items()
    assert [i.id for i in items] == [d.id for d in reversed(three)]
    assert items[0] == three[2]
    assert [i.id for i in await bus.get_dead_items(limit=1, offset=1)] == [three[1].id]
    assert await bus.count_dead_items() == 3


async def test_a_dead_item_has_its_record(bus, three):
    item = await bus.get_dead_item(three[0].id)
    assert (item.queue, item.reason, item.raw, item.size, item.truncated) == (
        three[0].queue,
        "reason 0",
        "item 0",
        6,
        False,
    )
    assert item.task_id == "t-reason 0" and item.dropped_at.utcoffset().total_seconds() == 0


async def test_unknown_dead_item_is_a_typed_error(bus, three):
    with pytest.raises(DeadItemNotFoundError, match="nope"):
        await bus.get_dead_item("nope")
    with pytest.raises(LookupError):
        await bus.remove_dead_item("nope")
    assert issubclass(DeadItemNotFoundError, EarnEventsError)


async def test_removed_dead_item_is_gone(bus, three):
    await bus.remove_dead_item(three[1].id)
    assert [i.id for i in await bus.get_dead_items()] == [three[2].id, three[0].id]
    with pytest.raises(DeadItemNotFoundError):
        await bus.remove_dead_item(three[1].id)


async def test_dead_items_of_another_queue_are_not_listed(bus, rclient, queue, three):
    drop(rclient, queue + "-other", b"x", "elsewhere")
    assert await bus.count_dead_items() == 3


async def test_negative_paging_is_a_value_error(bus):
    with pytest.raises(ValueError, match="negative"):
        await bus.get_dead_items(limit=-1)


def test_record_keeps_at_most_raw_max_bytes_and_says_so():
    item = b"\xff" + b"x" * (deadletters.RAW_MAX + 10)
    dead = deadletters.DeadItem.new(item, "q", "too big")
    assert dead.size == len(item) and dead.truncated
    assert dead.raw.startswith("\ufffdxxx") and len(dead.raw) == deadletters.RAW_MAX
    assert deadletters.DeadItem.from_json(dead.to_json()) == dead


def test_cap_keeps_the_newest(rclient, queue):
    for i in range(5):
        drop(rclient, queue, b"%d" % i, f"r{i}", cap=2)
    kept = [deadletters.DeadItem.from_json(v).raw for v in rclient.hvals(keys.dead_items(queue))]
    assert sorted(kept) == ["3", "4"] and rclient.zcard(keys.dead_index(queue)) == 2


# --- publish-time size limit --------------------------------------------------------


async def test_event_too_large_for_workers_is_refused_at_publish_and_nothing_sent(redis_url, rclient, queue):
    # Given a maximum message size of 8 KiB
    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue, "max_message_size": 8192})
    try:
        # When an event whose message is over it is published, alone or in a batch
        big = Event("t.big", {"blob": "x" * 8192})
        with pytest.raises(EventTooLargeError, match=r"bytes, over the limit of 7168 bytes") as info:
            await earnevents.event_bus.publish(big)
        assert isinstance(info.value, ValueError) and "8192" in str(info.value)
        with pytest.raises(EventTooLargeError):
            await earnevents.event_bus.publish_batch([Event("t.small", {}), big])
        with pytest.raises(EventTooLargeError):
            await earnevents.event_bus.publish(big, delay=10)
        # Then nothing was sent, and a message under the limit still is
        assert rclient.llen(queue) == 0 and rclient.zcard(keys.scheduled_zset(queue)) == 0
        await earnevents.event_bus.publish(Event("t.fits", {"blob": "x" * 4000}))
        assert rclient.llen(queue) == 1
    finally:
        await earnevents.close()


async def test_packed_message_over_the_limit_is_refused(redis_url, rclient, queue):
    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue, "max_message_size": 8192})
    try:
        events = [Event("t.n", {"blob": "x" * 1000}) for _ in range(10)]
        with pytest.raises(EventTooLargeError):
            await earnevents.event_bus.publish_batch(events, events_per_message=10)
        assert rclient.llen(queue) == 0
    finally:
        await earnevents.close()


# --- settings -----------------------------------------------------------------------


def test_size_and_dead_letter_cap_defaults_and_environment():
    s = Settings.resolve(environ={})
    assert s.max_message_size == 4 * 1024 * 1024 == int(DEFAULTS["EARNEVENTS_MAX_MESSAGE_SIZE"])
    assert s.dead_letter_max == 10_000
    s = Settings.resolve(environ={"EARNEVENTS_MAX_MESSAGE_SIZE": "65536", "EARNEVENTS_DEAD_LETTER_MAX": "5"})
    assert (s.max_message_size, s.dead_letter_max) == (65536, 5)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"EARNEVENTS_MAX_MESSAGE_SIZE": "big"}, "whole number"),
        ({"EARNEVENTS_MAX_MESSAGE_SIZE": str(MIN_MESSAGE_SIZE - 1)}, f">= {MIN_MESSAGE_SIZE}"),
        ({"EARNEVENTS_DEAD_LETTER_MAX": "0"}, ">= 1"),
    ],
)
def test_bad_size_settings_are_config_errors(env, match):
    with pytest.raises(ConfigError, match=match):
        Settings.resolve(environ=env)


def test_worker_app_hands_both_settings_to_its_transport(monkeypatch):
    from earnevents.worker.app import create_app

    env = {"EARNEVENTS_MAX_MESSAGE_SIZE": "65536", "EARNEVENTS_DEAD_LETTER_MAX": "7"}
    options = create_app(Settings.resolve(environ=env)).conf.broker_transport_options
    assert (options["max_message_size"], options["dead_letter_max"]) == (65536, 7)


# --- earnevents dead ----------------------------------------------------------------


async def test_cli_lists_dead_items_as_json_lines(redis_url, queue, three):
    out = cli(redis_url, queue, "dead", "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["id"] for r in rows] == [d.id for d in reversed(three)]
    assert rows[0]["reason"] == "reason 2" and rows[0]["size"] == 6 and "raw" not in rows[0]


async def test_cli_list_counts_and_pages(redis_url, queue, three):
    out = cli(redis_url, queue, "dead", "list", "--limit", "1", "--offset", "1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "3 dead item(s), showing 1"
    assert lines[1].startswith(three[1].id) and "reason 1" in lines[1]


async def test_cli_show_prints_the_raw_item(redis_url, queue, three):
    out = cli(redis_url, queue, "dead", "show", three[0].id)
    shown = json.loads(out.stdout)
    assert shown["raw"] == "item 0" and shown["truncated"] is False and shown["task_id"] == "t-reason 0"
    missing = cli(redis_url, queue, "dead", "show", "nope")
    assert missing.returncode == 1 and "nope" in missing.stderr


async def test_cli_remove_takes_items_off_and_unknown_ids_exit_1(redis_url, queue, bus, three):
    out = cli(redis_url, queue, "dead", "remove", three[0].id, "nope", three[1].id, "--yes")
    assert out.returncode == 1
    assert f"removed {three[0].id}" in out.stdout and f"removed {three[1].id}" in out.stdout
    assert "nope" in out.stderr
    assert [i.id for i in await bus.get_dead_items()] == [three[2].id]
