"""Receivers: ``@on(event_or_list, sender=None)``, subscribers in the style of Caluma and
Django signals.

A receiver is called ``receiver(sender, **event.data, event=event)``: the sender's
name (``Event.sender``, a str or None) first, the event's data keys as keyword
arguments, and the :class:`~earnevents.Event` itself as ``event=`` when the receiver
has an ``event`` parameter or ``**kwargs``. Otherwise a receiver is a handler like
any other: registered in :data:`earnevents.handlers.registry`, run by the worker,
retried under its policy, recorded as a failed job when its retries are spent.

Its signature is checked when it is registered (:func:`inspect_receiver`) and, for
what only the event can tell (its data keys), before each call in the worker: a
mismatch is a :class:`~earnevents.ReceiverSignatureError` naming the receiver and
the keys, never a bare TypeError from the call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from . import names
from .errors import ReceiverSignatureError
from .event import Event
from .handlers import check_timeout, dotted_name, registry
from .retry import RetryPolicy

F = TypeVar("F", bound=Callable[..., Any])

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class ReceiverSignature:
    """What a receiver takes, read once when it is registered."""

    name: str
    """The receiver's dotted name, for error messages."""
    sender_param: str | None
    """The first parameter's name when a keyword could also fill it (a data key of that name would clash)."""
    keywords: frozenset[str]
    """Data keys it takes by name (neither the sender parameter nor ``event``)."""
    required: frozenset[str]
    """Of those, the ones without a default: the event's data must hold them."""
    var_keyword: bool
    """It takes ``**kwargs``: any data key goes."""
    takes_event: bool
    """It is given ``event=`` (an ``event`` parameter or ``**kwargs``)."""

    def mismatch(self, event: Event) -> str | None:
        """Why this receiver cannot take ``event``'s data, or None if it can."""
        data = event.data
        if self.var_keyword and not self.required and "event" not in data and self.sender_param not in data:
            return None  # the usual receiver(sender, **kwargs): nothing to look at
        problems = []
        clashes = sorted(k for k in data if (k == "event" and self.takes_event) or k == self.sender_param)
        if clashes:
            problems.append(
                f"data key(s) {clashes} clash with its sender parameter or event= (rename them in the event)"
            )
        if not self.var_keyword:
            extra = sorted(k for k in data if k not in self.keywords and k not in clashes)
            if extra:
                problems.append(f"data key(s) {extra} are not among its parameters (add **kwargs to take any)")
        missing = sorted(self.required.difference(data))
        if missing:
            problems.append(f"it requires {missing}, which the data lacks")
        if not problems:
            return None
        return f"receiver {self.name} cannot take the data of {event.name!r} {event.id}: " + "; ".join(problems)

    def caller(self, func: Callable[..., Any]) -> Callable[[Event], Any]:
        """``func`` as the worker calls handlers: with the event alone."""

        def call(event: Event) -> Any:
            problem = self.mismatch(event)
            if problem is not None:
                raise ReceiverSignatureError(problem)
            if self.takes_event:
                return func(event.sender, **event.data, event=event)
            return func(event.sender, **event.data)

        return call


def inspect_receiver(
    func: Callable[..., Any], name: str, fields: Mapping[str, Mapping[str, bool]] | None = None
) -> ReceiverSignature:
    """Read and check a receiver's signature; ReceiverSignatureError naming it if it cannot work.

    The rule: the first parameter takes the sender, so it must be positional (or
    ``*args``); every later parameter without a default must be one a keyword can
    fill (a data key, or ``event``). When the events' schemas are known (``fields``:
    per event name, each data field and whether it is required), a receiver
    without ``**kwargs`` must also name every field, and each parameter it requires
    must be a field. Data keys of events without a schema are checked in the worker.
    """
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError) as exc:
        raise ReceiverSignatureError(f"receiver {name}: its signature cannot be read ({exc})") from None
    shape = "def receiver(sender, **kwargs) or def receiver(sender, <data keys>, event=None)"
    if not params or params[0].kind not in (*_POSITIONAL, inspect.Parameter.VAR_POSITIONAL):
        raise ReceiverSignatureError(f"receiver {name} must take the sender as its first positional parameter: {shape}")
    first, rest = params[0], params[1:]
    unfillable = [p.name for p in rest if p.kind == inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty]
    if unfillable:
        raise ReceiverSignatureError(
            f"receiver {name}: positional-only parameter(s) {unfillable} after the sender are never given "
            f"(data keys come as keyword arguments): {shape}"
        )
    by_keyword = {p.name: p for p in rest if p.kind in _BY_KEYWORD}
    var_keyword = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in rest)
    signature = ReceiverSignature(
        name=name,
        sender_param=first.name if first.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD else None,
        keywords=frozenset(by_keyword) - {"event"},
        required=frozenset(n for n, p in by_keyword.items() if p.default is p.empty and n != "event"),
        var_keyword=var_keyword,
        takes_event=var_keyword or "event" in by_keyword,
    )
    for event_name, schema in (fields or {}).items():
        problems = []
        if not var_keyword:
            untaken = sorted(set(schema) - signature.keywords)
            if untaken:
                problems.append(f"does not take its field(s) {untaken} (name them or add **kwargs)")
        unknown = sorted(signature.required - set(schema))
        if unknown:
            problems.append(f"requires {unknown}, which are not among its fields")
        if problems:
            raise ReceiverSignatureError(f"receiver {name} for {event_name!r}: it " + "; it ".join(problems))
    return signature


