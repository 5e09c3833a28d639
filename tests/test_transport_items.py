"""Refused queue items through the worker transport: a real kombu Connection against
redis-server, no worker process. Poison items mixed with good messages: the good
ones are delivered, the poison ones acknowledged, forgotten and dead-lettered."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
from kombu.utils.json import loads
from poison import MAX_SIZE, POISONS, decoy_tag, foreign, good

from earnevents import deadletters, keys
from earnevents.worker.transport import Channel

MODES = ["fetch", "move"]
"""fetch: items come in batches from the FETCH script; move: one by one through BLMOVE."""


@pytest.fixture
def connect(redis_url: str) -> Iterator[Any]:
    opened: list[kombu.Connection] = []

    def open_(**options: Any) -> kombu.Connection:
        conn = kombu.Connection(
            redis_url,
            transport="earnevents.worker.transport:Transport",
            transport_options={
                "max_message_size": MAX_SIZE,
                "dead_letter_max": 100,
                "visibility_timeout": 60,
                "priority_steps": [0],
                **options,
            },
        )
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        conn.release()


class Consuming:
    """One consumer of ``queue`` on its own channel; records what it is given."""

    def __init__(self, conn: kombu.Connection, queues: list[str], mode: str, ack: bool = True, prefetch: int = 100):
        self.conn = conn
        self.channel: Channel = conn.channel()
        if mode == "move":
            self.channel._fast_unavailable = True  # never FETCH: every item through BLMOVE
        self.channel.basic_qos(0, prefetch, False)
        self.got: list[kombu.Message] = []
        self.ack = ack
        self.consumer = kombu.Consumer(
            self.channel, queues=[kombu.Queue(q, no_declare=True) for q in queues], on_message=self.on_message
        )
        self.consumer.consume()

    def on_message(self, message: kombu.Message) -> None:
        self.got.append(message)
        if self.ack:
            message.ack()

    def drain(self, rclient: Any, queues: list[str], timeout: float = 10) -> None:
        """Take items until the queues are empty and one more read found nothing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.conn.drain_events(timeout=0.3)
            except TimeoutError:
                if not any(rclient.llen(q) for q in queues):
                    return
        raise TimeoutError("queue not drained")

    def ids(self) -> list[str]:
        return [m.headers["id"] for m in self.got]


def push(rclient: Any, queue: str, *items: bytes) -> None:
    for item in items:
        rclient.lpush(queue, item)  # LPUSH + RPOP: taken in push order


def unacked_tags(rclient: Any, channel: Channel) -> set[bytes]:
    return set(rclient.hkeys(channel.unacked_key)) | set(rclient.zrange(channel.unacked_index_key, 0, -1))


def dead(rclient: Any, queue: str) -> list[deadletters.DeadItem]:
    ids = rclient.zrange(keys.dead_index(queue), 0, -1)
    return [deadletters.DeadItem.from_json(rclient.hget(keys.dead_items(queue), i)) for i in ids]


def tag_of(item: bytes) -> str | None:
    try:
        return json.loads(item)["properties"]["delivery_tag"]
    except Exception:
        return None


@pytest.mark.parametrize("mode", MODES)
def test_poison_items_are_dropped_and_the_good_ones_in_the_same_fetch_delivered(connect, rclient, queue, mode):
    # Given every poison shape, each between two good messages on one queue
    poisons = {name: make(queue) for name, make in POISONS.items()}
    goods = []
    for i, item in enumerate(poisons.values()):
        g = good(queue, {"i": i})
        goods.append(g["headers"]["id"])
        push(rclient, queue, json.dumps(g).encode(), item)
    last = good(queue, {"i": "last"})
    goods.append(last["headers"]["id"])
    push(rclient, queue, json.dumps(last).encode())
    # When one consumer takes them all
    consuming = Consuming(connect(), [queue], mode)
    consuming.drain(rclient, [queue])
    # Then the good ones are delivered, in order, and nothing else
    assert consuming.ids() == goods
    # And every poison one is in the dead-letter list with its reason and (truncated) item
    entries = dead(rclient, queue)
    assert len(entries) == len(poisons)
    for entry, (name, item) in zip(entries, poisons.items(), strict=True):
        assert entry.queue == queue and entry.size == len(item), name
        assert entry.truncated == (len(item) > deadletters.RAW_MAX), name
        assert entry.raw.encode("utf-8", "replace")[:100] == item[:100].decode("utf-8", "replace").encode(), name
        assert entry.dropped_at.tzinfo is not None
    # And none is left unacknowledged or in an in-flight list
    channel = consuming.channel
    poison_tags = {t.encode() for t in map(tag_of, poisons.values()) if t}
    assert not poison_tags & unacked_tags(rclient, channel)
    assert rclient.llen(keys.inflight_list(queue, channel.consumer_id)) == 0
    # And none holds a prefetch slot
    assert channel.qos.can_consume_max_estimate() == 100


