"""The delay scheduler sleeps while nothing is due, and is woken in time for what is added.

Each test has a private redis-server, so INFO commandstats counts only what it does.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

import earnevents
from earnevents import Event, keys, schedule
from earnevents.testing import RedisServer, wait_for
from earnevents.worker.scheduler import Mover

INTERVAL = 0.2
RECHECK = 30.0  # far longer than any wait below: only a wake-up can explain a timely move
SLACK = 1.0  # for a loaded machine; still far below RECHECK


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(server.url)
    yield c
    c.close()


@pytest.fixture
def mover(server: RedisServer, client: redis.Redis) -> Iterator[Mover]:
    m = Mover(server.url, ["q"], INTERVAL, recheck=RECHECK)
    m.start()
    wait_for(lambda: moves(client) >= 1 and subscriber(client), 10, "the mover's first move and subscription")
    yield m
    m.stop()


def moves(client: redis.Redis) -> int:
    """Script calls by sha: only the mover calls its script by sha here (the tests EVAL)."""
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def calls(client: redis.Redis) -> int:
    return sum(int(v["calls"]) for v in client.info("commandstats").values())


def subscriber(client: redis.Redis) -> int | None:
    """The client id of the mover's wake-up subscription, once subscribed."""
    found = [c for c in client.client_list() if int(c.get("sub", 0)) > 0]
    return int(found[0]["id"]) if found else None


def redis_now(client: redis.Redis) -> float:
    sec, usec = client.time()
    return sec + usec / 1e6


def park(client: redis.Redis, message_id: str, at: float, pipe: redis.client.Pipeline | None = None) -> None:
    script_keys, argv = schedule.add_args("q", [(message_id, "t.x", json.dumps({"id": message_id}))], at=at)
    (pipe or client).eval(schedule.ADD_SCRIPT, len(script_keys), *script_keys, *argv)


def queued(client: redis.Redis) -> list[str]:
    return [json.loads(raw)["id"] for raw in client.lrange("q", 0, -1)]


def wait_queued(client: redis.Redis, message_id: str, timeout: float) -> float:
    """Redis' time when ``message_id`` was first seen on the queue."""
    wait_for(lambda: message_id in queued(client), timeout, f"{message_id} on the queue", interval=0.02)
    return redis_now(client)


def test_a_delayed_message_added_while_the_mover_sleeps_is_moved_within_the_interval(client, mover):
    # Given an idle mover, asleep with nothing scheduled (it would next look RECHECK s later)
    before = moves(client)
    time.sleep(1)
    assert moves(client) == before
    # When a message due in 1.5 s is added
    due = redis_now(client) + 1.5
    park(client, "m1", due)
    # Then it reaches the queue within the interval of its due time, not at the recheck
    assert wait_queued(client, "m1", RECHECK / 2) - due < INTERVAL + SLACK
    # And waiting for it cost a few moves, not one per interval
    assert moves(client) - before <= 4


def test_a_message_due_after_the_earliest_wakes_no_one_and_is_still_moved_in_time(client, mover):
    # Given a message due in 1 s (the earliest), then one due in 2 s
    now = redis_now(client)
    park(client, "first", now + 1)
    park(client, "second", now + 2)
    # Then both reach the queue within the interval of their due times
    assert wait_queued(client, "first", RECHECK / 2) - (now + 1) < INTERVAL + SLACK
    assert wait_queued(client, "second", RECHECK / 2) - (now + 2) < INTERVAL + SLACK


def test_a_notification_lost_with_the_subscription_is_recovered(client, mover):
    # Given the mover asleep and subscribed
    sub = subscriber(client)
    assert sub is not None
    # When its subscription is killed in the same transaction that adds a message (so the
    # notification is published to no one) due in 1 s
    due = redis_now(client) + 1
    pipe = client.pipeline(transaction=True)
    pipe.client_kill_filter(_id=sub)
    park(client, "lost", due, pipe)
    pipe.execute()
    # Then the mover subscribes again, reads the schedule, and moves it in time
    assert wait_queued(client, "lost", RECHECK / 2) - due < INTERVAL + SLACK
    assert subscriber(client) not in (None, sub)


def test_a_burst_of_notifications_costs_at_most_one_move_per_interval(client, mover):
    # Given an idle mover
    before = moves(client)
    started = time.monotonic()
    # When 200 messages due at once are added one by one (each the earliest, each announced)
    for i in range(200):
        park(client, f"b{i}", redis_now(client))
    # Then all reach the queue
    wait_for(lambda: client.llen("q") == 200, 10, "200 messages on the queue")
    elapsed = time.monotonic() - started
    # And the mover read the schedule once per interval at most (plus the move in progress)
    assert moves(client) - before <= elapsed / INTERVAL + 2


