"""The worker transport's fetch script against a real redis-server (no worker process)."""

from __future__ import annotations

import json
import time

import pytest
from kombu.utils.json import loads

from earnevents import Event, message
from earnevents.worker.transport import FETCH

UNACKED, INDEX, INFLIGHT = "t-unacked", "t-unacked-index", "t-inflight"
MAX_SIZE = 4 * 1024 * 1024


@pytest.fixture
def fetch(rclient, queue):
    rclient.delete(UNACKED, INDEX, INFLIGHT)
    script = rclient.register_script(FETCH)

    def run(want: int, *acks: str, stamp: float | None = None) -> list[tuple[bytes, str]]:
        now = time.time() if stamp is None else stamp
        reply = script(keys=[queue, UNACKED, INDEX, INFLIGHT], args=[want, MAX_SIZE, repr(now), *acks])
        return [(item, tag.decode()) for item, tag in zip(reply[::2], reply[1::2], strict=True)]

    yield run
    rclient.delete(UNACKED, INDEX, INFLIGHT)


def publish(rclient, queue: str, n: int) -> list[str]:
    """LPUSH ``n`` messages as the bus does; returns their delivery tags in queue order."""
    tags = []
    for i in range(n):
        raw = message.build(Event("t.x", {"i": i}).to_wire(), queue=queue, task_id=f"task-{i}")
        rclient.lpush(queue, raw)
        tags.append(json.loads(raw)["properties"]["delivery_tag"])
    return tags


def test_takes_up_to_want_messages_in_queue_order_and_records_them_as_kombu_does(rclient, queue, fetch):
    tags = publish(rclient, queue, 3)
    before = time.time()
    got = fetch(2)
    assert [tag for _, tag in got] == tags[:2]
    assert rclient.llen(queue) == 1
    for item, tag in got:
        m, exchange, routing_key = loads(rclient.hget(UNACKED, tag))  # what kombu's restore reads
        assert m == json.loads(item) and exchange == "" and routing_key == queue
        assert before - 1 < rclient.zscore(INDEX, tag) < time.time() + 1
    assert [tag for _, tag in fetch(10)] == tags[2:]
    assert fetch(10) == [] and rclient.hlen(UNACKED) == 3


def test_applies_the_acknowledgements_it_carries_even_when_the_queue_is_empty(rclient, queue, fetch):
    tags = publish(rclient, queue, 3)
    fetch(3)
    assert fetch(5, tags[0], tags[2]) == []
    assert [t.decode() for t in rclient.hkeys(UNACKED)] == [tags[1]]
    assert [t.decode() for t in rclient.zrange(INDEX, 0, -1)] == [tags[1]]


def test_items_it_cannot_record_are_returned_with_no_tag_and_kept_in_the_inflight_list(rclient, queue, fetch):
    garbage = [b"\x00not json", b"[1, 2, 3]", b'{"body": "x"}', b'{"properties": {"delivery_tag": 5}}']
    for item in garbage:
        rclient.lpush(queue, item)
    tags = publish(rclient, queue, 1)
    got = fetch(10)
    assert [tag for _, tag in got] == ["", "", "", "", tags[0]]
    assert got[0][0] == b"\x00not json"
    assert rclient.hlen(UNACKED) == 1 and rclient.zcard(INDEX) == 1
    # Never in neither place: what the script cannot record waits in the in-flight list.
    assert sorted(rclient.lrange(INFLIGHT, 0, -1)) == sorted(garbage)


def test_an_item_over_the_size_limit_is_never_decoded_nor_recorded(rclient, queue, fetch):
    big = json.loads(message.build(Event("t.x", {}).to_wire(), queue=queue, task_id="big"))
    big["headers"]["pad"] = "x" * MAX_SIZE
    rclient.lpush(queue, json.dumps(big))
    [(item, tag)] = fetch(10)
    assert tag == "" and len(item) > MAX_SIZE
    assert rclient.hlen(UNACKED) == 0 and rclient.llen(INFLIGHT) == 1


