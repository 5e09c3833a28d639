"""The worker transport closing, reconnecting, cancelling consumers, and consumers that
stall and come back, with a real kombu Connection against the real redis-server:
nothing it took is lost or kept."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import kombu
import pytest
import redis
from kombu.transport import redis as kombu_redis

from earnevents import Event, keys, message
from earnevents.testing import wait_for
from earnevents.worker import keepalive as keepalive_module
from earnevents.worker.consumers import RETURN_ORPHANS, return_orphans_args
from earnevents.worker.keepalive import KeepAlive
from earnevents.worker.transport import Channel

TRANSPORT = "earnevents.worker.transport:Transport"

Connect = Callable[..., kombu.Connection]


@pytest.fixture
def connect(redis_url: str, queue: str) -> Iterator[Connect]:
    """kombu Connections on the earnevents transport, with unacked keys of this test's own."""
    made: list[kombu.Connection] = []

    def make(**options: Any) -> kombu.Connection:
        conn = kombu.Connection(
            redis_url,
            transport=TRANSPORT,
            transport_options={
                "priority_steps": [0],
                "visibility_timeout": 30,
                "unacked_key": f"{queue}:unacked",
                "unacked_index_key": f"{queue}:unacked-index",
                "unacked_mutex_key": f"{queue}:unacked-mutex",
                **options,
            },
        )
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.release()


def publish(rclient: redis.Redis, queue: str, n: int) -> list[str]:
    """LPUSH ``n`` messages as the bus does; returns their task ids in queue order."""
    ids = []
    for i in range(n):
        rclient.lpush(queue, message.build(Event("t.x", {"i": i}).to_wire(), queue=queue, task_id=f"task-{i}"))
        ids.append(f"task-{i}")
    return ids


def queued_ids(rclient: redis.Redis, queue: str) -> list[str]:
    return sorted(json.loads(item)["headers"]["id"] for item in rclient.lrange(queue, 0, -1))


def consume(conn: kombu.Connection, queue: str, prefetch: int = 10) -> tuple[kombu.Consumer, list[Any]]:
    """A consumer of ``queue`` collecting (not acknowledging) what it receives."""
    got: list[Any] = []
    consumer = kombu.Consumer(
        conn.default_channel, queues=[kombu.Queue(queue)], on_message=got.append, prefetch_count=prefetch
    )
    consumer.consume()
    return consumer, got


def send_next_fetch(conn: kombu.Connection) -> Channel:
    """What kombu does at the start of every poll: send the channel's next fetch command."""
    channel = conn.default_channel
    conn.transport.cycle.on_poll_start()
    assert channel._in_poll
    return channel


def kill_fetch_connection(rclient: redis.Redis, channel: Channel) -> None:
    """Drop the channel's fetch connection to Redis (the reply, already computed by Redis,
    is then never read): a network failure."""
    host, port = channel.client.connection._sock.getsockname()[:2]
    rclient.client_kill_filter(addr=f"{host}:{port}")


def assert_closed_by_kombu(conn: kombu.Connection, channel: Channel) -> None:
    """kombu's own close steps ran: unregistered from the poller, channel closed and released."""
    assert channel.closed and channel._in_poll is None
    assert channel not in conn.transport.cycle._channels
    assert channel not in conn.transport.channels and channel.connection is None


def start_fast_fetching(conn: kombu.Connection, queue: str, prefetch: int = 10) -> tuple[kombu.Consumer, list[Any]]:
    """Consume the first message (BLMOVE), after which the channel fetches with the script."""
    consumer, got = consume(conn, queue, prefetch)
    conn.drain_events(timeout=5)
    assert len(got) == 1 and conn.default_channel._fast
    return consumer, got


