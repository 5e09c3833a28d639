"""define_event, DefinedEvent and earnevents.registry: schemas, codes, duplicates, listing,
and what publish does with them (validation, strict mode)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pydantic
import pytest

import earnevents
from earnevents import Event, define_event, registry
from earnevents.definitions import EventRegistry
from earnevents.handlers import HandlerRegistry


@pytest.fixture
def defined() -> Iterator[list[str]]:
    """Names defined by the test, forgotten afterwards (the registry is process-wide)."""
    names: list[str] = []
    yield names
    for name in names:
        if name in registry:
            registry.unregister(name)


def unique(prefix: str = "t") -> str:
    return f"{prefix}.ev{uuid.uuid4().hex[:10]}"


class Paid(pydantic.BaseModel):
    order_id: int
    total: Decimal
    paid_at: dt.datetime | None = None


def define(defined: list[str], name: str, **kwargs: Any) -> earnevents.DefinedEvent:
    definition = define_event(name, **kwargs)
    defined.append(name)
    return definition


# --- definitions ----------------------------------------------------------------------


def test_define_event_returns_a_frozen_definition_listed_by_the_registry(defined):
    name = unique()
    codes = {"PAID": {"type": "outcome", "level": "high", "description": "Paid", "order": 10, "selectable_by": []}}
    definition = define(defined, name, schema=Paid, description="An order was paid", codes=codes, team="billing")

    assert (definition.name, definition.schema, definition.description) == (name, Paid, "An order was paid")
    assert definition.codes == codes and definition.metadata == {"team": "billing"}
    assert registry.get(name) is definition and registry[name] is definition and name in registry
    with pytest.raises(AttributeError):
        definition.description = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        definition.codes["PAID"]["level"] = "low"  # type: ignore[index]
    codes["PAID"]["level"] = "low"  # the caller's dict is copied
    assert definition.codes["PAID"]["level"] == "high"


def test_calling_a_definition_builds_a_validated_event_whose_types_survive_the_wire(defined):
    OrderPaid = define(defined, unique(), schema=Paid)
    when = dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.timezone.utc)

    event = OrderPaid(order_id="42", total="19.90", paid_at=when)

    assert isinstance(event, Event) and event.name == OrderPaid.name
    assert event.data == {"order_id": 42, "total": Decimal("19.90"), "paid_at": when}
    back = Event.from_wire(json.loads(json.dumps(event.to_wire())))
    assert back.data == event.data
    assert type(back.data["total"]) is Decimal and type(back.data["paid_at"]) is dt.datetime
    assert OrderPaid.load(back) == Paid(order_id=42, total=Decimal("19.90"), paid_at=when)


def test_data_that_does_not_fit_the_schema_is_an_error_naming_event_and_fields(defined):
    OrderPaid = define(defined, unique(), schema=Paid)

    with pytest.raises(earnevents.EventValidationError) as info:
        OrderPaid(order_id="many", paid_at="soon")

    message = str(info.value)
    assert OrderPaid.name in message and "Paid" in message
    assert "data['order_id']" in message and "data['total']: Field required" in message
    assert "data['paid_at']" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, earnevents.EarnEventsError)
    assert {error["loc"] for error in info.value.errors} == {("order_id",), ("total",), ("paid_at",)}


def test_schema_values_the_codec_does_not_carry_are_sent_in_their_json_form(defined):
    class Colour(enum.Enum):
        RED = "red"

    class Shape(pydantic.BaseModel):
        colour: Colour
        tags: set[str]
        site: pydantic.AnyUrl
        ids: tuple[uuid.UUID, ...] = ()

    Drawn = define(defined, unique(), schema=Shape)
    one = uuid.uuid4()

    event = Drawn(colour="red", tags=["a"], site="https://example.com/x", ids=[str(one)])

    assert event.data == {"colour": "red", "tags": ["a"], "site": "https://example.com/x", "ids": (one,)}
    Event.from_wire(event.to_wire())  # the codec takes all of it


def test_a_definition_without_schema_takes_any_data():
    name = unique()
    try:
        Note = define_event(name, description="free text")
        assert Note(text="hi", n=1, self="me").data == {"text": "hi", "n": 1, "self": "me"}
        assert Note.schema is None
    finally:
        registry.unregister(name)


def test_defining_a_name_again_with_the_same_contents_returns_the_first_definition(defined):
    name = unique()
    first = define(defined, name, schema=Paid, description="d", codes={"A": {"level": 1}}, team="x")

    # The same class made again, as a module imported again (or run as __main__) makes it.
    annotations = {"order_id": int, "total": Decimal, "paid_at": dt.datetime | None}
    Paid2 = type("Paid", (pydantic.BaseModel,), {"__annotations__": annotations, "paid_at": None})
    assert Paid2 is not Paid
    again = define_event(name, schema=Paid2, description="d", codes={"A": {"level": 1}}, team="x")

    assert again is first


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        ({"description": "other"}, "description"),
        ({"codes": {"A": {"level": 2}}}, "codes"),
        ({"team": "y"}, "metadata"),
        ({"schema": None}, "schema"),
    ],
)
def test_defining_a_name_again_with_other_contents_is_an_error(defined, change, differs):
    name = unique()
    given: dict[str, Any] = {"schema": Paid, "description": "d", "codes": {"A": {"level": 1}}, "team": "x"}
    define(defined, name, **given)

    with pytest.raises(earnevents.EventDefinitionError, match=f"{name}.*{differs}"):
        define_event(name, **{**given, **change})


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"schema": dict}, TypeError, "pydantic model class"),
        ({"description": 3}, TypeError, "description must be a str"),
        ({"codes": ["PAID"]}, TypeError, "codes must be a dict"),
        ({"codes": {"PAID": "high"}}, TypeError, "codes\\['PAID'\\] must be a dict"),
        ({"codes": {"has space": {}}}, ValueError, "code 'has space'"),
        ({"codes": {"PAID": {"order": "1"}}}, TypeError, "'order'\\] must be an int"),
        ({"codes": {"PAID": {"selectable_by": "admin"}}}, TypeError, "selectable_by"),
        ({"codes": {"PAID": {"description": None}}}, TypeError, "'description'\\] must be a str"),
        ({"codes": {"PAID": {"roles": {1, 2}}}}, TypeError, "codes\\['PAID'\\]\\['roles'\\] is a set"),
        ({"owner": object()}, TypeError, "metadata\\['owner'\\] is a object"),
    ],
)
def test_define_event_refuses_arguments_of_the_wrong_kind_naming_them(kwargs, error, text):
    name = unique()
    with pytest.raises(error, match=text):
        define_event(name, **kwargs)
    assert name not in registry


@pytest.mark.parametrize("name", ["", "user created", "user.*", 3])
def test_define_event_takes_event_names_only(name):
    with pytest.raises((TypeError, ValueError)):
        define_event(name)


# --- the registry's listing -----------------------------------------------------------


def _handler(name: str) -> Any:
    def func(event: Event) -> None:
        pass

    func.__qualname__ = name
    func.__module__ = "app.handlers"
    return func


@dataclasses.dataclass
class Sub:
    """A subscription as the registry reads it from the handler registry (patterns and
    receivers come with @on and wildcards: the registry only reads these attributes)."""

    name: str
    event_name: str
    sender: str | None = None
    receiver: bool = False


def test_the_registry_lists_definitions_with_their_handlers_patterns_and_undefined_subscriptions():
    subs = [
        Sub("app.handlers.welcome", "user.created"),
        Sub("app.handlers.audit_users", "user.*"),
        Sub("app.handlers.audit_all", "**"),
        Sub("app.handlers.typo", "user.crated"),
    ]
    reg = EventRegistry(handlers=lambda: subs)
    reg.add(earnevents.DefinedEvent("user.created", None, "A user signed up", {}, {}))
    reg.add(earnevents.DefinedEvent("order.paid", Paid, "", {"PAID": {"level": "high"}}, {"team": "billing"}))

    entries = {entry.name: entry for entry in reg.entries()}

    assert list(entries) == ["order.paid", "user.created", "user.crated"]
    assert [h.name for h in entries["user.created"].handlers] == [
        "app.handlers.welcome",
        "app.handlers.audit_users",
        "app.handlers.audit_all",
    ]
    assert [h.name for h in entries["order.paid"].handlers] == ["app.handlers.audit_all"]
    assert entries["user.crated"].definition is None
    assert [(p.pattern, p.matches) for p in reg.patterns()] == [
        ("**", ("order.paid", "user.created")),
        ("user.*", ("user.created",)),
    ]
    assert [s.name for s in reg.undefined_subscriptions()] == ["app.handlers.typo"]
    as_json = json.loads(json.dumps(reg.to_dict()))
    paid = as_json["events"][0]
    assert paid["schema"].endswith("Paid") and paid["fields"] == ["order_id", "total", "paid_at"]
    assert paid["codes"] == {"PAID": {"level": "high"}} and paid["metadata"] == {"team": "billing"}
    assert as_json["events"][2] == {**as_json["events"][2], "name": "user.crated", "defined": False}


def test_the_registry_lists_receivers_apart_with_their_sender():
    reg = EventRegistry(handlers=lambda: [Sub("app.receivers.notify", "user.created", "User", receiver=True)])
    reg.add(earnevents.DefinedEvent("user.created", None, "", {}, {}))

    (entry,) = reg.entries()

    assert entry.handlers == () and [(r.name, r.sender) for r in entry.receivers] == [("app.receivers.notify", "User")]


def test_a_receiver_both_named_and_matched_by_its_pattern_is_listed_once_as_it_runs_once():
    subs = [Sub("app.receivers.r", "user.created", receiver=True), Sub("app.receivers.r", "user.**", receiver=True)]
    reg = EventRegistry(handlers=lambda: subs)
    reg.add(earnevents.DefinedEvent("user.created", None, "", {}, {}))

    (entry,) = reg.entries()

    assert [r.name for r in entry.receivers] == ["app.receivers.r"]


def test_check_subscriptions_names_each_handler_of_an_undefined_name_and_suggests_close_names():
    handlers = HandlerRegistry()  # the real one: it reads exact names from HandlerRegistry.handlers()
    reg = EventRegistry(handlers=lambda: [*handlers.handlers(), Sub("app.handlers.pattern", "user.*")])
    reg.add(earnevents.DefinedEvent("user.created", None, "", {}, {}))
    handlers.register("user.created", _handler("fine"))
    handlers.register("user.crated", _handler("typo"))

    with pytest.raises(earnevents.UndefinedEventError) as info:
        reg.check_subscriptions()

    assert "app.handlers.typo subscribes to 'user.crated'" in str(info.value)
    assert "did you mean 'user.created'" in str(info.value)
    assert "app.handlers.fine" not in str(info.value) and "app.handlers.pattern" not in str(info.value)


# --- publishing -----------------------------------------------------------------------


async def test_publish_validates_data_of_a_defined_schema_and_sends_nothing_when_it_does_not_fit(
    bus, rclient, queue, defined
):
    OrderPaid = define(defined, unique(), schema=Paid)

    with pytest.raises(earnevents.EventValidationError, match="data\\['total'\\]"):
        await bus.publish(Event(OrderPaid.name, {"order_id": 1, "total": "lots"}))
    with pytest.raises(earnevents.EventValidationError, match="data\\['order_id'\\]"):
        await bus.publish_batch([Event("t.other", {}), Event(OrderPaid.name, {"order_id": "x", "total": 1})])

    assert rclient.llen(queue) == 0


async def test_publish_sends_the_data_as_validated_keeping_id_and_metadata(bus, rclient, queue, defined):
    OrderPaid = define(defined, unique(), schema=Paid)
    event = Event(OrderPaid.name, {"order_id": "7", "total": 3}, metadata={"trace": "t1"})

    assert await bus.publish(event) == event.id

    body = json.loads(base64.b64decode(json.loads(rclient.lindex(queue, 0))["body"]))
    sent = Event.from_wire(body[0][0])
    assert (sent.id, sent.metadata, sent.data) == (
        event.id,
        {"trace": "t1"},
        {"order_id": 7, "total": Decimal(3), "paid_at": None},
    )


async def test_model_events_are_validated_like_any_publish(bus, rclient, queue, defined):
    from earnevents import dispatch_model_event

    class Shipment(pydantic.BaseModel):
        id: int

    define(defined, "parcel_ev.shipped", schema=Shipment)

    with pytest.raises(earnevents.EventValidationError, match=r"parcel_ev\.shipped.*data\['id'\]"):
        await dispatch_model_event(bus, "ParcelEv", "shipped", "not-a-number")
    assert rclient.llen(queue) == 0


async def test_strict_mode_refuses_an_undefined_name_at_publish_suggesting_close_names(
    redis_url, rclient, queue, defined
):
    name = define(defined, unique("strict")).name
    typo = name[:-1] + ("x" if name[-1] != "x" else "y")
    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue, "strict": True})
    try:
        with pytest.raises(earnevents.UndefinedEventError) as info:
            await earnevents.event_bus.publish(Event(typo, {}))
        assert repr(typo) in str(info.value) and f"did you mean {name!r}" in str(info.value)
        assert isinstance(info.value, ValueError)
        with pytest.raises(earnevents.UndefinedEventError):
            await earnevents.event_bus.publish_batch([Event(name, {}), Event(typo, {})])
        assert rclient.llen(queue) == 0

        await earnevents.event_bus.publish(Event(name, {}))  # defined: sent
        assert rclient.llen(queue) == 1
    finally:
        await earnevents.close()


async def test_strict_mode_is_off_by_default_and_read_from_earnevents_strict(bus, rclient, queue, monkeypatch):
    await bus.publish(Event(unique("loose"), {}))
    assert rclient.llen(queue) == 1
    assert earnevents.Settings.resolve(environ={"EARNEVENTS_STRICT": "1"}).strict is True
    assert earnevents.Settings.resolve(environ={}).strict is False
    with pytest.raises(earnevents.ConfigError, match="EARNEVENTS_STRICT"):
        earnevents.Settings.resolve(environ={"EARNEVENTS_STRICT": "maybe"})


def test_a_name_a_model_declares_is_defined_and_gives_way_to_define_event(defined):
    # Given a model declaring an immediate and a scheduled event
    immediate, scheduled = unique("m"), unique("m")
    defined += [immediate, scheduled, f"{scheduled}:created", f"{scheduled}:cancelled"]

    class Booking(earnevents.BaseModel):
        _events = (
            earnevents.EventDefinition(immediate, condition=lambda b: b.ok),
            earnevents.EventDefinition(scheduled, date_field="at"),
        )
        ok: bool = False
        at: dt.datetime | None = None

    # Then its names are defined (strict mode accepts them), the announcements of the scheduled one too
    assert {immediate, scheduled, f"{scheduled}:created", f"{scheduled}:cancelled"} <= set(registry.names())
    # And the same model class defined again (a module reloaded) leaves them as they are
    assert registry.add(registry[immediate]) is registry[immediate]
    # When the app defines one of them itself, with a schema
    own = define_event(immediate, schema=Paid, description="a booking was confirmed")
    # Then its definition takes the model's place; defining it again differently is an error as usual
    assert registry[immediate] is own and registry[immediate].schema is Paid
    with pytest.raises(earnevents.EventDefinitionError):
        define_event(immediate, description="something else")
