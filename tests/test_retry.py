"""RetryPolicy and the backoff function."""

from __future__ import annotations

import pytest

from earnevents import RetryPolicy
from earnevents.retry import RetryCaps, backoff


def test_backoff_is_linear_from_start_and_capped():
    waits = [backoff(n, 1.0, 0.5, 2.0) for n in range(1, 6)]
    assert waits == [1.0, 1.5, 2.0, 2.0, 2.0]


def test_backoff_rejects_retry_zero():
    with pytest.raises(ValueError):
        backoff(0, 0, 0, 0)


def test_policy_defaults_follow_the_documentation():
    policy = RetryPolicy()
    assert (policy.max_retries, policy.interval_start, policy.interval_step, policy.interval_max) == (3, 0, 0.2, 0.5)
    assert [policy.delay_for(n) for n in (1, 2, 3)] == [0, 0.2, 0.4]


@pytest.mark.parametrize(
    "bad",
    [
        {"max_retries": -1},
        {"interval_step": -0.1},
        {"retries": 3},
        {"max_retries": "x"},
        {"interval_start": 5},  # above the default interval_max: would be cut silently
    ],
)
def test_invalid_policy_dict_is_a_value_error(bad):
    with pytest.raises(ValueError, match="invalid retry_policy"):
        RetryPolicy.coerce(bad)


def test_coerce_accepts_policy_dict_and_none():
    policy = RetryPolicy(max_retries=1)
    assert RetryPolicy.coerce(policy) is policy
    assert RetryPolicy.coerce({"max_retries": 1}) == policy
    assert RetryPolicy.coerce(None) is None
    with pytest.raises(TypeError):
        RetryPolicy.coerce(3)  # type: ignore[arg-type]


# --- bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"max_retries": 101}, "max_retries"),
        ({"max_retries": 10**12}, "max_retries"),
        ({"interval_step": float("inf")}, "interval_step"),
        ({"interval_start": 86401, "interval_max": 86401}, "interval_start"),
        ({"interval_max": float("inf")}, "interval_max"),
        ({"interval_max": 1e300}, "interval_max"),
    ],
)
def test_policies_over_the_documented_bounds_are_a_value_error(bad, field):
    # 100 retries at most; each interval finite and one day at most
    with pytest.raises(ValueError, match=f"invalid retry_policy.*{field}"):
        RetryPolicy.coerce(bad)
    assert RetryPolicy(max_retries=100, interval_start=86400, interval_step=86400, interval_max=86400)


def test_a_messages_policy_is_held_within_the_workers_caps():
    # Given a worker allowing 5 retries at least 0.25 s apart
    caps = RetryCaps(max_retries=5, min_interval=0.25)
    # When a message carries a policy far beyond them (built without this library)
    raw = {"max_retries": 10**12, "interval_start": 0, "interval_step": float("inf"), "interval_max": 1e300}
    policy = RetryPolicy.from_message(raw, caps)
    # Then the worker's effective policy is 5 retries, each wait from 0.25 s to one day
    assert policy == RetryPolicy(max_retries=5, interval_start=0.25, interval_step=86400, interval_max=86400)
    assert [policy.delay_for(n) for n in (1, 2, 5)] == [0.25, 86400, 86400]
    # And a policy within the caps is kept as it is, none stays none
    fine = {"max_retries": 2, "interval_start": 1, "interval_step": 0, "interval_max": 1}
    assert RetryPolicy.from_message(fine, caps) == RetryPolicy(**fine)
    assert RetryPolicy.from_message(None, caps) is None
    assert RetryPolicy.from_message({"max_retries": float("inf")}, caps).max_retries == 5


@pytest.mark.parametrize(
    "bad",
    [{"max_retries": -1}, {"max_retries": "x"}, {"interval_step": float("nan")}, {"retries": 3}, [3], "x"],
)
def test_a_malformed_message_policy_is_still_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        RetryPolicy.from_message(bad, RetryCaps())


@pytest.mark.parametrize(
    "kwargs", [{"max_retries": 101}, {"max_retries": -1}, {"min_interval": float("nan")}, {"min_interval": 1e6}]
)
def test_caps_outside_the_policy_bounds_are_refused(kwargs):
    with pytest.raises(ValueError):
        RetryCaps(**kwargs)


def test_a_policy_is_a_frozen_value_whose_dict_builds_it_again():
    # Given a policy from whole floats and ints, as JSON carries them
    policy = RetryPolicy(max_retries=2.0, interval_start=1, interval_max=1)
    # Then its fields have their types, its dict builds an equal policy, and it cannot change
    assert isinstance(policy.max_retries, int) and isinstance(policy.interval_start, float)
    assert RetryPolicy(**policy.to_dict()) == policy and hash(policy) == hash(RetryPolicy(**policy.to_dict()))
    with pytest.raises(AttributeError):
        policy.max_retries = 1  # type: ignore[misc]


@pytest.mark.parametrize("bad", [True, 1.5, "3", None])
def test_a_policy_refuses_what_is_no_whole_number_of_retries(bad):
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=bad)