def test_close_with_a_fetch_in_flight_hands_back_everything_it_took(connect, rclient, queue):
    # Given a consumer that took one message and has a fetch script in flight for the rest
    ids = publish(rclient, queue, 5)
    conn = connect()
    start_fast_fetching(conn, queue)
    channel = send_next_fetch(conn)
    # When the channel closes (warm shutdown) before the reply is read
    channel.close()
    # Then every message is back on the queue, none left recorded as taken
    assert queued_ids(rclient, queue) == ids
    assert rclient.hlen(f"{queue}:unacked") == 0
    # And kombu's own close steps ran
    assert_closed_by_kombu(conn, channel)


def test_close_after_cancel_with_a_fetch_in_flight_hands_back_everything(connect, rclient, queue):
    # Given a consumer with a fetch script in flight, cancelled as Celery's warm shutdown does
    ids = publish(rclient, queue, 5)
    conn = connect()
    consumer, _ = start_fast_fetching(conn, queue)
    channel = send_next_fetch(conn)
    consumer.cancel()
    # When the connection closes
    channel.close()
    # Then every message is back on the queue
    assert queued_ids(rclient, queue) == ids
    assert rclient.hlen(f"{queue}:unacked") == 0
    assert_closed_by_kombu(conn, channel)


@pytest.mark.parametrize("cancel", [False, True])
def test_close_with_a_blocking_move_in_flight_returns_its_message(connect, rclient, queue, cancel):
    # Given an idle consumer whose BLMOVE took a message into its in-flight list
    conn = connect()
    consumer, _ = consume(conn, queue)
    channel = send_next_fetch(conn)
    ids = publish(rclient, queue, 1)
    inflight = keys.inflight_list(queue, channel.consumer_id)
    assert rclient.brpoplpush(inflight, inflight, 5)  # (waits for the move)
    if cancel:
        consumer.cancel()
    # When the channel closes before reading the reply
    channel.close()
    # Then the message is on the queue again, not in the in-flight list
    assert queued_ids(rclient, queue) == ids and rclient.llen(inflight) == 0
    assert_closed_by_kombu(conn, channel)


def test_an_idle_consumer_blocks_for_the_idle_wait_and_closes_at_once(connect, rclient, queue):
    # Given an idle consumer (empty queue) whose BLMOVE is in flight
    conn = connect()
    consume(conn, queue)
    channel = send_next_fetch(conn)

    def blocked() -> list[str]:
        return [c["id"] for c in rclient.client_list() if c["cmd"] == "blmove" and "b" in c["flags"]]

    wait_for(blocked, 5, "the BLMOVE blocking in Redis")
    # Then it still blocks 1.5 s later (kombu's BRPOP: 1 s): one command per IDLE_WAIT while idle
    time.sleep(1.5)
    assert blocked()
    # When the channel closes (a warm shutdown)
    started = time.monotonic()
    channel.close()
    # Then it did not wait out the BLMOVE, and kombu's close steps ran
    assert time.monotonic() - started < 1
    assert_closed_by_kombu(conn, channel)


def test_close_after_losing_a_blocking_move_reply_returns_the_message_at_once(connect, rclient, queue):
    # Given a consumer whose BLMOVE took a message, and whose connection then broke
    conn = connect()
    consume(conn, queue)
    channel = send_next_fetch(conn)
    ids = publish(rclient, queue, 1)
    inflight = keys.inflight_list(queue, channel.consumer_id)
    assert rclient.brpoplpush(inflight, inflight, 5)
    kill_fetch_connection(rclient, channel)
    # When the channel closes (a reconnect does that)
    channel.close()
    # Then it raised nothing, the message is back on the queue now (not after the
    # consumer's alive key expires), and kombu's close steps ran
    assert queued_ids(rclient, queue) == ids and rclient.llen(inflight) == 0
    assert not rclient.exists(keys.consumer_alive(channel.consumer_id))
    assert_closed_by_kombu(conn, channel)


def recorded_id(value: bytes) -> str:
    """The message id of an unacknowledged record ``[message, exchange, routing_key]``."""
    return str(json.loads(value)[0]["headers"]["id"])


