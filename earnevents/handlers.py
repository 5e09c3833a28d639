"""The handler registry: ``@event_handler`` and ``@model_event_handler``.

Decorating a function records it under an event name or pattern; nothing else
happens at import time. Workers import the modules named in
``EARNEVENTS_HANDLER_MODULES`` and look handlers up here, by event name (and
sender) or by dotted handler name. ``@on`` receivers (:mod:`earnevents.receivers`)
are registered here too, as handlers with another calling convention.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from . import names, patterns
from .errors import HandlerNotFoundError
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .event import Event

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Handler:
    """One subscription: the function, its dotted name, what it subscribes to, its own
    retry policy, timeout and sender filter, and how the worker calls it.

    A function subscribed to several events (``@on([...])``) has one Handler per
    subscription, all with the same ``name``: retries, completions and failed-job
    records know a job by (event id, handler name), and an event runs each name once.
    """

    event_name: str
    """An exact event name or a pattern with ``*``/``**`` segments (:mod:`earnevents.patterns`)."""
    func: Callable[..., Any]
    name: str
    retry_policy: RetryPolicy | None
    is_async: bool
    timeout: float | None = None
    """Seconds one try may run before it fails with HandlerTimeoutError; None: the worker's."""
    sender: str | None = None
    """Runs only for events whose ``Event.sender`` is this name; None: for every sender."""
    receiver: bool = False
    """Registered with ``@on``: called ``func(sender, **data, event=)`` rather than ``func(event)``."""
    invoke: Callable[[Event], Any] | None = field(default=None, repr=False, compare=False)
    """How to call ``func`` with an event, when not as ``func(event)``."""
    internal: bool = False
    """earnevents' own subscription (the workflow event bridge): runs like any other, but is
    left out of :meth:`HandlerRegistry.handlers` (the listing and strict mode's check)."""
    call: Callable[[Event], Any] = field(init=False, repr=False, compare=False)
    """What the worker calls with the event: ``invoke``, else ``func``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "call", self.invoke if self.invoke is not None else self.func)


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


MAX_RESOLVED = 10_000
"""Event names whose matching handlers a registry remembers; past that it starts over
(names come from queue messages: the memory must stay bounded whatever arrives)."""


class HandlerRegistry:
    """Subscriptions by event name or pattern (in registration order) and by dotted name.

    The worker asks :meth:`resolve` for every event: the handlers matching a name
    (exact names and patterns alike) are worked out once and remembered per name,
    so the hot path is one dict lookup, plus the sender filter when a matching
    handler has one.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, tuple[Handler, ...]] = {}
        self._matchers: dict[str, Callable[[str], bool]] = {}  # per pattern, compiled once
        self._resolved: dict[str, tuple[tuple[Handler, ...], bool]] = {}
        self._targeted: dict[str, Handler] = {}

    def register(
        self,
        event_name: str,
        func: Callable[..., Any],
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        *,
        sender: type | str | None = None,
    ) -> Handler:
        """Subscribe ``func`` (called with the Event) to one event name or pattern."""
        return self.subscribe([event_name], func, retry_policy, timeout, sender=sender)[0]

    def subscribe(
        self,
        event_names: Sequence[str],
        func: Callable[..., Any],
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        *,
        sender: type | str | None = None,
        receiver: bool = False,
        invoke: Callable[[Event], Any] | None = None,
        what: str = "event_handler",
        internal: bool = False,
    ) -> list[Handler]:
        """Subscribe ``func`` to each of ``event_names`` (names or patterns); one Handler each.

        ``what`` names the decorator in error messages; ``internal``: see :attr:`Handler.internal`.
        TypeError/ValueError for a bad
        name, pattern or sender, and ValueError when another function is registered
        under the same dotted name.
        """
        if isinstance(event_names, str):
            raise TypeError("subscribe takes a list of event names; register() takes one")
        subscribed = list(dict.fromkeys(names.check_pattern(e, f"{what}'s event name") for e in event_names))
        if not subscribed:
            raise ValueError(f"{what} needs at least one event name")
        sender_name = names.check_sender(sender, f"{what}'s sender")
        name = dotted_name(func, what)
        policy = RetryPolicy.coerce(retry_policy)
        seconds = check_timeout(timeout)
        handlers = tuple(
            Handler(
                event_name=event_name,
                func=func,
                name=name,
                retry_policy=policy,
                is_async=inspect.iscoroutinefunction(func),
                timeout=seconds,
                sender=sender_name,
                receiver=receiver,
                invoke=invoke,
                internal=internal,
            )
            for event_name in subscribed
        )
        existing = self._by_name.get(name)
        if existing is not None:
            if [h.event_name for h in existing] == subscribed and _location(existing[0].func) == _location(func):
                # The same definition imported again (e.g. as __main__ and by name).
                self.unregister(name)
            else:
                raise ValueError(
                    f"another handler is already registered as {name} (for "
                    f"{', '.join(repr(h.event_name) for h in existing)}); retries find handlers by this dotted "
                    "name, so give each handler function a name of its own (lambdas all share '<lambda>'), "
                    "and subscribe one function to several events with one decorator: @on([...])"
                )
        for event_name in subscribed:
            if patterns.is_pattern(event_name) and event_name not in self._matchers:
                self._matchers[event_name] = patterns.compile_pattern(event_name)
        self._by_name[name] = handlers
        self._resolved.clear()
        return list(handlers)

    def register_targeted(
        self, name: str, func: Callable[..., Any], retry_policy: RetryPolicy | None, timeout: float | None = None
    ) -> Handler:
        """Register ``func`` under ``name`` for messages that name it, subscribed to no event.

        earnevents' own handlers (a model's scheduled event is fired by one) run only
        for messages built for them: no event name or pattern, ``**`` included, reaches
        them, and they are not listed among :meth:`handlers`.
        """
        names.check_handler_name(name)
        handler = Handler(
            event_name=name,
            func=func,
            name=name,
            retry_policy=retry_policy,
            is_async=inspect.iscoroutinefunction(func),
            timeout=check_timeout(timeout),
        )
        self._targeted[name] = handler
        return handler

    def unregister(self, name: str) -> None:
        del self._by_name[name]
        self._resolved.clear()

    def _matching(self, event_name: str) -> tuple[tuple[Handler, ...], bool]:
        """The handlers matching ``event_name`` (each name once, registration order), and
        whether any of them filters by sender; remembered per name."""
        found = self._resolved.get(event_name)
        if found is not None:
            return found
        matched: list[Handler] = []
        for handlers in self._by_name.values():
            for h in handlers:
                if self._matches(h.event_name, event_name):
                    matched.append(h)
                    break  # one job per function and event, however many of its subscriptions match
        found = (tuple(matched), any(h.sender is not None for h in matched))
        if len(self._resolved) >= MAX_RESOLVED:
            self._resolved.clear()
        self._resolved[event_name] = found
        return found

    def resolve(self, event_name: str, sender: str | None) -> list[Handler]:
        """The handlers that run for an event of that name and sender (the worker's hot path).

        Exact names and patterns alike; a function subscribed several ways runs once;
        a handler with a sender filter only for that sender.
        """
        handlers, filtered = self._resolved.get(event_name) or self._matching(event_name)
        if not filtered:
            return list(handlers)
        return [h for h in handlers if h.sender is None or h.sender == sender]

    def for_event(self, event_name: str) -> list[Handler]:
        """The handlers whose name or pattern matches ``event_name``, whatever their sender filter."""
        return list(self._matching(event_name)[0])

    def handlers(self) -> list[Handler]:
        """Every subscription, in registration order (a function on several events: one each);
        earnevents' internal ones left out."""
        return [h for handlers in self._by_name.values() for h in handlers if not h.internal]

    def subscribed(self, name: str, event_name: str) -> bool | None:
        """Whether the handler called ``name`` subscribes to ``event_name``; None if it is not registered."""
        handlers = self._by_name.get(name)
        if handlers is None:
            return True if name in self._targeted else None
        return any(self._matches(h.event_name, event_name) for h in handlers)

    def _matches(self, subscription: str, event_name: str) -> bool:
        if subscription == event_name:
            return True
        match = self._matchers.get(subscription)
        return match is not None and match(event_name)

    def get(self, name: str) -> Handler:
        """The handler called ``name`` (a function on several events: its first subscription)."""
        found = self._by_name.get(name)
        if found is not None:
            return found[0]
        try:
            return self._targeted[name]
        except KeyError:
            raise HandlerNotFoundError(
                f"no handler named {name!r} is registered; is its module in EARNEVENTS_HANDLER_MODULES?"
            ) from None


