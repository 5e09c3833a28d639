"""The outbox relay against real Redis and the MongoDB stand-in (no worker process)."""

from __future__ import annotations

import json

import pytest
from pymongo import MongoClient

from earnevents import Event, message, outbox
from earnevents.worker.relay import Relay

pytestmark = pytest.mark.mongo


def test_a_message_relayed_again_goes_as_a_copy_of_its_own(redis_url, mongo_url, mongo_db, rclient, queue):
    # Given an outbox document, relayed once
    event = Event("t.relayed", {})
    payload = message.build(event.to_wire(), queue=queue, task_id=event.id)
    docs = outbox.documents([(event.id, event.name, payload)], queue, None)
    col = MongoClient(mongo_url)[mongo_db][outbox.COLLECTION]
    relay = Relay(redis_url, mongo_url, mongo_db, [queue], 1.0)
    try:
        col.insert_many([dict(d) for d in docs])
        assert relay.relay_once() == 1
        # When it is relayed again (a relay that crashed between its push and its delete)
        col.insert_many([dict(d) for d in docs])
        assert relay.relay_once() == 1
    finally:
        relay.close()
        col.database.client.close()
    # Then the queue holds two copies of the message, each with a copy id of its own, so the
    # workers' job claims run its handlers once
    items = [json.loads(raw) for raw in rclient.lrange(queue, 0, -1)]
    assert [m["headers"]["id"] for m in items] == [event.id, event.id]
    assert len({m["properties"][message.COPY_ID] for m in items}) == 2
