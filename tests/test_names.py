"""Names and ids follow documented rules, checked where they enter: Event(...), the
handler decorators, the queue setting. The rules themselves are in earnevents.names."""

from __future__ import annotations

import pytest

from earnevents import ConfigError, Event, keys, names
from earnevents.config import Settings
from earnevents.events.decorators import before_save
from earnevents.handlers import HandlerRegistry, event_handler, model_event_handler, model_event_name

BAD_EVENT_NAMES = [
    "",
    " ",
    "user created",
    "user..created",
    ".user",
    "user.",
    "user.created\nFAKE",
    "user\r",
    "user.*",
    "user.**",
    "us?er",
    "us[e]r",
    "ü.created",
    "x" * 201,
]


GOOD_EVENT_NAMES = ["user.created", "User.created", "billing:invoice.paid", "a-b_c.d9", "x" * 200]


@pytest.mark.parametrize("name", BAD_EVENT_NAMES)
def test_an_event_name_breaking_the_rule_is_a_value_error_naming_it_and_the_rule(name):
    with pytest.raises(ValueError, match="is not allowed: use a non-empty name of at most 200 ASCII") as info:
        Event(name, {})
    assert repr(name)[:40] in str(info.value)
    # while names that follow it, and only str names, are taken
    assert [Event(good, {}).name for good in GOOD_EVENT_NAMES] == GOOD_EVENT_NAMES
    for other in (5, None, {"$ne": None}, b"user.created"):
        with pytest.raises(TypeError, match="Event name must be a str"):
            Event(other, {})  # type: ignore[arg-type]


@pytest.mark.parametrize("event_id", ["a b", "a\nb", "x" * 201, "é", "\u2028"])
def test_an_event_id_breaking_the_rule_is_refused(event_id):
    with pytest.raises(ValueError, match=r"Event id .* is not allowed"):
        Event("user.created", {}, id=event_id)
    for other in ("", 5):
        with pytest.raises((ValueError, TypeError), match="Event id"):
            Event("user.created", {}, id=other)  # type: ignore[arg-type]
    assert Event("user.created", {}, id="order-7:v2").id == "order-7:v2"


def test_events_stored_under_names_the_rules_now_refuse_stay_readable():
    # Given a stored event whose name and id Event() now refuses
    wire = {**Event("user.created", {}).to_wire(), "name": "old name\twith tab", "id": "old id"}
    with pytest.raises(ValueError):
        Event(wire["name"], {})
    # Then it is still read back as it was, and only its types are checked
    event = Event.from_wire(wire)
    assert (event.name, event.id) == ("old name\twith tab", "old id")
    with pytest.raises(ValueError, match="malformed"):
        Event.from_wire({**wire, "name": {"$ne": None}})


@pytest.mark.parametrize("pattern", ["user.*", "user.**", "**", "*.created", "a.**.b", "user.created"])
def test_subscription_patterns_may_use_whole_segment_wildcards(pattern):
    assert names.check_pattern(pattern) == pattern
    if "*" in pattern:
        with pytest.raises(ValueError):
            names.check_event_name(pattern)


@pytest.mark.parametrize("pattern", ["user*", "*user", "user.***", "user.*\n", "", "a..*", 5])
def test_a_pattern_breaking_the_rule_is_refused(pattern):
    with pytest.raises((ValueError, TypeError), match="subscription pattern"):
        names.check_pattern(pattern)


@pytest.mark.parametrize("name", ["", "a b", "user.created\nFAKE", "user.c*", "user.***", 7])
def test_event_handler_refuses_a_bad_event_name_when_decorating(name):
    with pytest.raises((ValueError, TypeError), match="event_handler's event name"):
        event_handler(name)(lambda e: None)


def test_a_handler_whose_module_qualname_breaks_the_rule_is_refused_when_decorating():
    def handler(event: Event) -> None: ...

    handler.__qualname__ = "handler\nFAKE LINE"
    registry = HandlerRegistry()
    with pytest.raises(ValueError, match=r"handler name \(module.qualname\) '.*handler\\nFAKE LINE' is not allowed"):
        registry.register("user.created", handler)
    # while nested functions and lambdas keep their names
    handler.__qualname__ = "test_x.<locals>.handler"
    assert registry.register("user.created", handler).name.endswith(".test_x.<locals>.handler")
    assert registry.register("user.created", lambda e: None).name.endswith(".<lambda>")