def test_close_after_losing_a_fetch_reply_raises_nothing_and_leaves_the_messages_recorded(connect, rclient, queue):
    # Given a consumer whose fetch script took messages, and whose connection then broke
    ids = publish(rclient, queue, 4)
    conn = connect()
    start_fast_fetching(conn, queue)
    channel = send_next_fetch(conn)
    kill_fetch_connection(rclient, channel)
    # When the channel closes
    channel.close()
    # Then kombu's close steps ran, and what the script took is recorded as
    # unacknowledged, so the visibility timeout returns it (nothing in neither place)
    assert_closed_by_kombu(conn, channel)
    recorded = {recorded_id(v) for v in rclient.hvals(f"{queue}:unacked")}
    assert sorted(recorded | set(queued_ids(rclient, queue))) == ids


def test_cancel_sends_the_buffered_acknowledgements(connect, rclient, queue):
    # Given a consumer that fast-fetches and acknowledged a message (buffered for the next fetch)
    publish(rclient, queue, 2)
    conn = connect()
    consumer, got = start_fast_fetching(conn, queue)
    got[0].ack()
    assert rclient.hexists(f"{queue}:unacked", got[0].delivery_tag)
    # When the consumer is cancelled (`celery control cancel_consumer`)
    consumer.cancel()
    # Then the acknowledgement reached Redis: the message is not redelivered later
    assert not rclient.hexists(f"{queue}:unacked", got[0].delivery_tag)
    assert rclient.zscore(f"{queue}:unacked-index", got[0].delivery_tag) is None


def test_after_cancel_acknowledgements_go_out_at_once(connect, rclient, queue):
    # Given a consumer that fast-fetched two messages, then was cancelled while running them
    publish(rclient, queue, 3)
    conn = connect()
    consumer, got = start_fast_fetching(conn, queue)
    conn.drain_events(timeout=5)
    assert len(got) == 3
    consumer.cancel()
    # When it acknowledges them afterwards
    for m in got:
        m.ack()
    # Then no acknowledgement waits for a fetch that will never come
    assert rclient.hlen(f"{queue}:unacked") == 0


def test_cancel_with_a_fetch_in_flight_applies_its_acks_and_hands_back_its_messages(connect, rclient, queue):
    # Given a consumer with an acknowledgement buffered and a fetch script in flight carrying it
    ids = publish(rclient, queue, 4)
    conn = connect()
    consumer, got = start_fast_fetching(conn, queue)
    got[0].ack()
    channel = send_next_fetch(conn)
    # When the consumer is cancelled, and the reply then arrives
    consumer.cancel()
    with contextlib.suppress(TimeoutError):
        conn.drain_events(timeout=0.5)
    # Then the acknowledged message is gone, the three it fetched are back on the queue
    assert queued_ids(rclient, queue) == ids[1:]
    assert rclient.hlen(f"{queue}:unacked") == 0
    assert not channel._acks and not channel._in_poll


# --- consumers that stall past their alive-key TTL and come back ---------------------

TTL = 2.0
"""The alive-key TTL of these tests' consumers (the transport's minimum)."""


def sweep(rclient: redis.Redis, queue: str) -> int:
    """What another live worker's keep-alive does: return dead consumers' in-flight lists."""
    script_keys, argv = return_orphans_args(queue)
    return int(rclient.eval(RETURN_ORPHANS, len(script_keys), *script_keys, *argv))


def listed(rclient: redis.Redis, queue: str, consumer: str) -> bool:
    return bool(rclient.sismember(keys.inflight_consumers(queue), consumer))


def stall_past_ttl(rclient: redis.Redis, consumer: str) -> None:
    """Let the consumer's alive key expire as it does while its process is stopped."""
    wait_for(lambda: not rclient.exists(keys.consumer_alive(consumer)), TTL + 3, "the alive key to expire")


@pytest.fixture
def keepalive(redis_url: str, queue: str) -> Iterator[KeepAlive]:
    thread = KeepAlive(redis_url, f"{queue}:unacked-index", 60, [queue])
    yield thread
    thread.close()