@pytest.mark.parametrize("mode", MODES)
def test_poison_items_never_stop_a_consumer_with_one_slot(connect, rclient, queue, mode):
    # Given a consumer that may hold one message at a time (celery -c 1)
    consuming = Consuming(connect(), [queue], mode, prefetch=1)
    # And every poison shape, each followed by a good message
    goods = []
    for make in POISONS.values():
        g = good(queue)
        goods.append(g["headers"]["id"])
        push(rclient, queue, make(queue), json.dumps(g).encode())
    # When it drains the queue
    consuming.drain(rclient, [queue])
    # Then every good message is delivered (no poison item kept the one slot) and the
    # poison ones are dead-lettered
    assert consuming.ids() == goods
    assert len(dead(rclient, queue)) == len(POISONS)


@pytest.mark.parametrize("mode", MODES)
def test_message_naming_another_queue_is_recorded_and_delivered_as_the_consuming_queues(connect, rclient, queue, mode):
    # Given a message on our queue whose routing key names another queue, behind a good one
    other = queue + "-other"
    push(rclient, queue, json.dumps(good(queue)).encode(), foreign(queue, other, {"n": 1}))
    # When it is taken and not yet acknowledged
    consuming = Consuming(connect(), [queue], mode, ack=False)
    consuming.drain(rclient, [queue])
    # Then it is delivered as our queue's
    assert len(consuming.got) == 2
    message = consuming.got[1]
    assert message.delivery_info["routing_key"] == queue and message.delivery_info["exchange"] == ""
    # And its unacknowledged record names our queue, where kombu's restore puts it back
    record = rclient.hget(consuming.channel.unacked_key, message.delivery_tag)
    _, exchange, routing_key = loads(record)
    assert (exchange, routing_key) == ("", queue)
    # And restoring it puts it back on our queue (where the consumer's pending read may
    # already have taken it again), never on the other one
    consuming.channel.qos.restore_by_tag(message.delivery_tag)
    inflight = keys.inflight_list(queue, consuming.channel.consumer_id)
    assert rclient.llen(other) == 0
    assert rclient.llen(queue) + rclient.llen(inflight) == 1


def test_several_queues_path_drops_poison_items_too(connect, rclient, queue):
    # Given a consumer of two queues (kombu's BRPOP path) and poison items on both
    second = queue + "-b"
    g1, g2 = good(queue), good(second)
    push(rclient, queue, POISONS["unknown body_encoding"](queue), json.dumps(g1).encode())
    push(rclient, second, POISONS["no headers.id"](second), json.dumps(g2).encode())
    # When it drains them
    consuming = Consuming(connect(), [queue, second], "fetch")
    consuming.drain(rclient, [queue, second])
    # Then both good messages are delivered and each poison item is dead-lettered under its queue
    assert sorted(consuming.ids()) == sorted([g1["headers"]["id"], g2["headers"]["id"]])
    assert [e.reason for e in dead(rclient, queue)] == ["unknown body encoding 'rot13' (expected 'base64')"]
    assert [e.reason for e in dead(rclient, second)] == ["headers.id missing or not a string"]
    assert not unacked_tags(rclient, consuming.channel) - {
        m.delivery_tag.encode() for m in consuming.got
    }  # only good ones, until their acks are sent