def test_a_message_is_recorded_under_the_queue_it_was_taken_from(rclient, queue, fetch):
    m = json.loads(message.build(Event("t.x", {}).to_wire(), queue="another-queue", task_id="x"))
    rclient.lpush(queue, json.dumps(m))
    [(_, tag)] = fetch(1)
    _, exchange, routing_key = loads(rclient.hget(UNACKED, tag))
    assert (exchange, routing_key) == ("", queue)


def test_stamps_the_records_with_the_time_it_is_given(rclient, queue, fetch):
    # The consumer passes Redis' time as its RedisClock carries it (no TIME call per fetch)
    [tag] = publish(rclient, queue, 1)
    fetch(1, stamp=1234567890.25)
    assert rclient.zscore(INDEX, tag) == 1234567890.25


def test_reads_the_tag_of_messages_written_with_or_without_spaces(rclient, queue, fetch):
    # earnevents writes compact JSON, kombu and Celery clients ", " and ": "
    compact = json.loads(message.build(Event("t.x", {}).to_wire(), queue=queue, task_id="a"))
    spaced = json.loads(message.build(Event("t.x", {}).to_wire(), queue=queue, task_id="b"))
    rclient.lpush(queue, json.dumps(compact, separators=(",", ":")), json.dumps(spaced))
    got = fetch(2)
    assert [tag for _, tag in got] == [compact["properties"]["delivery_tag"], spaced["properties"]["delivery_tag"]]


def test_an_item_naming_delivery_tag_twice_is_decoded_and_recorded_under_its_properties_tag(rclient, queue, fetch):
    m = json.loads(message.build(Event("t.x", {}).to_wire(), queue=queue, task_id="a"))
    m["headers"]["delivery_tag"] = "a decoy"
    rclient.lpush(queue, json.dumps(m))
    [(_, tag)] = fetch(1)
    assert tag == m["properties"]["delivery_tag"]
    assert rclient.hkeys(UNACKED) == [tag.encode()]


def test_a_tag_written_with_escapes_is_read_decoded(rclient, queue, fetch):
    m = json.loads(message.build(Event("t.x", {}).to_wire(), queue=queue, task_id="a"))
    m["properties"]["delivery_tag"] = 'tag "quoted" \\ é'
    rclient.lpush(queue, json.dumps(m))
    [(_, tag)] = fetch(1)
    assert tag == 'tag "quoted" \\ é'


def test_never_overwrites_a_record_an_item_with_the_same_tag_already_has(rclient, queue, fetch):
    # Given a message recorded as unacknowledged (a worker holds it), and on the queue a copy of
    # it and a crafted item whose only plain "delivery_tag" key (a decoy) names the same tag
    [tag] = publish(rclient, queue, 1)
    [(_, recorded)] = fetch(1)
    held = rclient.hget(UNACKED, tag)
    item = json.dumps(loads(held)[0])  # the record holds the item (and the queue's routing)
    crafted = json.loads(message.build(Event("t.x", {}).to_wire(), queue=queue, task_id="c"))
    crafted["headers"]["delivery_tag"] = tag
    own = '"delivery_tag": "' + crafted["properties"]["delivery_tag"]
    crafted_item = json.dumps(crafted).replace(own, own.replace("_", "\\u005f", 1))
    assert json.loads(crafted_item) == crafted and crafted_item.count('"delivery_tag"') == 1
    rclient.lpush(queue, item, crafted_item)
    # When they are fetched
    got = fetch(10)
    # Then neither is recorded (the consumer records them under tags of their own): they wait in
    # the in-flight list, and the holder's record is untouched
    assert recorded == tag and [t for _, t in got] == ["", ""]
    assert rclient.hget(UNACKED, tag) == held and rclient.hlen(UNACKED) == 1
    assert sorted(rclient.lrange(INFLIGHT, 0, -1)) == sorted([item.encode(), crafted_item.encode()])