def test_the_keepalive_lists_a_swept_consumer_again(connect, rclient, queue, keepalive):
    # Given a consumer that stalled past its TTL and was swept as dead by another worker
    conn = connect(visibility_timeout=TTL)
    consume(conn, queue)
    channel = send_next_fetch(conn)
    stall_past_ttl(rclient, channel.consumer_id)
    sweep(rclient, queue)
    assert not listed(rclient, queue, channel.consumer_id)
    # When its keep-alive thread runs again
    keepalive.refresh()
    # Then it is alive and listed again: a later sweep does not treat it as dead
    assert listed(rclient, queue, channel.consumer_id)
    assert rclient.pttl(keys.consumer_alive(channel.consumer_id)) > 0


def test_a_swept_consumer_registers_again_before_it_takes_another_message(connect, rclient, queue):
    # Given a consumer swept as dead while it was stalled
    conn = connect(visibility_timeout=TTL)
    consume(conn, queue)
    channel = send_next_fetch(conn)
    stall_past_ttl(rclient, channel.consumer_id)
    sweep(rclient, queue)
    # When it comes back and blocks for the next message (before any keep-alive tick)
    with contextlib.suppress(TimeoutError):
        conn.drain_events(timeout=0.3)
    # Then it is listed and alive again, before anything reaches its in-flight list
    assert channel._in_poll and listed(rclient, queue, channel.consumer_id)
    assert rclient.exists(keys.consumer_alive(channel.consumer_id))


def test_a_message_taken_after_coming_back_is_returned_when_the_consumer_then_dies(connect, rclient, queue):
    # Given a consumer that was swept as dead while stalled, came back, and took a message
    conn = connect(visibility_timeout=TTL)
    consume(conn, queue)
    channel = send_next_fetch(conn)
    stall_past_ttl(rclient, channel.consumer_id)
    sweep(rclient, queue)
    with contextlib.suppress(TimeoutError):
        conn.drain_events(timeout=0.3)
    ids = publish(rclient, queue, 1)
    inflight = keys.inflight_list(queue, channel.consumer_id)
    wait_for(lambda: rclient.llen(inflight) == 1, 5, "the message in the in-flight list")
    # When the consumer dies before handing it to kombu (its alive key expires) and is swept
    stall_past_ttl(rclient, channel.consumer_id)
    returned = sweep(rclient, queue)
    # Then the message is back on the queue, not stranded in a list nobody sweeps
    assert returned == 1 and queued_ids(rclient, queue) == ids


def test_a_message_a_stalled_consumer_held_is_returned_and_still_handled_once_it_is_back(connect, rclient, queue):
    # Given a consumer whose BLMOVE took a message, then stalled past its TTL and was swept
    conn = connect(visibility_timeout=TTL)
    _, got = consume(conn, queue)
    channel = send_next_fetch(conn)
    ids = publish(rclient, queue, 1)
    stall_past_ttl(rclient, channel.consumer_id)
    assert sweep(rclient, queue) == 1
    assert queued_ids(rclient, queue) == ids
    # When it comes back and reads its reply
    conn.drain_events(timeout=5)
    # Then it handles the message (at least once: it is also back on the queue for others),
    # and the message is recorded as unacknowledged, so nothing is in neither place
    assert [m.headers["id"] for m in got] == ids
    assert rclient.hexists(f"{queue}:unacked", got[0].delivery_tag)


# --- one clock: Redis' TIME for every visibility stamp and comparison --------------------

SKEWS = [3600.0, -3600.0]
"""A worker machine's clock an hour ahead of Redis', or an hour behind."""