def dotted_name(func: object, what: str = "event_handler") -> str:
    """``module.qualname`` of a function to subscribe; TypeError for a non-callable."""
    if not callable(func):
        raise TypeError(f"{what} decorates functions, got {type(func).__name__}")
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(
            f"{what} decorates functions, which have a __module__ and a __qualname__ to name them by; "
            f"got {type(func).__name__}"
        )
    return names.check_handler_name(f"{module}.{qualname}", "handler name (module.qualname)")


def _location(func: Callable[..., Any]) -> tuple[str, int] | None:
    code = getattr(func, "__code__", None)
    return None if code is None else (code.co_filename, code.co_firstlineno)


registry = HandlerRegistry()
"""The process-wide registry the decorators write to and workers read."""


def event_handler(
    event_name: str,
    retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
    sender: type | str | None = None,
) -> Callable[[F], F]:
    """Subscribe an ``async def`` or plain ``def`` function to ``event_name``.

    The function receives the :class:`~earnevents.Event`. ``event_name`` is an event
    name or a pattern (``user.*``: one segment, ``billing.**``: any number,
    ``**``: every event). It and the function's ``module.qualname`` must follow
    :mod:`earnevents.names` (TypeError or ValueError when decorating). ``retry_policy`` (a dict
    of RetryPolicy fields or a RetryPolicy) overrides every other policy for it.
    ``timeout`` (seconds) makes a try that runs longer fail with HandlerTimeoutError
    (retried, then recorded); None: the worker's ``EARNEVENTS_HANDLER_TIMEOUT``.
    ``sender`` (a class or its qualified name) runs it only for events published
    with that sender; the others make no job for it.
    """
    policy = RetryPolicy.coerce(retry_policy)
    seconds = check_timeout(timeout)
    names.check_pattern(event_name, "event_handler's event name")
    sender_name = names.check_sender(sender, "event_handler's sender")

    def decorate(func: F) -> F:
        registry.register(event_name, func, policy, seconds, sender=sender_name)
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
    sender: type | str | None = None,
) -> Callable[[F], F]:
    """Subscribe to ``<model>.<action>``: ``@model_event_handler("User", "created")``.

    Model events carry their model class as sender, so ``sender=`` tells apart two
    models whose names give the same event name (``HTTPLog`` and ``HttpLog``).
    """
    return event_handler(model_event_name(model, action), retry_policy, timeout=timeout, sender=sender)