def test_an_idle_mover_reads_the_schedule_once_per_recheck(server, client):
    # Given a mover with a 2 s recheck and a message due in an hour
    park(client, "later", redis_now(client) + 3600)
    m = Mover(server.url, ["q"], INTERVAL, recheck=2.0)
    m.start()
    try:
        wait_for(lambda: moves(client) >= 1, 10, "the first move")
        # When 5 s pass
        before_moves, before_calls = moves(client), calls(client)
        time.sleep(5)
        # Then it read the schedule 2-3 times (not 25), with a PING each recheck
        assert moves(client) - before_moves <= 3
        assert calls(client) - before_calls <= 20
    finally:
        m.stop()
    assert client.llen("q") == 0


def test_stopping_a_sleeping_mover_is_prompt(server, client):
    m = Mover(server.url, ["q"], INTERVAL, recheck=RECHECK)
    m.start()
    wait_for(lambda: moves(client) >= 1 and subscriber(client), 10, "the first move")
    started = time.monotonic()
    m.stop()
    assert time.monotonic() - started < 1
    assert not m._thread.is_alive()


def test_rescheduling_earlier_announces_the_new_due_time(client):
    # Given a message due in an hour, and a subscriber of the wake channel
    pubsub = client.pubsub()
    pubsub.subscribe(keys.scheduled_wake_channel("q"))
    wait_for(lambda: pubsub.get_message(timeout=0.1), 5, "the subscription")
    now = redis_now(client)
    park(client, "m", now + 3600)
    assert wait_for(lambda: pubsub.get_message(timeout=0.1), 5, "the first announcement")["data"]
    # When it is rescheduled an hour earlier (before every pending message)
    script_keys, argv = schedule.reschedule_if_args("q", ("m", "t.x", "{}"), was=now + 3600, at=now + 1)
    assert client.eval(schedule.RESCHEDULE_IF_SCRIPT, len(script_keys), *script_keys, *argv) == 1
    # Then the new due time is published
    message = wait_for(lambda: pubsub.get_message(timeout=0.1), 5, "the announcement")
    assert float(message["data"]) == pytest.approx(now + 1)
    # And adding one due later than the earliest announces nothing
    park(client, "m2", now + 7200)
    assert pubsub.get_message(timeout=0.5) is None
    pubsub.close()


def test_an_idle_worker_sends_redis_few_commands(server, client, start_worker):
    # Given a worker (default scheduler settings) with nothing to do
    start_worker(env={"EARNEVENTS_REDIS_URI": server.url, "EARNEVENTS_SCHEDULER_INTERVAL": "0.2"})
    wait_for(lambda: moves(client) >= 1, 20, "the worker's scheduler at work")
    time.sleep(1)  # its first moves, subscriptions and registrations done
    # When 10 s pass
    before = calls(client)
    time.sleep(10)
    spent = calls(client) - before
    # Then it sent Redis about 3 commands a second (its fetch loop's BLMOVE once a second,
    # keep-alive and unacked sweep every 10 s, the scheduler every 10 s), not 5 schedule
    # reads a second (3 commands each)
    assert spent <= 60, spent


async def test_a_worker_idle_on_a_long_recheck_delivers_a_delayed_event_on_time(server, client, start_worker, queue):
    # Given an idle worker whose scheduler would next read the schedule 30 s from now
    start_worker(env={"EARNEVENTS_REDIS_URI": server.url, "EARNEVENTS_SCHEDULER_RECHECK": str(RECHECK)})
    wait_for(lambda: moves(client) >= 1 and subscriber(client), 20, "the worker's scheduler at work")
    await earnevents.init(redis_uri=server.url, mongo_uri="", event_config={"queue_name": queue})
    try:
        # When an event is published with a 1.5 s delay
        tok = uuid.uuid4().hex
        published = time.time()
        await earnevents.event_bus.publish(Event("t.record", {"token": tok}), delay=1.5)
        # Then its handlers run 1.5 s later, within the interval (plus the handler's own time)
        found = wait_for(lambda: client.lrange(f"results:{tok}", 0, -1), RECHECK / 2, "the handlers' records")
    finally:
        await earnevents.close()
    ran = min(json.loads(raw)["at"] for raw in found)
    assert 1.4 <= ran - published < 1.5 + INTERVAL + SLACK


def test_a_user_denied_pubsub_still_schedules_and_the_mover_polls_instead(server, client):
    # Given a Redis user who may run every command on every key but use no pub/sub channel
    client.execute_command("ACL", "SETUSER", "nochan", "on", ">pw", "~*", "+@all", "resetchannels")
    url = server.url.replace("redis://", "redis://nochan:pw@", 1)
    as_user = redis.Redis.from_url(url)
    m = Mover(url, ["q"], INTERVAL, recheck=RECHECK)
    m.start()
    try:
        # When that user schedules a message due in 1 s (its wake-up PUBLISH is refused)
        due = redis_now(client) + 1
        script_keys, argv = schedule.add_args("q", [("acl", "t.x", json.dumps({"id": "acl"}))], at=due)
        as_user.eval(schedule.ADD_SCRIPT, len(script_keys), *script_keys, *argv)
        # Then it is scheduled, and the mover (refused SUBSCRIBE) reads the schedule every interval
        assert wait_queued(client, "acl", RECHECK / 2) - due < INTERVAL + SLACK
    finally:
        m.stop()
        as_user.close()
