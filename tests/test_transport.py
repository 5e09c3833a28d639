"""The worker transport's fetch script against a real redis-server (no worker process)."""

from __future__ import annotations

import json
import time

import pytest
from kombu.utils.json import loads

from earnevents import Event, message
from earnevents.worker.transport import FETCH

UNACKED, INDEX = "t-unacked", "t-unacked-index"
MAX_SIZE = 4 * 1024 * 1024


@pytest.fixture
def fetch(rclient, queue):
    rclient.delete(UNACKED, INDEX)
    script = rclient.register_script(FETCH)

    def run(want: int, *acks: str) -> list[tuple[bytes, str]]:
        reply = script(keys=[queue, UNACKED, INDEX], args=[want, MAX_SIZE, *acks])
        return [(item, tag.decode()) for item, tag in zip(reply[::2], reply[1::2], strict=True)]

    yield run
    rclient.delete(UNACKED, INDEX)


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


def test_items_it_cannot_record_are_returned_with_no_tag_and_not_recorded(rclient, queue, fetch):
    for garbage in (b"\x00not json", b"[1, 2, 3]", b'{"body": "x"}', b'{"properties": {"delivery_tag": 5}}'):
        rclient.lpush(queue, garbage)
    tags = publish(rclient, queue, 1)
    got = fetch(10)
    assert [tag for _, tag in got] == ["", "", "", "", tags[0]]
    assert got[0][0] == b"\x00not json"
    assert rclient.hlen(UNACKED) == 1 and rclient.zcard(INDEX) == 1
