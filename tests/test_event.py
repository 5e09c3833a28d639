"""Event construction and the typed wire codec."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from decimal import Decimal

import pytest
from bson import ObjectId

from earnevents import Event
from earnevents.event import TAG, decode, encode


def roundtrip(value):
    return decode(json.loads(json.dumps(encode(value))))


def test_event_gets_unique_id_and_aware_utc_timestamp():
    a, b = Event("user.created", {}), Event("user.created", {})
    assert a.id != b.id and isinstance(a.id, str)
    assert a.timestamp.tzinfo is not None and a.timestamp.utcoffset() == dt.timedelta(0)


def test_metadata_defaults_to_empty_dict():
    assert Event("x.y", {}).metadata == {}


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name_is_a_value_error(name):
    with pytest.raises(ValueError, match="non-empty"):
        Event(name, {})


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"name": 5, "data": {}}, TypeError),
        ({"name": "a", "data": [1]}, TypeError),
        ({"name": "a", "data": {}, "metadata": "m"}, TypeError),
        ({"name": "a", "data": {}, "timestamp": dt.datetime(2020, 1, 1)}, ValueError),
    ],
)
def test_bad_fields_are_refused(kwargs, exc):
    with pytest.raises(exc):
        Event(**kwargs)


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=dt.timezone.utc),
        dt.datetime(2026, 1, 2, 3, 4, 5),
        dt.datetime(2026, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.date(2026, 1, 2),
        dt.time(3, 4, 5),
        dt.timedelta(days=-1, seconds=5, microseconds=7),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("1.10"),
        ObjectId(),
        b"\x00\xffbytes",
        (1, "a", None),
    ],
)
def test_typed_values_keep_type_and_value(value):
    out = roundtrip({"v": value})["v"]
    assert type(out) is type(value)
    assert out == value


def test_typed_values_nested_in_lists_and_dicts():
    oid, when = ObjectId(), dt.datetime.now(dt.timezone.utc)
    data = {"a": [{"b": [when, (oid, Decimal("2"))]}], "c": {"d": {"e": uuid.uuid4()}}}
    assert roundtrip(data) == data


def test_user_dict_with_the_tag_key_is_not_misread():
    data = {"x": {TAG: "datetime", "v": "2020-01-01T00:00:00"}}
    assert roundtrip(data) == data


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"s": {1, 2}}, "data['s'] is a set"),
        ({"o": object()}, "data['o'] is a object"),
        ({"deep": [{"x": 1j}]}, "data['deep'][0]['x'] is a complex"),
        ({"k": {1: "int key"}}, "data['k'] has a int key 1"),
    ],
)
def test_unserializable_data_is_a_type_error_naming_the_place(data, where):
    with pytest.raises(TypeError, match="^" + re.escape(where)):
        Event("x.y", data).to_wire()


def test_event_round_trips_through_the_wire_form():
    event = Event("order.paid", {"amount": Decimal("9.99")}, metadata={"trace": "t1"})
    again = Event.from_wire(json.loads(json.dumps(event.to_wire())))
    assert again == event


def test_malformed_wire_form_is_a_value_error():
    with pytest.raises(ValueError, match="malformed"):
        Event.from_wire({"name": "x"})


# --- bounds: nesting depth and self-references ------------------------------------

DEPTH = 100
"""The documented nesting limit (earnevents.event.MAX_DEPTH); data itself is level 1."""


def nested(levels: int) -> dict:
    """A dict nested ``levels`` deep, itself counting as level 1: {'a': {'a': ... {}}}."""
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def test_nesting_up_to_the_limit_is_carried_and_beyond_it_is_a_type_error_naming_the_place():
    # Given data exactly at the limit, data one level beyond it, and a list nested far deeper
    at_limit = nested(DEPTH)
    too_deep = {"list": [nested(DEPTH - 1)]}  # levels: data, the list, then DEPTH - 1 more
    deeper: list = []
    for _ in range(50_000):
        deeper = [deeper]
    # Then the first survives the wire form
    assert Event.from_wire(json.loads(json.dumps(Event("x.y", at_limit).to_wire()))).data == at_limit
    # And the others are TypeErrors naming where they went too deep (not RecursionError)
    with pytest.raises(TypeError, match=r"^data\['list'\]\[0\](\['a'\]){98} is nested 101 levels deep.* 100 levels"):
        Event("x.y", too_deep).to_wire()
    with pytest.raises(TypeError, match=r"^data\['x'\](\[0\]){99} is nested 101 levels deep"):
        Event("x.y", {"x": deeper}).to_wire()
    with pytest.raises(TypeError, match=r"^metadata\['m'\](\['a'\]){99} is nested 101 levels deep"):
        Event("x.y", {}, metadata={"m": nested(DEPTH)}).to_wire()


def test_a_container_holding_itself_is_a_type_error_naming_both_places():
    # Given data and metadata that contain themselves, directly or further down
    data: dict = {"a": {"b": [1]}}
    data["a"]["b"].append(data)
    metadata: dict = {}
    metadata["self"] = metadata
    loop: list = []
    loop.append(loop)
    # Then each is a TypeError saying where the cycle closes
    with pytest.raises(TypeError, match=re.escape("data['a']['b'][1] is data itself")):
        Event("x.y", data).to_wire()
    with pytest.raises(TypeError, match=re.escape("metadata['self'] is metadata itself")):
        Event("x.y", {}, metadata=metadata).to_wire()
    with pytest.raises(TypeError, match=re.escape("data['t'][0][0] is data['t'][0] itself")):
        Event("x.y", {"t": (loop,)}).to_wire()
    # But the same container twice side by side is no cycle
    shared = [1, 2]
    assert Event("x.y", {"a": shared, "b": [shared, shared]}).to_wire()["data"] == {"a": [1, 2], "b": [[1, 2], [1, 2]]}