def test_model_events_follow_the_event_name_rule():
    assert model_event_name("OrderItem", "created") == "order_item.created"
    with pytest.raises(ValueError, match=r"model event name 'user\.sign up'"):
        model_event_handler("User", "sign up")
    with pytest.raises(ValueError, match="@before_save's event name"):
        before_save("user.before login")


@pytest.mark.parametrize(
    "queue",
    [
        " ",
        "a b",
        "q\n",
        "q*",
        "q?",
        "_kombu.binding.q",
        ":q",
        "q:",
        "a::b",
        "orders:failed",  # earnevents:orders:failed would be the failed index of queue "orders"
        "q:scheduled:event",
        "dedup",
        "earnevents:unacked",
        "earnevents:mine",
        "x" * 201,
    ],
)
def test_a_queue_name_breaking_the_rule_is_a_config_error_naming_it(queue):
    with pytest.raises(ConfigError, match=r"queue_name .* is not allowed"):
        Settings.resolve(event_config={"queue_name": queue}, environ={})
    with pytest.raises(ConfigError, match=r"queue_name .* is not allowed"):
        Settings.resolve(environ={"EARNEVENTS_QUEUE": queue})
    for good in ("earnevents", "my_app:events", "q-1f3a", "Billing.v2:jobs", "x" * 200):
        assert Settings.resolve(event_config={"queue_name": good}, environ={}).queue_name == good


def _queue_keys(queue: str) -> list[str]:
    return [
        keys.scheduled_zset(queue),
        keys.scheduled_payloads(queue),
        keys.scheduled_names(queue),
        keys.scheduled_by_event(queue, "e.x"),
        keys.outbox_lock(queue),
        keys.failed_index(queue),
        keys.failed_by_event(queue, "e.x"),
        keys.failed_by_handler(queue, "m.h"),
        keys.failed_by_event_handler(queue, "e.x", "m.h"),
        keys.failed_keys(queue),
        keys.failed_errors(queue),
        keys.inflight_list(queue, "c1"),
        keys.inflight_consumers(queue),
        keys.dead_index(queue),
        keys.dead_items(queue),
        keys.eventlog_index(queue),
        keys.eventlog_by_name(queue, "e.x"),
        keys.eventlog_by_sender(queue, "m.Model"),
    ]


def test_the_reserved_words_are_the_ones_the_keys_use():
    # Every per-queue key continues with a reserved word right after the queue name...
    for key in _queue_keys("Q"):
        assert key.startswith(f"{keys.PREFIX}:Q:")
        assert key.split(":")[2] in keys.QUEUE_KEY_WORDS, key
    # ...and every shared key with one right after the prefix.
    for key in (
        keys.dedup_buckets(1000),
        keys.job_claims("e1"),
        keys.failed_job("j"),
        keys.consumer_alive("c"),
        keys.eventlog_record("e1"),
    ):
        assert key.split(":")[1] in keys.GLOBAL_KEY_WORDS, key
    for key in (keys.UNACKED, keys.UNACKED_INDEX, keys.UNACKED_MUTEX):
        assert key.split(":")[1] in keys.GLOBAL_KEY_WORDS, key


def test_no_two_queues_init_accepts_share_a_key_whatever_their_event_names():
    candidates = ["a", "a:b", "a:event", "a.failed", "b", "earnevents", "event:a"]
    candidates += ["a:failed:event", "a:scheduled:event:x", "a:dead", "earnevents:a:failed", "dedup"]
    accepted = []
    for queue in candidates:
        try:
            accepted.append(Settings.resolve(event_config={"queue_name": queue}, environ={}).queue_name)
        except ConfigError:
            pass
    owners: dict[str, str] = {}
    for queue in accepted:
        for name in ("x", "x:failed:event:y", "b:failed", "a:failed", "scheduled"):
            for key in [
                *_queue_keys(queue),
                keys.scheduled_by_event(queue, name),
                keys.failed_by_event(queue, name),
                keys.failed_by_event_handler(queue, name, "m.h"),
                queue,
            ]:
                assert owners.setdefault(key, queue) == queue, f"{key} belongs to {owners[key]!r} and {queue!r}"
    assert "a:b" in accepted and "event:a" in accepted


@pytest.mark.parametrize("value", ["0" * 32, "0123456789abcdef" * 2])
def test_record_ids_are_32_lowercase_hex_digits(value):
    assert names.is_record_id(value)
    assert not names.is_record_id(value.upper().replace("0", "A"))
    assert not names.is_record_id(value + "\n")
    with pytest.raises(TypeError, match="id must be a str"):
        names.is_record_id({"$gt": value})