@pytest.fixture
def skewed_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Make this process' wall clock (``time.time``, and kombu's copy of it) ``skew`` s off."""

    def skew(seconds: float) -> None:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + seconds)
        monkeypatch.setattr(kombu_redis, "time", lambda: real() + seconds)

    return skew


def redis_now(rclient: redis.Redis) -> float:
    seconds, microseconds = rclient.time()
    return seconds + microseconds / 1_000_000


def record_unacked(rclient: redis.Redis, queue: str, age: float) -> str:
    """Record a message as a worker took it ``age`` seconds ago on Redis' clock; its tag."""
    raw = message.build(Event("t.x", {}).to_wire(), queue=queue, task_id="task-old")
    tag = json.loads(raw)["properties"]["delivery_tag"]
    rclient.hset(f"{queue}:unacked", tag, json.dumps([json.loads(raw), "", queue]))
    rclient.zadd(f"{queue}:unacked-index", {tag: redis_now(rclient) - age})
    return tag


@pytest.mark.parametrize("skew", SKEWS)
def test_messages_taken_one_by_one_are_stamped_on_redis_clock(connect, rclient, queue, skewed_clock, skew):
    # Given a worker whose clock is an hour off
    skewed_clock(skew)
    publish(rclient, queue, 1)
    conn = connect()
    # When it takes a message with BLMOVE (recorded by the transport, not the fetch script)
    _, got = consume(conn, queue)
    conn.drain_events(timeout=5)
    # Then the stamp is Redis' time, not the worker's
    assert abs(rclient.zscore(f"{queue}:unacked-index", got[0].delivery_tag) - redis_now(rclient)) < 5


@pytest.mark.parametrize("skew", SKEWS)
def test_messages_taken_by_kombus_own_fetch_are_stamped_on_redis_clock(connect, rclient, queue, skewed_clock, skew):
    # Given a worker whose clock is an hour off, consuming two queues (kombu's BRPOP and append)
    skewed_clock(skew)
    other = f"{queue}-b"
    publish(rclient, queue, 1)
    conn = connect()
    got: list[Any] = []
    consumer = kombu.Consumer(
        conn.default_channel, queues=[kombu.Queue(queue), kombu.Queue(other)], on_message=got.append
    )
    consumer.consume()
    # When it takes the message
    conn.drain_events(timeout=5)
    # Then the stamp is Redis' time
    assert abs(rclient.zscore(f"{queue}:unacked-index", got[0].delivery_tag) - redis_now(rclient)) < 5


def test_a_worker_with_a_clock_ahead_does_not_give_back_another_workers_fresh_message(
    connect, rclient, queue, skewed_clock
):
    # Given a message another worker took a second ago, and a worker whose clock is an hour ahead
    tag = record_unacked(rclient, queue, age=1)
    skewed_clock(3600)
    channel = connect(visibility_timeout=30).default_channel
    # When that worker sweeps for messages unacknowledged longer than the visibility timeout
    channel.qos.restore_visible(num=10, interval=1)
    # Then the fresh message stays with its worker
    assert rclient.hexists(f"{queue}:unacked", tag) and rclient.llen(queue) == 0


def test_a_sweep_with_nothing_past_the_timeout_takes_no_mutex(connect, rclient, queue):
    # Given a message another worker took a second ago
    tag = record_unacked(rclient, queue, age=1)
    channel = connect(visibility_timeout=30).default_channel
    channel.clock.now()  # its clock read once (TIME), as a running worker's is

    def sets() -> int:
        return int(rclient.info("commandstats").get("cmdstat_set", {}).get("calls", 0))

    before = sets()
    # When a worker sweeps
    channel.qos.restore_visible(num=10, interval=1)
    # Then it only looked (no SET of the sweep mutex), and the message stays with its worker
    assert sets() == before
    assert rclient.hexists(f"{queue}:unacked", tag) and rclient.llen(queue) == 0


def test_a_worker_with_a_clock_behind_gives_back_a_dead_workers_message_in_time(connect, rclient, queue, skewed_clock):
    # Given a message taken 31 s ago by a worker that died, and a worker whose clock is an hour behind
    tag = record_unacked(rclient, queue, age=31)
    skewed_clock(-3600)
    channel = connect(visibility_timeout=30).default_channel
    # When that worker sweeps
    channel.qos.restore_visible(num=10, interval=1)
    # Then the message is back on the queue
    assert not rclient.hexists(f"{queue}:unacked", tag) and queued_ids(rclient, queue) == ["task-old"]


