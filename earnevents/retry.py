"""Retry policy for failing handlers, and the pure backoff function behind it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class RetryPolicy(BaseModel):
    """How often, and how far apart, a failing handler is tried again.

    ``max_retries`` retries follow the first try; retry ``n`` (1-based) waits
    ``min(interval_start + (n - 1) * interval_step, interval_max)`` seconds.
    The defaults are the ones earnevents' documentation starts from.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_retries: int = Field(default=3, ge=0)
    interval_start: float = Field(default=0.0, ge=0)
    interval_step: float = Field(default=0.2, ge=0)
    interval_max: float = Field(default=0.5, ge=0)

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


def backoff(retry: int, interval_start: float, interval_step: float, interval_max: float) -> float:
    """Linear backoff capped at ``interval_max``: the wait before retry ``retry`` (1-based)."""
    if retry < 1:
        raise ValueError("retry numbers start at 1")
    return min(interval_start + (retry - 1) * interval_step, interval_max)
