"""Retry policy for failing handlers, and the pure backoff function behind it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

MAX_RETRIES = 100
"""The most ``max_retries`` a policy may have (a ValueError above it)."""

MAX_INTERVAL = 86400.0
"""The longest wait, in seconds, a policy may name (one day; a ValueError above it)."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often, and how far apart, a failing handler is tried again.

    ``max_retries`` retries follow the first try; retry ``n`` (1-based) waits
    ``min(interval_start + (n - 1) * interval_step, interval_max)`` seconds.
    The defaults are the ones earnevents' documentation starts from. Bounds:
    ``max_retries`` up to :data:`MAX_RETRIES`, intervals finite and up to
    :data:`MAX_INTERVAL` seconds; anything else is a ValueError naming the field.

    A frozen dataclass checked by hand, not a pydantic model: every worker and publisher
    builds one, and pydantic's model machinery is megabytes per worker process (issue 15).
    """

    max_retries: int = 3
    interval_start: float = 0.0
    interval_step: float = 0.2
    interval_max: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_retries", _bounded("max_retries", self.max_retries, MAX_RETRIES, whole=True))
        for name in ("interval_start", "interval_step", "interval_max"):
            object.__setattr__(self, name, _bounded(name, getattr(self, name), MAX_INTERVAL, whole=False))
        # Otherwise every wait would silently be cut to interval_max.
        if self.interval_max < self.interval_start:
            raise ValueError(
                f"interval_max ({self.interval_max}) is below interval_start ({self.interval_start}); "
                "raise interval_max too"
            )

    def to_dict(self) -> dict[str, Any]:
        """The policy's fields, as a message carries them (``RetryPolicy(**policy.to_dict())`` is equal)."""
        return asdict(self)

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
        except (TypeError, ValueError) as exc:  # an unknown key is a TypeError of the constructor
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
        retries = min(self.max_retries, caps.max_retries)
        start = max(self.interval_start, caps.min_interval)
        longest = max(self.interval_max, caps.min_interval)
        if (retries, start, longest) == (self.max_retries, self.interval_start, self.interval_max):
            return self
        return replace(self, max_retries=retries, interval_start=start, interval_max=longest)


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


def _bounded(name: str, value: Any, most: float, *, whole: bool) -> Any:
    """``value`` as an int (``whole``) or float from 0 to ``most``; a ValueError naming ``name`` otherwise.

    Accepts what pydantic's lax mode did for these fields: ints, and floats (whole ones for an int).
    """
    kind = "a whole number" if whole else "a number of seconds"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if whole and value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not 0 <= value <= most:
        raise ValueError(f"{name} must be from 0 to {most:g}, got {value!r}")
    return int(value) if whole else float(value)
