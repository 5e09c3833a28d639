"""What a workflow step returns: the command that says where the run goes next.

``goto(step)``, ``sleep(duration, then=None)``, ``wait_for_event(name, ...)``,
``wait(signal, ...)`` (also ``wait.for_signal(...)``), ``complete(**result)``,
``fail(reason)``. A step is named by its method (``self.finalize``) or its name
(``"finalize"``); ``then=None`` runs the same step again after waking. ``Retry``
is a step's (or a workflow's default) retry policy.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import names
from ..event import encode

StepRef = str | Callable[..., Any]
"""A step: its name, or the method itself (``self.finalize``)."""

MAX_WAIT = 10 * 365.25 * 86400
"""The longest sleep or wait timeout, in seconds (10 years, as for delayed events)."""


def step_name(ref: StepRef | None, what: str) -> str | None:
    """The name of the step ``ref`` names (a str as it is, a method by its ``__name__``)."""
    if ref is None:
        return None
    if isinstance(ref, str):
        if not ref.isidentifier():
            raise ValueError(f"{what}: {ref!r} is not a step name (a method name)")
        return ref
    name = getattr(ref, "__name__", None)
    if not callable(ref) or not isinstance(name, str):
        raise TypeError(f"{what} takes a step: its method or its name, got {type(ref).__name__}")
    return name


def seconds(duration: dt.timedelta | float | int, what: str) -> float:
    """``duration`` in seconds: a timedelta or a number, at least 0 and at most :data:`MAX_WAIT`."""
    if isinstance(duration, dt.timedelta):
        value = duration.total_seconds()
    elif isinstance(duration, (int, float)) and not isinstance(duration, bool):
        value = float(duration)
    else:
        raise TypeError(f"{what} must be a timedelta or a number of seconds, got {type(duration).__name__}")
    if not math.isfinite(value) or value < 0 or value > MAX_WAIT:
        raise ValueError(f"{what} must be between 0 and {MAX_WAIT:.0f} seconds, got {value!r}")
    return value


class Command:
    """Base of what a step returns."""


@dataclass(frozen=True)
class Goto(Command):
    step: str


@dataclass(frozen=True)
class Sleep(Command):
    seconds: float
    then: str | None = None


@dataclass(frozen=True)
class Wait(Command):
    """Wait for a signal (``kind="signal"``) or an event (``kind="event"``)."""

    kind: str
    name: str
    timeout: float | None = None
    on_timeout: str | None = None
    match: Mapping[str, Any] | None = None
    then: str | None = None


@dataclass(frozen=True)
class Complete(Command):
    result: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fail(Command):
    reason: str


def goto(step: StepRef) -> Goto:
    """Go on with ``step`` now."""
    return Goto(step_name(step, "goto") or "")


def sleep(duration: dt.timedelta | float, then: StepRef | None = None) -> Sleep:
    """Sleep ``duration`` (a timedelta or seconds), holding no worker, then run ``then``
    (None: this step again)."""
    return Sleep(seconds(duration, "sleep's duration"), step_name(then, "sleep's then"))


def _timeout(
    timeout: dt.timedelta | float | None, on_timeout: StepRef | None, what: str
) -> tuple[float | None, str | None]:
    if timeout is None:
        if on_timeout is not None:
            raise ValueError(f"{what}: on_timeout needs a timeout")
        return None, None
    return seconds(timeout, f"{what}'s timeout"), step_name(on_timeout, f"{what}'s on_timeout")


def wait_for_event(
    name: str,
    timeout: dt.timedelta | float | None = None,
    on_timeout: StepRef | None = None,
    match: Mapping[str, Any] | None = None,
    then: StepRef | None = None,
) -> Wait:
    """Wait until an event called ``name`` is published (by anyone), then run ``then`` (None:
    this step again) with the event's data merged into the Context.

    ``match`` (data field -> value) wakes only on events whose data has those values.
    ``timeout`` (a timedelta or seconds) goes to ``on_timeout`` (None: fail the run) if no
    such event came first. Write ``name`` as a literal string in the step: workers subscribe
    to the names they find so (``earnevents.worker.workflow_events``); a name computed at
    run time is woken only by events some literal wait subscribes to.
    """
    names.check_event_name(name, "wait_for_event's event name")
    if match is not None and not isinstance(match, Mapping):
        raise TypeError(f"wait_for_event's match must be a dict of data field -> value, got {type(match).__name__}")
    seconds_, on_timeout_ = _timeout(timeout, on_timeout, "wait_for_event")
    return Wait("event", name, seconds_, on_timeout_, dict(match) if match else None, step_name(then, "then"))


class _WaitForSignal:
    """``wait(signal, ...)``, also spelled ``wait.for_signal(signal, ...)``."""

    def __call__(
        self,
        signal: str,
        timeout: dt.timedelta | float | None = None,
        on_timeout: StepRef | None = None,
        then: StepRef | None = None,
    ) -> Wait:
        """Wait until ``engine.signal(signal, ...)`` is sent, then run ``then`` (None: this step
        again) with the payload merged into the Context; ``timeout`` goes to ``on_timeout``."""
        names.check_event_name(signal, "wait's signal name")
        seconds_, on_timeout_ = _timeout(timeout, on_timeout, "wait")
        return Wait("signal", signal, seconds_, on_timeout_, None, step_name(then, "then"))

    for_signal = __call__


wait = _WaitForSignal()


def complete(**result: Any) -> Complete:
    """End the run as ``completed`` with ``result``: values an event could carry (JSON types,
    datetime, Decimal, ...), else a TypeError here, in the step (its failure, retried as such)."""
    encode(result, "complete's result")
    return Complete(result)


def fail(reason: str) -> Fail:
    """End the run as ``failed`` with ``reason``."""
    if not isinstance(reason, str):
        raise TypeError(f"fail takes a reason (str), got {type(reason).__name__}")
    return Fail(reason)


@dataclass(frozen=True)
class Retry:
    """A step's retry policy: ``max_attempts`` tries in all, the n-th retry after
    ``base_delay * backoff ** (n - 1)`` (at most ``max_delay``)."""

    max_attempts: int = 3
    base_delay: dt.timedelta = dt.timedelta(seconds=1)
    backoff: float = 2.0
    max_delay: dt.timedelta | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"Retry.max_attempts must be an int >= 1, got {self.max_attempts!r}")
        seconds(self.base_delay, "Retry.base_delay")
        if self.max_delay is not None:
            seconds(self.max_delay, "Retry.max_delay")
        if not isinstance(self.backoff, (int, float)) or isinstance(self.backoff, bool) or not 1 <= self.backoff <= 100:
            raise ValueError(f"Retry.backoff must be a number from 1 to 100, got {self.backoff!r}")

    def delay(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1 for the first)."""
        value = seconds(self.base_delay, "Retry.base_delay") * self.backoff ** (retry - 1)
        if self.max_delay is not None:
            value = min(value, seconds(self.max_delay, "Retry.max_delay"))
        return min(value, MAX_WAIT)
