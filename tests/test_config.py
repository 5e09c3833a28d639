"""Settings resolution: init() arguments over EARNEVENTS_* over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from earnevents import ConfigError, RetryPolicy
from earnevents.config import DEFAULTS, Settings
from earnevents.retry import RetryCaps

ROOT = Path(__file__).resolve().parents[1]


def test_config_env_file_lists_exactly_the_defaults():
    pairs = {}
    for line in (ROOT / "config" / "earnevents.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    assert pairs == DEFAULTS


def test_defaults_apply_with_an_empty_environment():
    s = Settings.resolve(environ={})
    assert s.redis_uri == "redis://localhost:6379/0"
    assert s.mongo_uri is None and s.database == "earnevents" and s.queue_name == "earnevents"
    assert s.event.retry_policy is None and s.event.publish_timeout == 10
    assert s.handler_modules == () and s.visibility_timeout == 40
    assert s.max_deliveries == 5


def test_environment_is_read():
    env = {
        "EARNEVENTS_REDIS_URI": "redis://r:1/2",
        "EARNEVENTS_MONGO_URI": "mongodb://m:3",
        "EARNEVENTS_DATABASE": "db",
        "EARNEVENTS_QUEUE": "q",
        "EARNEVENTS_HANDLER_MODULES": "a.b, c",
        "EARNEVENTS_RETRY_POLICY": '{"max_retries": 7}',
        "EARNEVENTS_VISIBILITY_TIMEOUT": "30",
        "EARNEVENTS_PUBLISH_TIMEOUT": "2.5",
        "EARNEVENTS_MAX_DELIVERIES": "2",
    }
    s = Settings.resolve(environ=env)
    assert (s.redis_uri, s.mongo_uri, s.database, s.queue_name) == ("redis://r:1/2", "mongodb://m:3", "db", "q")
    assert s.handler_modules == ("a.b", "c")
    assert s.event.retry_policy == RetryPolicy(max_retries=7)
    assert s.visibility_timeout == 30 and s.event.publish_timeout == 2.5
    assert s.max_deliveries == 2


def test_arguments_win_over_environment():
    env = {"EARNEVENTS_REDIS_URI": "redis://env:1/0", "EARNEVENTS_QUEUE": "envq"}
    s = Settings.resolve(redis_uri="redis://arg:1/0", event_config={"queue_name": "argq"}, environ=env)
    assert s.redis_uri == "redis://arg:1/0" and s.queue_name == "argq"


def test_event_config_retry_policy_accepts_the_seed_dict():
    policy = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
    s = Settings.resolve(event_config={"queue_name": "my_app:events", "retry_policy": policy}, environ={})
    assert s.event.retry_policy == RetryPolicy(**policy)


@pytest.mark.parametrize(
    ("kwargs", "env", "match"),
    [
        ({"event_config": {"queue": "x"}}, {}, "queue"),
        ({"event_config": {"retry_policy": {"max_retries": -1}}}, {}, "max_retries"),
        ({"event_config": {"publish_timeout": 0}}, {}, "publish_timeout"),
        ({"event_config": {"publish_timeout": float("inf")}}, {}, "publish_timeout"),
        ({"redis_uri": "localhost:6379"}, {}, "redis://"),
        ({"mongo_uri": "localhost"}, {}, "mongodb://"),
        ({}, {"EARNEVENTS_RETRY_POLICY": "{nope"}, "JSON"),
        ({}, {"EARNEVENTS_VISIBILITY_TIMEOUT": "soon"}, "number"),
        ({}, {"EARNEVENTS_VISIBILITY_TIMEOUT": "nan"}, "EARNEVENTS_VISIBILITY_TIMEOUT must be a finite number"),
        ({}, {"EARNEVENTS_SCHEDULER_INTERVAL": "inf"}, "EARNEVENTS_SCHEDULER_INTERVAL must be a finite number"),
        ({}, {"EARNEVENTS_DEDUP_WINDOW": "nan"}, "EARNEVENTS_DEDUP_WINDOW must be a finite number"),
        ({}, {"EARNEVENTS_PUBLISH_TIMEOUT": "inf"}, "EARNEVENTS_PUBLISH_TIMEOUT must be a finite number"),
        ({}, {"EARNEVENTS_MAX_DELIVERIES": "0"}, "EARNEVENTS_MAX_DELIVERIES must be >= 1"),
        ({}, {"EARNEVENTS_MAX_DELIVERIES": "2.5"}, "EARNEVENTS_MAX_DELIVERIES must be a whole number"),
    ],
)
def test_bad_configuration_is_a_config_error(kwargs, env, match):
    with pytest.raises(ConfigError, match=match):
        Settings.resolve(environ=env, **kwargs)


def test_handler_timeout_is_unset_by_default_and_read_from_the_environment():
    assert Settings.resolve(environ={}).handler_timeout is None
    assert Settings.resolve(environ={"EARNEVENTS_HANDLER_TIMEOUT": "1.5"}).handler_timeout == 1.5


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_handler_timeout_is_a_config_error(raw):
    with pytest.raises(ConfigError, match="EARNEVENTS_HANDLER_TIMEOUT"):
        Settings.resolve(environ={"EARNEVENTS_HANDLER_TIMEOUT": raw})


def test_retry_caps_for_message_policies_default_and_come_from_the_environment():
    assert Settings.resolve(environ={}).retry_caps == RetryCaps(max_retries=100, min_interval=0.1)
    env = {"EARNEVENTS_MAX_RETRIES_CAP": "7", "EARNEVENTS_MIN_RETRY_INTERVAL": "0"}
    assert Settings.resolve(environ=env).retry_caps == RetryCaps(max_retries=7, min_interval=0.0)


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("EARNEVENTS_MAX_RETRIES_CAP", "101"),
        ("EARNEVENTS_MAX_RETRIES_CAP", "-1"),
        ("EARNEVENTS_MAX_RETRIES_CAP", "1e12"),
        ("EARNEVENTS_MIN_RETRY_INTERVAL", "-1"),
        ("EARNEVENTS_MIN_RETRY_INTERVAL", "nan"),
        ("EARNEVENTS_MIN_RETRY_INTERVAL", "inf"),
        ("EARNEVENTS_MIN_RETRY_INTERVAL", "86401"),
    ],
)
def test_a_bad_retry_cap_is_a_config_error_naming_it(var, raw):
    with pytest.raises(ConfigError, match=var):
        Settings.resolve(environ={var: raw})


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"queue_name": ""}, "queue_name"),
        ({"event_log": "yes"}, "event_log"),
        ({"metrics": 1}, "metrics"),
        ({"max_message_size": 100}, "max_message_size"),
        ({"publish_timeout": "soon"}, "publish_timeout"),
        ({"outbox": "maybe"}, "outbox"),
        ({"retry_policy": 3}, "retry_policy"),
    ],
)
def test_a_bad_event_config_value_is_a_config_error_naming_its_key(given, match):
    with pytest.raises(ConfigError, match=match):
        Settings.resolve(event_config=given, environ={})


def test_an_event_config_is_a_frozen_value():
    event = Settings.resolve(event_config={"queue_name": "q", "retry_policy": {"max_retries": 1}}, environ={}).event
    assert event.retry_policy == RetryPolicy(max_retries=1) and event.publish_timeout == 10.0
    with pytest.raises(AttributeError):
        event.queue_name = "other"  # type: ignore[misc]
