"""The Celery message earnevents builds matches what Celery itself puts on Redis."""

from __future__ import annotations

import base64
import json
import uuid

from celery import Celery

from earnevents import Event, ids, message
from earnevents.keys import TASK_NAME


def celery_envelope(redis_url: str, rclient, queue: str) -> dict:
    app = Celery("reference", broker=redis_url)
    app.conf.task_default_queue = queue
    app.send_task(TASK_NAME, args=[{"x": 1}], kwargs={"handler": None}, task_id="ref")
    app.close()
    return json.loads(rclient.rpop(queue))


def test_envelope_has_every_field_celery_sets(redis_url, rclient, queue):
    reference = celery_envelope(redis_url, rclient, queue)
    ours = json.loads(message.build(Event("a.b", {}).to_wire(), queue=queue, task_id="t1"))
    assert set(ours) == set(reference)
    assert set(ours["headers"]) == set(reference["headers"])
    assert set(ours["properties"]) - {"reply_to", message.COPY_ID} <= set(reference["properties"])
    assert ours["properties"]["delivery_info"] == reference["properties"]["delivery_info"]
    assert ours["headers"]["task"] == TASK_NAME and ours["headers"]["id"] == "t1"


def test_body_is_args_kwargs_embed():
    event = Event("a.b", {"k": 1})
    env = json.loads(
        message.build(
            event.to_wire(), queue="q", task_id="t", handler="m.h", attempt=2, retry_policy={"max_retries": 1}
        )
    )
    args, kwargs, embed = json.loads(base64.b64decode(env["body"]))
    assert args == [event.to_wire()]
    assert kwargs == {"handler": "m.h", "attempt": 2, "retry_policy": {"max_retries": 1}}
    assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}
    assert env["headers"]["retries"] == 2


def test_each_message_gets_its_own_delivery_tag():
    wire = Event("a.b", {}).to_wire()
    tags = {json.loads(message.build(wire, queue="q", task_id="t"))["properties"]["delivery_tag"] for _ in range(3)}
    assert len(tags) == 3


def test_each_message_gets_its_own_copy_id_which_owns_its_claims_across_redeliveries():
    # The transport gives a message back under a new delivery tag; the copy id stays.
    wire = Event("a.b", {}).to_wire()
    built = [json.loads(message.build(wire, queue="q", task_id="t"))["properties"] for _ in range(3)]
    assert len({p[message.COPY_ID] for p in built}) == 3


def test_another_copy_gets_a_new_copy_id_and_a_new_delivery_tag_and_nothing_else_changes():
    # A publish retried after a lost reply pushes another copy. A shared delivery tag would
    # share one unacknowledged record: acknowledging the copy skipped as held would erase the
    # record of the copy running the jobs, and a worker dying with that one would lose it
    # (seen in `make chaos` with faults: four jobs of one event nowhere after a Redis restart).
    payload = message.build(Event("a.b", {"k": 1}).to_wire(), queue="q", task_id="t")
    first, second = json.loads(payload), json.loads(message.new_copy(payload))
    assert second["properties"][message.COPY_ID] != first["properties"][message.COPY_ID]
    assert second["properties"]["delivery_tag"] != first["properties"]["delivery_tag"]
    uuid.UUID(second["properties"]["delivery_tag"])  # a delivery tag as every message has
    for changed in (first, second):
        del changed["properties"][message.COPY_ID], changed["properties"]["delivery_tag"]
    assert second == first


def test_derived_ids_are_stable_and_distinct_per_kind_and_attempt():
    assert message.derived_id("retry", "e", "h", 1) == message.derived_id("retry", "e", "h", 1)
    assert len({message.derived_id(k, "e", "h", a) for k in ("retry", "failed") for a in (1, 2)}) == 4


def shadow_of(payload: str) -> str:
    return json.loads(payload)["headers"]["shadow"]


def test_shadow_names_the_event_and_handler_celery_tools_show():
    event = Event("user.created", {}).to_wire()
    # A fresh event: its name; one handler's job (retry, replay, retry_job): event -> handler
    assert shadow_of(message.build(event, queue="q", task_id="t")) == "user.created"
    assert shadow_of(message.build(event, queue="q", task_id="t", handler="app.h.welcome")) == (
        "user.created -> app.h.welcome"
    )
    # A packed message: how many events, each name once, in order
    wires = [Event(name, {}).to_wire() for name in ("user.created", "user.deleted", "user.created")]
    assert shadow_of(message.build_packed(wires, queue="q", task_id="t")) == "3 events: user.created, user.deleted"


def test_shadow_is_cut_to_its_maximum_length():
    long_names = [Event("e" + "x" * 190 + f".n{i}", {}).to_wire() for i in range(5)]
    packed = shadow_of(message.build_packed(long_names, queue="q", task_id="t"))
    assert len(packed) <= message.SHADOW_MAX and packed.startswith("5 events: e") and packed.endswith(", ...")
    one = shadow_of(message.build(long_names[0], queue="q", task_id="t", handler="m." + "h" * 190))
    assert len(one) == message.SHADOW_MAX and one.endswith("...")


def test_derived_ids_are_the_version_5_uuids_they_always_were():
    # ids.uuid5_hex hashes with CPython's own SHA-1 (no OpenSSL in pool processes): same ids as uuid.uuid5
    namespace = uuid.UUID("5d1c3c2e-7a52-4a38-9b1e-4b0f3c7e2a10")
    for name in ("", "job/e1/app.handler/0", "failed/é/ü/3", "x" * 1000):
        assert ids.uuid5_hex(namespace, name) == uuid.uuid5(namespace, name).hex
    assert message.derived_id("retry", "e1", "h", 2) == uuid.uuid5(message._NAMESPACE, "retry/e1/h/2").hex