OCCURRENCE_CHANGES = ("created", "cancelled")
"""What happens to a scheduled model event's pending occurrence, each announced by an event."""


def occurrence_event_name(event_name: str, change: str) -> str:
    """The event announcing that an occurrence of a model's scheduled event ``event_name``
    was ``created`` (or moved) or ``cancelled``: ``checkin_due:created``."""
    if change not in OCCURRENCE_CHANGES:
        raise ValueError(f"an occurrence is {' or '.join(OCCURRENCE_CHANGES)}, not {change!r}")
    return names.check_event_name(f"{event_name}:{change}", "occurrence event name")


def on_event(
    event_name: str,
    entity_type: type | str | None = None,
    retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
) -> Callable[[F], F]:
    """A handler for an event a model declares (``EventDefinition``), or any event:
    ``@on_event("reservation_confirmed")``; the function gets the Event, and
    ``await event.entity()`` loads the document.

    ``entity_type`` (a model class, or its qualified name: the class name unless the
    class is nested) runs it only for that model's events: the same filter as
    ``@event_handler(..., sender=)``, model events being sent by their model class.
    ``"*"`` (the seed's spelling of the default) is the same as None: every model.
    """
    if entity_type == ANY_ENTITY:
        entity_type = None
    return event_handler(event_name, retry_policy, timeout=timeout, sender=entity_type)


ANY_ENTITY = "*"
"""``entity_type`` for events of every model, as seed 003 writes the default (None does the same)."""


def on_event_created(
    event_name: str,
    entity_type: type | str | None = None,
    retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
) -> Callable[[F], F]:
    """Run when an occurrence of the scheduled model event ``event_name`` is created or
    moved to another time: the Event (``<event_name>:created``) has ``data["due_at"]``,
    ``data["previous_due_at"]`` (the due time before the write; None for a new one) and
    the entity."""
    return on_event(occurrence_event_name(event_name, "created"), entity_type, retry_policy, timeout=timeout)


def on_event_cancelled(
    event_name: str,
    entity_type: type | str | None = None,
    retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
) -> Callable[[F], F]:
    """Run when a pending occurrence of the scheduled model event ``event_name`` is
    cancelled (its condition stopped holding, its date was cleared or its document
    deleted): the Event (``<event_name>:cancelled``) has ``data["due_at"]``,
    ``data["reason"]`` and the entity."""
    return on_event(occurrence_event_name(event_name, "cancelled"), entity_type, retry_policy, timeout=timeout)
