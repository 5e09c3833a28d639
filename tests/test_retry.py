"""RetryPolicy and the backoff function."""

from __future__ import annotations

import pytest

from earnevents import RetryPolicy
from earnevents.retry import backoff


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