def _schema_fields(definition: object) -> dict[str, bool] | None:
    """A definition's data fields (name -> required) from its pydantic ``schema``; None without one."""
    model_fields = getattr(getattr(definition, "schema", None), "model_fields", None)
    if not isinstance(model_fields, Mapping):
        return None
    # Keyed by field name: publishing sends a defined event's data as the schema dumps it.
    fields: dict[str, bool] = {}
    for field_name, info in model_fields.items():
        is_required = getattr(info, "is_required", None)
        fields[str(field_name)] = bool(is_required()) if callable(is_required) else True
    return fields


def subscriptions(event_or_list: object) -> tuple[list[str], dict[str, dict[str, bool]]]:
    """The event names (or patterns) ``@on`` was given, and the data fields of those with a schema.

    Each item is a name or an event definition: any object with a str ``name``
    (``define_event`` returns those), whose pydantic ``schema``, if it has one,
    tells the receiver's data keys before any event is published.
    """
    items: Sequence[object]
    if isinstance(event_or_list, (list, tuple)):
        items = event_or_list
    else:
        items = [event_or_list]
    event_names: list[str] = []
    fields: dict[str, dict[str, bool]] = {}
    for item in items:
        if isinstance(item, str):
            event_names.append(names.check_pattern(item, "@on's event name"))
            continue
        event_name = getattr(item, "name", None)
        if not isinstance(event_name, str):
            raise TypeError(
                "@on takes an event name, an event definition (an object with a str .name) or a list of them, "
                f"got {type(item).__name__}"
            )
        event_names.append(names.check_pattern(event_name, "@on's event name"))
        schema = _schema_fields(item)
        if schema is not None:
            fields[event_name] = schema
    if not event_names:
        raise ValueError("@on needs at least one event name or definition")
    return event_names, fields


def on(
    event_or_list: object,
    sender: type | str | None = None,
    *,
    retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
    timeout: float | None = None,
) -> Callable[[F], F]:
    """Subscribe a receiver, ``async def`` or plain ``def``, to an event or a list of events.

    ``event_or_list``: an event name or pattern (``user.*``, ``**``), an event
    definition (an object with a str ``name``), or a list of them. ``sender`` (a
    class or its qualified name) runs it only for events published with that
    sender. The receiver is called ``receiver(sender, **data, event=event)`` (see the
    module docstring); a signature that cannot take that is refused here with a
    :class:`~earnevents.ReceiverSignatureError` naming it. ``retry_policy`` and
    ``timeout`` as for :func:`~earnevents.event_handler`. Each (event, receiver)
    pair is a job of its own; a receiver several of whose names match one event
    runs once for it.
    """
    event_names, fields = subscriptions(event_or_list)
    sender_name = names.check_sender(sender, "@on's sender")
    policy = RetryPolicy.coerce(retry_policy)
    seconds = check_timeout(timeout)

    def decorate(func: F) -> F:
        name = dotted_name(func, "@on")
        signature = inspect_receiver(func, name, fields)
        registry.subscribe(
            event_names,
            func,
            policy,
            seconds,
            sender=sender_name,
            receiver=True,
            invoke=signature.caller(func),
            what="@on",
        )
        return func

    return decorate