@pytest.mark.parametrize("mode", MODES)
def test_message_the_consumer_fails_to_take_is_acknowledged_and_dead_lettered(connect, rclient, queue, mode):
    # Given a consumer whose callback raises for one message (what Celery did with a bad timelimit)
    g1, bad, g2 = good(queue, {"n": 1}), good(queue, {"n": 2}), good(queue, {"n": 3})
    push(rclient, queue, *(json.dumps(m).encode() for m in (g1, bad, g2)))
    consuming = Consuming(connect(), [queue], mode, prefetch=1)
    take = consuming.on_message

    def picky(message: kombu.Message) -> None:
        if message.headers["id"] == bad["headers"]["id"]:
            raise TypeError("cannot take this one")
        take(message)

    consuming.consumer.on_message = picky
    # When it drains the queue
    consuming.drain(rclient, [queue])
    # Then the others are delivered, the slot of the failed one is free, and it is kept
    assert consuming.ids() == [g1["headers"]["id"], g2["headers"]["id"]]
    [entry] = dead(rclient, queue)
    assert "cannot take this one" in entry.reason and entry.task_id == bad["headers"]["id"]
    assert bad["properties"]["delivery_tag"].encode() not in unacked_tags(rclient, consuming.channel)
    assert consuming.channel.qos.can_consume_max_estimate() == 1


def test_message_rejected_without_requeue_is_dead_lettered(connect, rclient, queue):
    # Given a taken message that the consumer rejects without requeueing (Celery's
    # unknown-task, invalid-task and decode-error paths)
    g = good(queue)
    push(rclient, queue, json.dumps(g).encode())
    consuming = Consuming(connect(), [queue], "move", ack=False)
    consuming.drain(rclient, [queue])
    # When it is rejected
    consuming.got[0].reject(requeue=False)
    # Then it is forgotten, its slot freed, and it is kept as a dead letter
    [entry] = dead(rclient, queue)
    assert entry.task_id == g["headers"]["id"] and "rejected" in entry.reason
    assert json.loads(entry.raw)["headers"]["id"] == g["headers"]["id"]
    assert not unacked_tags(rclient, consuming.channel)
    assert consuming.channel.qos.can_consume_max_estimate() == 100


def test_dead_letter_list_is_capped_oldest_dropped_first(connect, rclient, queue):
    # Given a dead-letter cap of 3
    consuming = Consuming(connect(dead_letter_max=3), [queue], "fetch")
    # When five poison items are dropped
    items = [b"not json %d" % i for i in range(5)]
    push(rclient, queue, *items)
    consuming.drain(rclient, [queue])
    # Then the last three are kept
    entries = dead(rclient, queue)
    assert [e.raw for e in entries] == ["not json 2", "not json 3", "not json 4"]
    assert rclient.hlen(keys.dead_items(queue)) == 3


def test_oversized_item_is_kept_truncated(connect, rclient, queue):
    # Given an item far over the limit
    item = POISONS["oversized"](queue)
    push(rclient, queue, item)
    # When it is dropped
    Consuming(connect(), [queue], "fetch").drain(rclient, [queue])
    # Then its record keeps its size and only its first RAW_MAX bytes
    [entry] = dead(rclient, queue)
    assert entry.size == len(item) and entry.truncated
    assert len(entry.raw.encode()) == deadletters.RAW_MAX
    assert entry.reason == f"{len(item)} bytes, over the maximum message size of {MAX_SIZE} bytes"


@pytest.mark.parametrize("mode", MODES)
def test_message_whose_only_plain_delivery_tag_key_is_a_decoy_is_recorded_under_its_own_tag(
    connect, rclient, queue, mode
):
    # Given a valid message whose real delivery_tag key is spelled with an escape and whose
    # headers carry a decoy "delivery_tag" (the key the fetch script reads without decoding)
    # behind a good one (the first item of a queue is taken by BLMOVE, the next by FETCH)
    item = decoy_tag(queue)
    real, first = json.loads(item), good(queue)
    tag, decoy = real["properties"]["delivery_tag"], real["headers"]["delivery_tag"]
    push(rclient, queue, json.dumps(first).encode(), item)
    # When a consumer takes them and has not acknowledged them yet
    consuming = Consuming(connect(), [queue], mode, ack=False)
    consuming.drain(rclient, [queue])
    # Then it is delivered, recorded as unacknowledged under its own tag only (its restore
    # record is the item), and neither dead-lettered nor left in the in-flight list
    assert consuming.ids() == [first["headers"]["id"], real["headers"]["id"]]
    assert unacked_tags(rclient, consuming.channel) == {tag.encode(), first["properties"]["delivery_tag"].encode()}
    assert loads(rclient.hget(consuming.channel.unacked_key, tag))[0] == real
    assert decoy.encode() not in unacked_tags(rclient, consuming.channel)
    assert dead(rclient, queue) == []
    assert rclient.llen(keys.inflight_list(queue, consuming.channel.consumer_id)) == 0
    # And the acknowledgements forget them
    for taken in consuming.got:
        taken.ack()
    consuming.channel._flush_acks()
    assert not unacked_tags(rclient, consuming.channel)


