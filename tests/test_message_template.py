"""The publish fast path writes a message into a per-queue template (message._template):
its text must be what json.dumps of the whole envelope gives, for every queue."""

from __future__ import annotations

import base64
import json
import uuid

from earnevents import ids, message


def _reference(wires, queue, task_id, handler, attempt, policy, tag, copy_id):
    """The envelope as json.dumps writes it (how message.py built it before the template)."""
    body = json.dumps(
        [wires, {"handler": handler, "attempt": attempt, "retry_policy": policy}, message._EMBED], separators=(",", ":")
    )
    label = f"{wires[0]['name']} {wires[0]['id']}" + (f" and {len(wires) - 1} more" if len(wires) > 1 else "")
    envelope = message._envelope_fields(
        queue,
        body=base64.b64encode(body.encode("utf-8")).decode("ascii"),
        task_id=task_id,
        shadow=message.shadow_name([w["name"] for w in wires], handler),
        retries=attempt,
        argsrepr=f"[{label!r}]",
        kwargsrepr=repr({"handler": handler, "attempt": attempt}),
        delivery_tag=tag,
        copy_id=copy_id,
    )
    return json.dumps(envelope, separators=(",", ":"))


CASES = [
    ([{"id": "e1", "name": "user.created", "data": {"k": "v"}}], "default", "e1", None, 0, None),
    (
        [{"id": "e2", "name": "n\u00e9\u2028", "data": {"q": '"\\'}}],
        'q"u\u00e9\\x',
        'id"\u00e9',
        "app.h\u00e9",
        3,
        {"n": 2},
    ),
    ([{"id": "a", "name": "x"}, {"id": "b", "name": "y"}], "other", "t" * 32, None, 0, {"max_retries": 1}),
]


def test_template_text_is_json_dumps_of_the_envelope_for_each_queue():
    for _ in range(2):  # the second round comes from the cached templates
        for wires, queue, task_id, handler, attempt, policy in CASES:
            text = message._envelope(wires, queue, task_id, handler, attempt, policy)
            props = json.loads(text)["properties"]
            assert props["delivery_info"]["routing_key"] == queue  # no template leaks between queues
            expected = _reference(
                wires, queue, task_id, handler, attempt, policy, props["delivery_tag"], props[message.COPY_ID]
            )
            assert text == expected


def test_ids_are_version_4_uuids():
    for _ in range(200):
        tag, hex_id = ids.uuid4_str(), ids.uuid4_hex()
        assert str(uuid.UUID(tag)) == tag and uuid.UUID(hex_id).hex == hex_id
        for value in (uuid.UUID(tag), uuid.UUID(hex_id)):
            assert value.version == 4 and value.variant == uuid.RFC_4122
    assert len({ids.uuid4_hex() for _ in range(1000)}) == 1000
