"""Receivers, sender filters and wildcard subscriptions, in process: patterns, the
registry's resolution, signature checks, publishing with a sender.

tests/test_receivers_e2e.py runs them in a real worker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest

from earnevents import Event, ReceiverSignatureError, event_handler, handlers, message, on
from earnevents.handlers import HandlerRegistry
from earnevents.patterns import compile_pattern
from earnevents.worker.jobs import Job


class User:
    pass


@pytest.fixture
def fresh_registry() -> Iterator[HandlerRegistry]:
    """The process-wide registry, with whatever a test registers there removed afterwards."""
    before = {h.name for h in handlers.registry.handlers()}
    yield handlers.registry
    for name in {h.name for h in handlers.registry.handlers()} - before:
        handlers.registry.unregister(name)


# --- patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("user.*", "user.created", True),
        ("user.*", "user.profile.updated", False),
        ("user.*", "user", False),
        ("user.*", "users.created", False),
        ("*.created", "user.created", True),
        ("*.created", "created", False),
        ("*.created", "a.user.created", False),
        ("user.**", "user", True),
        ("user.**", "user.created", True),
        ("user.**", "user.profile.updated", True),
        ("user.**", "username.created", False),
        ("**", "a", True),
        ("**", "a.b.c", True),
        ("a.**.z", "a.z", True),
        ("a.**.z", "a.b.c.z", True),
        ("a.**.z", "a.b", False),
        ("a.**.z", "a.zz", False),
        ("*.**", "a", True),
        ("**.**", "a.b", True),
        ("billing:invoice.*", "billing:invoice.paid", True),
        ("a-b.*", "aXb.c", False),
        ("user.created", "user.created", True),
        ("user.created", "user.createdX", False),
    ],
)
def test_a_pattern_matches_whole_segments(pattern, name, expected):
    assert compile_pattern(pattern)(name) is expected


def test_many_any_segments_do_not_make_matching_slow():
    # Given a pattern of 60 '**' before a last segment, and a 100-segment name it does not match
    match = compile_pattern(".".join(["**"] * 60 + ["x"]))
    name = ".".join(["a"] * 100)
    # When it is matched, Then the answer comes at once (consecutive '**' are one)
    started = time.monotonic()
    assert not match(name)
    assert time.monotonic() - started < 0.5


# --- resolution ---------------------------------------------------------------------------


def _handler(name: str) -> Any:
    def handler(event: Event) -> None: ...

    handler.__qualname__ = name
    return handler


def test_exact_names_and_patterns_resolve_in_registration_order_each_function_once():
    # Given an exact handler, a pattern handler, a '**' handler and one function on both a name and a pattern
    registry = HandlerRegistry()
    exact = registry.register("user.created", _handler("exact"))
    star = registry.register("user.*", _handler("star"))
    everything = registry.register("**", _handler("everything"))
    both = registry.subscribe(["user.created", "user.**"], _handler("both"))
    # When user.created is resolved, Then all four match, each once
    assert [h.name for h in registry.resolve("user.created", None)] == [
        h.name for h in (exact, star, everything, both[0])
    ]
    # and deeper names only match the patterns that reach them
    assert [h.name for h in registry.for_event("user.profile.updated")] == [everything.name, both[0].name]
    assert registry.for_event("order.paid") == [everything]


def test_resolution_is_remembered_per_name_refreshed_by_registration_and_bounded(monkeypatch):
    registry = HandlerRegistry()
    first = registry.register("a.*", _handler("first"))
    assert registry.resolve("a.b", None) == [first]
    # When another handler registers, Then it is included from then on
    second = registry.register("a.b", _handler("second"))
    assert registry.resolve("a.b", None) == [first, second]
    # and however many names come, only a bounded number of them is remembered
    monkeypatch.setattr(handlers, "MAX_RESOLVED", 5)
    for n in range(50):
        assert registry.resolve(f"a.n{n}", None) == [first]
    assert len(registry._resolved) <= 5


def test_a_sender_filter_takes_a_class_or_its_name_and_lets_only_that_sender_through():
    # Given handlers filtered to User (the class) and to "User" (its name), and one without a filter
    registry = HandlerRegistry()
    by_class = registry.register("user.created", _handler("by_class"), sender=User)
    by_name = registry.register("user.created", _handler("by_name"), sender="User")
    anyone = registry.register("user.**", _handler("anyone"))
    assert by_class.sender == by_name.sender == "User"
    # Then an event from User runs all three; from another sender or none, only the unfiltered one
    assert registry.resolve("user.created", "User") == [by_class, by_name, anyone]
    assert registry.resolve("user.created", "Admin") == [anyone]
    assert registry.resolve("user.created", None) == [anyone]
    # while for_event lists every subscriber, whatever its filter
    assert registry.for_event("user.created") == [by_class, by_name, anyone]


@pytest.mark.parametrize(
    ("sender", "exc"), [(5, TypeError), (User(), TypeError), ("", ValueError), ("a b", ValueError)]
)
def test_a_bad_sender_filter_is_refused_when_decorating(sender, exc):
    with pytest.raises(exc, match="event_handler's sender"):
        event_handler("a.b", sender=sender)
    with pytest.raises(exc, match="@on's sender"):
        on("a.b", sender=sender)


def test_a_function_on_several_events_is_one_handler_name_with_one_subscription_each():
    # Given one function subscribed to two events
    registry = HandlerRegistry()
    func = _handler("twice")
    first, second = registry.subscribe(["a.x", "b.*"], func)
    # Then each subscription is listed, both under the function's dotted name, found by that name
    assert registry.handlers() == [first, second] and first.name == second.name
    assert registry.get(first.name).func is func
    assert registry.for_event("a.x") == [first] and registry.for_event("b.y") == [second]
    # and a retry message naming it is accepted for either event, refused for another
    for name in ("a.x", "b.y"):
        assert Job.from_message(Event(name, {}).to_wire(), {"handler": first.name}, "q", registry)
    with pytest.raises(ValueError, match=r"subscribed to 'a\.x', 'b\.\*', not to 'c\.z'"):
        Job.from_message(Event("c.z", {}).to_wire(), {"handler": first.name}, "q", registry)
    # and the same definition imported again replaces it, while another list under its name is refused
    assert registry.subscribe(["a.x", "b.*"], func) and len(registry.handlers()) == 2
    with pytest.raises(ValueError, match=r"already registered .*@on\(\[\.\.\.\]\)"):
        registry.subscribe(["a.x"], func)


# --- receiver signatures ---------------------------------------------------------------------


def test_receivers_without_a_positional_sender_parameter_first_are_refused_naming_them(fresh_registry):
    def no_params() -> None: ...

    def keyword_sender(*, sender: Any, **kwargs: Any) -> None: ...

    def only_kwargs(**kwargs: Any) -> None: ...

    for receiver in (no_params, keyword_sender, only_kwargs):
        with pytest.raises(ReceiverSignatureError, match=rf"receiver .*\.{receiver.__name__} must take the sender"):
            on("a.b")(receiver)
    assert fresh_registry.for_event("a.b") == []


def test_a_receiver_with_a_parameter_no_call_fills_is_refused():
    def positional_data(sender: Any, order_id: int, /, **kwargs: Any) -> None: ...

    with pytest.raises(ReceiverSignatureError, match=r"positional_data: positional-only parameter\(s\) \['order_id'\]"):
        on("a.b")(positional_data)


def test_receivers_taking_the_sender_first_are_accepted(fresh_registry):
    def caluma_style(sender: Any, work_item: Any, user: Any, context: Any, **kwargs: Any) -> None: ...

    def named(sender: Any, user_id: int, event: Event | None = None) -> None: ...

    def anything(*args: Any, **kwargs: Any) -> None: ...

    async def positional_only(sender: Any, /, **kwargs: Any) -> None: ...

    for receiver in (caluma_style, named, anything, positional_only):
        assert on("a.b")(receiver) is receiver
    assert [h.receiver for h in fresh_registry.for_event("a.b")] == [True] * 4
    assert fresh_registry.for_event("a.b")[3].is_async


def _receiver_call(fresh_registry: HandlerRegistry, func: Any, event_name: str = "o.p") -> Any:
    on(event_name)(func)
    [handler] = fresh_registry.for_event(event_name)
    return handler.call


def test_a_receiver_gets_the_sender_the_data_keys_and_the_event_when_it_takes_it(fresh_registry):
    calls: list[tuple[Any, ...]] = []

    def paid(sender: Any, order_id: int, total: float = 0.0, event: Event | None = None) -> None:
        calls.append((sender, order_id, total, event))

    def bare(sender: Any, order_id: int) -> None:
        calls.append((sender, order_id))

    event = Event("o.p", {"order_id": 1}, metadata={"sender": "Shop"})
    _receiver_call(fresh_registry, paid)(event)
    _receiver_call(fresh_registry, bare, "o.q")(Event("o.q", {"order_id": 2}))
    assert calls == [("Shop", 1, 0.0, event), (None, 2)]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"order_id": 1, "coupon": "X"}, r"data key\(s\) \['coupon'\] are not among its parameters"),
        ({}, r"it requires \['order_id'\], which the data lacks"),
        ({"order_id": 1, "sender": "x"}, r"data key\(s\) \['sender'\] clash with its sender parameter or event="),
        ({"order_id": 1, "event": "x"}, r"data key\(s\) \['event'\] clash"),
    ],
)
def test_data_a_receiver_cannot_take_is_a_receiver_signature_error_naming_the_keys(fresh_registry, data, problem):
    def paid(sender: Any, order_id: int, event: Event | None = None) -> None:
        raise AssertionError("must not be called")

    call = _receiver_call(fresh_registry, paid)
    with pytest.raises(ReceiverSignatureError, match=rf"receiver .*\.paid cannot take the data of 'o\.p' .*{problem}"):
        call(Event("o.p", data))


class Paid(pydantic.BaseModel):
    order_id: int
    total: float = 0.0


class PaidDefinition:
    """What define_event returns, as far as @on looks at it: a name and a pydantic schema."""

    name = "order.paid"
    schema = Paid


def test_a_receiver_of_a_definition_with_a_schema_is_checked_against_its_fields(fresh_registry):
    def takes_all(sender: Any, order_id: int, total: float = 0.0) -> None: ...

    def lacks_total(sender: Any, order_id: int) -> None: ...

    def wants_coupon(sender: Any, order_id: int, coupon: str, **kwargs: Any) -> None: ...

    on([PaidDefinition(), "order.refunded"])(takes_all)
    assert [h.event_name for h in fresh_registry.handlers() if h.func is takes_all] == ["order.paid", "order.refunded"]
    with pytest.raises(
        ReceiverSignatureError, match=r"lacks_total for 'order.paid': it does not take its field\(s\) \['total'\]"
    ):
        on(PaidDefinition())(lacks_total)
    with pytest.raises(ReceiverSignatureError, match=r"wants_coupon for 'order.paid': it requires \['coupon'\]"):
        on(PaidDefinition())(wants_coupon)


@pytest.mark.parametrize(
    ("given", "exc", "match"),
    [(5, TypeError, "event definition"), ([], ValueError, "at least one"), ("a b", ValueError, "@on's event name")],
)
def test_on_refuses_what_names_no_event(given, exc, match):
    with pytest.raises(exc, match=match):
        on(given)


# --- publishing with a sender -------------------------------------------------------------


def _queued(rclient: Any, queue: str) -> list[Event]:
    return [Event.from_wire(message.parse(raw)[0]) for raw in reversed(rclient.lrange(queue, 0, -1))]


async def test_publish_carries_the_sender_in_metadata_and_leaves_the_callers_event_alone(bus, rclient, queue):
    # Given events with and without metadata
    event = Event("user.created", {"id": 1}, metadata={"trace": "t"})
    batch = [Event("user.created", {"id": 2}), Event("user.deleted", {"id": 3})]
    # When they are published from User (a class) and from "Billing" (a str)
    assert await bus.publish(event, sender=User) == event.id
    assert await bus.publish_batch(batch, sender="Billing") == [e.id for e in batch]
    # Then each carries its sender's name; the caller's events are unchanged
    sent = _queued(rclient, queue)
    assert [(e.id, e.metadata, e.sender) for e in sent] == [
        (event.id, {"trace": "t", "sender": "User"}, "User"),
        (batch[0].id, {"sender": "Billing"}, "Billing"),
        (batch[1].id, {"sender": "Billing"}, "Billing"),
    ]
    assert event.metadata == {"trace": "t"} and event.sender is None


@pytest.mark.parametrize(
    ("metadata", "sender", "exc", "match"),
    [
        ({}, 5, TypeError, "sender must be a class, a str or None"),
        ({}, "two words", ValueError, "sender 'two words' is not allowed"),
        ({}, "evil\x1b[31m\nforged", ValueError, r"sender 'evil\\x1b\[31m\\nforged' is not allowed"),
        ({}, "user*", ValueError, r"sender 'user\*' is not allowed"),
        ({"sender": "a\nb"}, None, ValueError, r"metadata\['sender'\] 'a\\nb' is not allowed"),
        ({"sender": 5}, None, TypeError, r"metadata\['sender'\] must be a str"),
        ({"sender": "A"}, "B", ValueError, "already names sender 'A'"),
    ],
)
async def test_a_bad_or_conflicting_sender_is_refused_and_nothing_is_sent(
    bus, rclient, queue, metadata, sender, exc, match
):
    with pytest.raises(exc, match=match):
        await bus.publish(Event("user.created", {}, metadata=metadata), sender=sender)
    assert rclient.llen(queue) == 0


async def test_a_sender_already_in_metadata_is_kept(bus, rclient, queue):
    await bus.publish(Event("user.created", {}, metadata={"sender": "User"}), sender=User)
    [sent] = _queued(rclient, queue)
    assert json.loads(json.dumps(sent.metadata)) == {"sender": "User"}


def test_a_receiver_of_a_defined_event_is_checked_against_its_schema_and_listed_by_the_registry(fresh_registry):
    # Given an event defined with a schema
    from earnevents import define_event, registry

    defined = define_event("rcv.order.shipped", schema=Paid, description="shipped")

    def ships(sender: Any, order_id: int, total: float) -> None: ...

    def lacks_total(sender: Any, order_id: int) -> None: ...

    # When receivers subscribe to the definition, Then one naming every field is accepted and listed
    # with its sender, the other refused
    try:
        on(defined, sender=User)(ships)
        [entry] = [e for e in registry.entries() if e.name == "rcv.order.shipped"]
        assert [(r.name, r.sender) for r in entry.receivers] == [(f"{__name__}.{ships.__qualname__}", "User")]
        with pytest.raises(ReceiverSignatureError, match=r"does not take its field\(s\) \['total'\]"):
            on(defined)(lacks_total)
    finally:
        registry.unregister(defined.name)


def test_a_callable_without_a_dotted_name_is_refused_with_a_type_error():
    import functools

    def receiver(sender: Any, extra: int, **kwargs: Any) -> None: ...

    with pytest.raises(TypeError, match=r"@on decorates functions, which have a __module__ and a __qualname__"):
        on("a.b")(functools.partial(receiver, extra=1))