def test_messages_coming_one_at_a_time_are_taken_by_blocking_moves_only(connect, rclient, queue):
    # Given a consumer waiting on an empty queue, counting the fetch scripts it reads replies of
    consuming = Consuming(connect(), [queue], "fetch", prefetch=10)
    channel, fetches = consuming.channel, []
    read_fetched = channel._read_fetched

    def counted(*args: Any, **kwargs: Any) -> bool:
        fetches.append(1)
        return read_fetched(*args, **kwargs)

    channel._read_fetched = counted  # type: ignore[method-assign]
    # When messages come one at a time, each taken before the next is published
    sent = []
    for i in range(5):
        g = good(queue, {"i": i})
        sent.append(g["headers"]["id"])
        push(rclient, queue, json.dumps(g).encode())
        consuming.drain(rclient, [queue])
        assert consuming.ids() == sent
    # Then no fetch script ran: the queue was empty each time a message was recorded, so the
    # consumer blocked again at once instead of first trying a FETCH that would find nothing
    assert fetches == []
    # And once messages queue up behind the one it takes, the rest come by the fetch script
    burst = [good(queue, {"burst": i}) for i in range(5)]
    push(rclient, queue, *(json.dumps(g).encode() for g in burst))
    consuming.drain(rclient, [queue])
    assert consuming.ids() == sent + [g["headers"]["id"] for g in burst]
    assert fetches
    assert not unacked_tags(rclient, channel) - {m.delivery_tag.encode() for m in consuming.got}


@pytest.mark.parametrize("mode", [*MODES, "several"])
def test_items_sharing_a_delivery_tag_each_get_their_own_unacknowledged_record(connect, rclient, queue, mode):
    # Given one message pushed three times (a foreign publisher's retry, or a hostile copy of a
    # message that another consumer holds: the same delivery tag), whose tag is already
    # recorded as unacknowledged by a consumer (of another queue) that has not acknowledged it
    item = json.dumps(good(queue)).encode()
    tag = tag_of(item)
    queues = [queue, f"{queue}-other"] if mode == "several" else [queue]
    held_queue = f"{queue}-held"
    holder = Consuming(connect(), [held_queue], "move" if mode == "several" else mode, ack=False)
    push(rclient, held_queue, item)
    holder.drain(rclient, [held_queue])
    held = rclient.hget(holder.channel.unacked_key, tag)
    assert held is not None
    # When another consumer takes two more copies and does not acknowledge them yet
    push(rclient, queue, item, item)
    consuming = Consuming(connect(), queues, "move" if mode == "several" else mode, ack=False)
    consuming.drain(rclient, [queue])
    # Then each copy is delivered under a delivery tag of its own, and each has a record of its
    # own that restores it: the holder's record is untouched
    tags = [m.delivery_tag for m in consuming.got]
    assert len(consuming.got) == 2 and len({tag, *tags}) == 3
    assert rclient.hget(holder.channel.unacked_key, tag) == held
    for taken in consuming.got:
        m, _, routing_key = loads(rclient.hget(consuming.channel.unacked_key, taken.delivery_tag))
        assert m["headers"]["id"] == json.loads(item)["headers"]["id"] and routing_key == queue
        assert m["properties"]["delivery_tag"] == taken.delivery_tag
    assert rclient.llen(keys.inflight_list(queue, consuming.channel.consumer_id)) == 0
    # And acknowledging one copy forgets only its own record
    consuming.got[0].ack()
    consuming.channel._flush_acks()
    assert unacked_tags(rclient, consuming.channel) == {tag.encode(), tags[1].encode()}
    holder.got[0].ack()
    holder.channel._flush_acks()
    assert unacked_tags(rclient, consuming.channel) == {tags[1].encode()}
    assert dead(rclient, queue) == []
