"""The handler registry: ``@event_handler`` and ``@model_event_handler``.

Decorating a function records it under an event name; nothing else happens at
import time. Workers import the modules named in ``EARNEVENTS_HANDLER_MODULES``
and look handlers up here, by event name or by dotted handler name.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from . import names
from .errors import HandlerNotFoundError
from .retry import RetryPolicy

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Handler:
    """One subscriber: the function, its dotted name, its own retry policy and timeout."""

    event_name: str
    func: Callable[..., Any]
    name: str
    retry_policy: RetryPolicy | None
    is_async: bool
    timeout: float | None = None
    """Seconds one try may run before it fails with HandlerTimeoutError; None: the worker's."""


def check_timeout(timeout: object) -> float | None:
    """``timeout`` as a float: a positive finite number of seconds or None.

    TypeError for another type (bool included), ValueError for zero, negative,
    NaN or infinite values.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__}")
    value = float(timeout)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
    return value


class HandlerRegistry:
    """Handlers by event name (in registration order) and by dotted name."""

    def __init__(self) -> None:
        self._by_event: dict[str, list[Handler]] = {}
        self._by_name: dict[str, Handler] = {}

    def register(
        self,
        event_name: str,
        func: Callable[..., Any],
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Handler:
        # Exact names only until subscriptions take wildcards (then: names.check_pattern).
        names.check_event_name(event_name, "event_handler's event name")
        if not callable(func):
            raise TypeError(f"event_handler decorates functions, got {type(func).__name__}")
        name = names.check_handler_name(f"{func.__module__}.{func.__qualname__}", "handler name (module.qualname)")
        handler = Handler(
            event_name=event_name,
            func=func,
            name=name,
            retry_policy=RetryPolicy.coerce(retry_policy),
            is_async=inspect.iscoroutinefunction(func),
            timeout=check_timeout(timeout),
        )
        existing = self._by_name.get(name)
        if existing is not None:
            if existing.event_name == event_name and _location(existing.func) == _location(func):
                # The same definition imported again (e.g. as __main__ and by name).
                self.unregister(name)
            else:
                raise ValueError(
                    f"another handler is already registered as {name} (for {existing.event_name!r}); "
                    "retries find handlers by this dotted name, so give each handler function a name "
                    "of its own (lambdas all share '<lambda>')"
                )
        self._by_event.setdefault(event_name, []).append(handler)
        self._by_name[name] = handler
        return handler

    def unregister(self, name: str) -> None:
        handler = self._by_name.pop(name)
        self._by_event[handler.event_name].remove(handler)

    def for_event(self, event_name: str) -> list[Handler]:
        return list(self._by_event.get(event_name, ()))

    def handlers(self) -> list[Handler]:
        """Every registered handler, in registration order."""
        return list(self._by_name.values())

    def event_of(self, name: str) -> str | None:
        """The event name the handler called ``name`` subscribes to; None if it is not registered."""
        handler = self._by_name.get(name)
        return None if handler is None else handler.event_name

    def get(self, name: str) -> Handler:
        try:
            return self._by_name[name]
        except KeyError:
            raise HandlerNotFoundError(
                f"no handler named {name!r} is registered; is its module in EARNEVENTS_HANDLER_MODULES?"
            ) from None


def _location(func: Callable[..., Any]) -> tuple[str, int] | None:
    code = getattr(func, "__code__", None)
    return None if code is None else (code.co_filename, code.co_firstlineno)


registry = HandlerRegistry()
"""The process-wide registry the decorators write to and workers read."""


def event_handler(
    event_name: str, retry_policy: RetryPolicy | Mapping[str, Any] | None = None, *, timeout: float | None = None
) -> Callable[[F], F]:
    """Subscribe an ``async def`` or plain ``def`` function to ``event_name``.

    The function receives the :class:`~earnevents.Event`. ``event_name`` and the
    function's ``module.qualname`` must follow :mod:`earnevents.names` (TypeError or
    ValueError when decorating). ``retry_policy`` (a dict
    of RetryPolicy fields or a RetryPolicy) overrides every other policy for it.
    ``timeout`` (seconds) makes a try that runs longer fail with HandlerTimeoutError
    (retried, then recorded); None: the worker's ``EARNEVENTS_HANDLER_TIMEOUT``.
    """
    policy = RetryPolicy.coerce(retry_policy)
    seconds = check_timeout(timeout)

    def decorate(func: F) -> F:
        registry.register(event_name, func, policy, seconds)
        return func

    return decorate


def model_event_name(model: str | type, action: str) -> str:
    """``("User", "created")`` -> ``"user.created"``; ``OrderItem`` -> ``order_item``."""
    model_name = model if isinstance(model, str) else model.__name__
    if not isinstance(model_name, str) or not isinstance(action, str):
        raise TypeError("a model event needs a model name and an action, both str")
    if not model_name or not action:
        raise ValueError("a model event needs a model name and an action")
    return names.check_event_name(f"{snake_case(model_name)}.{action}", "model event name")


def snake_case(name: str) -> str:
    """``OrderItem`` -> ``order_item``; ``HTTPLog`` -> ``http_log``."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def model_event_handler(
    model: str | type,
    action: str,
    retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
) -> Callable[[F], F]:
    """Subscribe to ``<model>.<action>``: ``@model_event_handler("User", "created")``."""
    return event_handler(model_event_name(model, action), retry_policy, timeout=timeout)