@pytest.mark.parametrize("skew", SKEWS)
def test_the_keepalive_stamps_held_messages_on_redis_clock(rclient, queue, keepalive, skewed_clock, skew, monkeypatch):
    # Given a worker whose clock is an hour off, holding a message stamped a while ago
    tag = record_unacked(rclient, queue, age=20)
    monkeypatch.setattr(keepalive_module, "held_delivery_tags", lambda: [tag])
    skewed_clock(skew)
    # When its keep-alive re-stamps what it holds
    keepalive.refresh()
    # Then the new stamp is Redis' time
    assert abs(rclient.zscore(f"{queue}:unacked-index", tag) - redis_now(rclient)) < 5


def test_a_stalled_workers_late_ack_does_not_erase_the_record_of_the_worker_holding_the_restored_copy(
    connect, rclient, queue
):
    # Given worker A took a message and stalled past the visibility timeout (its stamp aged)
    publish(rclient, queue, 1)
    conn_a = connect()
    consumer_a, got_a = consume(conn_a, queue)
    conn_a.drain_events(timeout=5)
    rclient.zadd(f"{queue}:unacked-index", {got_a[0].delivery_tag: redis_now(rclient) - 60})
    # And worker B gave the message back and took it
    conn_b = connect()
    conn_b.default_channel.qos.restore_visible(num=10, interval=1)
    _, got_b = consume(conn_b, queue)
    conn_b.drain_events(timeout=5)
    # When A resumes, finishes and acknowledges its copy
    got_a[0].ack()
    consumer_a.cancel()
    # Then B's copy is still recorded as unacknowledged: should B die, it comes back
    assert got_b[0].headers["id"] == got_a[0].headers["id"]
    assert rclient.hexists(f"{queue}:unacked", got_b[0].delivery_tag)


def test_messages_given_back_after_the_visibility_timeout_are_whole_messages_again(connect, rclient, queue):
    # Given messages recorded as unacknowledged both ways the transport records them: the
    # first by QoS.append (taken with BLMOVE), the rest by the fetch script itself
    ids = publish(rclient, queue, 3)
    conn_a = connect()
    _, got_a = start_fast_fetching(conn_a, queue)
    # (several reads: on a Redis that has not seen the fetch script yet, the first answers
    # NOSCRIPT, and the script is loaded and sent again by the next one)
    with contextlib.suppress(TimeoutError):
        while len(got_a) < 3:
            conn_a.drain_events(timeout=5)
    assert len(got_a) == 3 and rclient.hlen(f"{queue}:unacked") == 3
    # And their worker stalled past the visibility timeout
    for tag in rclient.zrange(f"{queue}:unacked-index", 0, -1):
        rclient.zadd(f"{queue}:unacked-index", {tag: redis_now(rclient) - 60})
    # When another worker gives them back
    conn_b = connect()
    conn_b.default_channel.qos.restore_visible(num=10, interval=1)
    # Then each is on the queue as the message it was (not a string of it) and is taken again
    queued = [json.loads(item) for item in rclient.lrange(queue, 0, -1)]
    assert all(isinstance(m, dict) and m["body"] == json.loads(message_of(got_a, m))["body"] for m in queued)
    _, got_b = consume(conn_b, queue)
    with contextlib.suppress(TimeoutError):
        while len(got_b) < 3:
            conn_b.drain_events(timeout=5)
    assert sorted(m.headers["id"] for m in got_b) == ids
    assert [m.decode() for m in sorted(got_b, key=lambda m: m.headers["id"])] == [
        m.decode() for m in sorted(got_a, key=lambda m: m.headers["id"])
    ]


def message_of(got: list[Any], queued: dict[str, Any]) -> str:
    """The JSON of the message in ``got`` with ``queued``'s id, as it was first taken."""
    taken = next(m for m in got if m.headers["id"] == queued["headers"]["id"])
    return json.dumps(taken._raw)


