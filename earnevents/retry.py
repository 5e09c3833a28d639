"""Retry policy for failing handlers, and the pure backoff function behind it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_RETRIES = 100
"""The most ``max_retries`` a policy may have (a ValueError above it)."""

MAX_INTERVAL = 86400.0
"""The longest wait, in seconds, a policy may name (one day; a ValueError above it)."""


class RetryPolicy(BaseModel):
    """How often, and how far apart, a failing handler is tried again.

    ``max_retries`` retries follow the first try; retry ``n`` (1-based) waits
    ``min(interval_start + (n - 1) * interval_step, interval_max)`` seconds.
    The defaults are the ones earnevents' documentation starts from. Bounds:
    ``max_retries`` up to :data:`MAX_RETRIES`, intervals finite and up to
    :data:`MAX_INTERVAL` seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_retries: int = Field(default=3, ge=0, le=MAX_RETRIES)
    interval_start: float = Field(default=0.0, ge=0, le=MAX_INTERVAL, allow_inf_nan=False)
    interval_step: float = Field(default=0.2, ge=0, le=MAX_INTERVAL, allow_inf_nan=False)
    interval_max: float = Field(default=0.5, ge=0, le=MAX_INTERVAL, allow_inf_nan=False)

    @model_validator(mode="after")
    def _max_not_below_start(self) -> RetryPolicy:
        # Otherwise every wait would silently be cut to interval_max.
        if self.interval_max < self.interval_start:
            raise ValueError(
                f"interval_max ({self.interval_max}) is below interval_start ({self.interval_start}); "
                "raise interval_max too"
            )
        return self

    def delay_for(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return backoff(retry, self.interval_start, self.interval_step, self.interval_max)

    @classmethod
    def coerce(cls, value: RetryPolicy | Mapping[str, Any] | None) -> RetryPolicy | None:
        """Accept a RetryPolicy, a dict of its fields, or None; raise ValueError otherwise."""
        if value is None or isinstance(value, RetryPolicy):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"retry_policy must be a dict or RetryPolicy, got {type(value).__name__}")
        try:
            return cls(**value)
        except ValidationError as exc:
            raise ValueError(f"invalid retry_policy {dict(value)!r}: {exc}") from exc

    @classmethod
    def from_message(cls, value: Any, caps: RetryCaps) -> RetryPolicy | None:
        """The policy a message carries (its publisher's), held within a worker's ``caps``.

        A publisher that bypasses this library can put any numbers in a message: numbers
        over the limits are lowered to them (so the event still runs, under a bounded
        policy) rather than refused; a policy that is malformed otherwise (wrong types,
        negative or NaN numbers, unknown keys) is a ValueError/TypeError, as for coerce.
        """
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise TypeError(f"retry_policy must be a dict, got {type(value).__name__}")
        given = dict(value)
        retries = given.get("max_retries")
        if isinstance(retries, (int, float)) and not isinstance(retries, bool) and retries > MAX_RETRIES:
            given["max_retries"] = MAX_RETRIES
        for key in ("interval_start", "interval_step", "interval_max"):
            seconds = given.get(key)
            if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > MAX_INTERVAL:
                given[key] = MAX_INTERVAL  # inf included; NaN compares false and is refused below
        policy = cls.coerce(given)
        assert policy is not None
        return policy.within(caps)

    def within(self, caps: RetryCaps) -> RetryPolicy:
        """This policy with at most ``caps.max_retries`` retries, each wait at least ``caps.min_interval`` s."""
        capped = {
            "max_retries": min(self.max_retries, caps.max_retries),
            "interval_start": max(self.interval_start, caps.min_interval),
            "interval_max": max(self.interval_max, caps.min_interval),
        }
        if all(getattr(self, key) == v for key, v in capped.items()):
            return self
        return self.model_copy(update=capped)


@dataclass(frozen=True)
class RetryCaps:
    """What a worker allows the policy a message carries (set by its publisher).

    Handler policies and the worker's own are code and settings of the worker itself
    and are not capped; a publisher's policy travels in the message, so whoever can
    write to the queue chooses it, and a worker holds it within these bounds.
    """

    max_retries: int = MAX_RETRIES
    """The most retries a message's policy gets (0..MAX_RETRIES)."""
    min_interval: float = 0.0
    """The shortest wait, in seconds, before a retry under a message's policy (0..MAX_INTERVAL)."""

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise TypeError(f"max_retries must be an int, got {type(self.max_retries).__name__}")
        if not 0 <= self.max_retries <= MAX_RETRIES:
            raise ValueError(f"max_retries must be from 0 to {MAX_RETRIES}, got {self.max_retries}")
        if not 0 <= self.min_interval <= MAX_INTERVAL:  # NaN fails too
            raise ValueError(f"min_interval must be from 0 to {MAX_INTERVAL:g} seconds, got {self.min_interval!r}")


def backoff(retry: int, interval_start: float, interval_step: float, interval_max: float) -> float:
    """Linear backoff capped at ``interval_max``: the wait before retry ``retry`` (1-based)."""
    if retry < 1:
        raise ValueError("retry numbers start at 1")
    return min(interval_start + (retry - 1) * interval_step, interval_max)