def test_a_swept_message_gets_a_new_delivery_tag_and_is_otherwise_unchanged(rclient, queue):
    # Given a dead consumer's in-flight list holding a message and an item that is not one
    raw = message.build(Event("t.x", {"n": 12345678901234567890}).to_wire(), queue=queue, task_id="task-0")
    inflight = keys.inflight_list(queue, "dead:1:abc")
    rclient.sadd(keys.inflight_consumers(queue), "dead:1:abc")
    rclient.lpush(inflight, raw, b"\x00not json")
    # When a live worker sweeps
    assert sweep(rclient, queue) == 2
    # Then both are back on the queue; the message under a new tag, every other byte as it was
    returned = rclient.lrange(queue, 0, -1)
    assert b"\x00not json" in returned
    [copy] = [item for item in returned if item != b"\x00not json"]
    old_tag = json.loads(raw)["properties"]["delivery_tag"]
    new_tag = json.loads(copy)["properties"]["delivery_tag"]
    assert new_tag != old_tag and copy.decode() == raw.replace(old_tag, new_tag)


def test_a_stalled_consumers_ack_does_not_erase_the_record_of_the_worker_holding_the_swept_copy(
    connect, rclient, queue
):
    # Given consumer A's BLMOVE took a message, A stalled past its TTL and was swept
    conn_a = connect(visibility_timeout=TTL)
    consumer_a, got_a = consume(conn_a, queue)
    channel_a = send_next_fetch(conn_a)
    publish(rclient, queue, 1)
    stall_past_ttl(rclient, channel_a.consumer_id)
    assert sweep(rclient, queue) == 1
    # And worker B took the returned copy
    conn_b = connect(visibility_timeout=TTL)
    _, got_b = consume(conn_b, queue)
    conn_b.drain_events(timeout=5)
    # When A resumes, handles its copy and acknowledges it
    conn_a.drain_events(timeout=5)
    got_a[0].ack()
    consumer_a.cancel()
    # Then B's copy is still recorded as unacknowledged: should B die, it comes back
    assert got_b[0].headers["id"] == got_a[0].headers["id"]
    assert rclient.hexists(f"{queue}:unacked", got_b[0].delivery_tag)


def test_a_blocking_move_never_outlasts_half_the_alive_ttl(connect, rclient, queue):
    # Given a consumer with a 2 s alive TTL and a polling interval of 10 s
    conn = connect(visibility_timeout=TTL, polling_interval=10)
    consume(conn, queue)
    # When it blocks on the empty queue
    channel = send_next_fetch(conn)
    # Then Redis answers within a second: a move can only land while it is listed and alive
    assert channel.client.connection.can_read(timeout=TTL * 0.75)


def test_the_fetch_script_is_sent_by_digest_and_loaded_again_when_redis_forgot_it(connect, rclient, queue):
    # Given a consumer fetching with the script, one acknowledgement buffered for its next fetch
    ids = publish(rclient, queue, 4)
    rclient.config_resetstat()
    conn = connect()
    _, got = start_fast_fetching(conn, queue, prefetch=1)
    got[0].ack()
    # And Redis forgot its scripts (a restart, SCRIPT FLUSH)
    rclient.script_flush()
    # When the consumer goes on taking messages
    deadline = time.monotonic() + 10
    while len(got) < 4 and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=1)
        if len(got) > 1:
            got[-1].ack()
    # Then every message came once, the buffered acknowledgement reached Redis with a later fetch,
    # and no fetch sent the script's whole text (EVAL): each went by its digest (EVALSHA)
    assert [m.headers["id"] for m in got] == ids
    assert not rclient.hexists(f"{queue}:unacked", got[0].delivery_tag)
    stats = rclient.info("commandstats")
    assert "cmdstat_eval" not in stats and stats["cmdstat_evalsha"]["calls"] >= 3
