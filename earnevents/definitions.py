"""The event registry: ``define_event`` and ``earnevents.registry``.

A definition declares an event name, optionally with a pydantic schema for its
data, a description, per-code metadata (cla_eventlog's ``codes``) and any other
metadata. Publishing consults the registry (:meth:`EventRegistry.prepare`): an
event whose name has a schema is validated and sent as validated; in strict mode
an undefined name is refused. ``registry`` lists the definitions together with
the handlers and receivers subscribed to them (``earnevents events``).

Definitions live in the process that imports them: publishers and workers see
the same ones when both import the modules that define them (autodiscovery,
``EARNEVENTS_AUTODISCOVER``, does that for ``events`` modules).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import difflib
import enum
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import event as codec
from . import lazy, names
from .errors import EventDefinitionError, EventValidationError, UndefinedEventError
from .event import Event
from .patterns import compile_pattern, is_pattern

if TYPE_CHECKING:  # pydantic only where a schema is used (earnevents.lazy)
    import pydantic
    import pydantic_core
    from pydantic_core import ErrorDetails
else:
    pydantic = lazy.module("pydantic")
    pydantic_core = lazy.module("pydantic_core")

_CODE_NAME = re.compile(r"[A-Za-z0-9_:.-]{1,200}")

# Values the event codec carries with their type (earnevents.event): kept as they are.
_CARRIED = (
    str,
    int,
    float,
    bool,
    type(None),
    dt.datetime,
    dt.date,
    dt.time,
    dt.timedelta,
    uuid.UUID,
    Decimal,
    bytes,
)


@dataclass(frozen=True, eq=False)
class DefinedEvent:
    """One ``define_event``: the event name and what is known about it.

    Call it with the data's fields to build a validated :class:`~earnevents.Event`:
    ``OrderPaid(order_id=42, total=Decimal("19.90"))``.
    """

    name: str
    schema: type[pydantic.BaseModel] | None
    """The pydantic model the event's data must fit; None: any data."""
    description: str
    codes: Mapping[str, Mapping[str, Any]]
    """Per-code metadata, read-only: ``{"PAID": {"type": ..., "level": ..., "description": ...}}``."""
    metadata: Mapping[str, Any]
    """The other keyword arguments of ``define_event``, read-only."""

    def __call__(self, /, **data: Any) -> Event:
        """An Event of this name whose data is ``data`` as the schema validated it."""
        return Event(self.name, self.validate(data))

    def validate(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` as the schema validates it (coerced values, defaults filled in), in the
        types the event codec carries (Decimal, datetime, ... kept; enums by value, sets as
        lists). Without a schema: a copy of ``data``. EventValidationError naming each
        field that does not fit."""
        if not isinstance(data, Mapping):
            raise TypeError(f"event {self.name!r}: data must be a dict, got {type(data).__name__}")
        if self.schema is None:
            return dict(data)
        try:
            model = self.schema.model_validate(dict(data))
        except pydantic.ValidationError as exc:
            problems = "; ".join(_problem(error) for error in exc.errors())
            raise EventValidationError(
                f"event {self.name!r} does not fit its schema {self.schema.__qualname__}: {problems}",
                [dict(error) for error in exc.errors(include_url=False)],
            ) from None
        dumped = _carryable(model.model_dump())
        assert isinstance(dumped, dict)
        return dumped

    def load(self, event: Event) -> pydantic.BaseModel:
        """The event's data as an instance of the schema (in a handler: ``OrderPaid.load(event)``).

        TypeError without a schema; EventValidationError if the data does not fit.
        """
        if self.schema is None:
            raise TypeError(f"event {self.name!r} was defined without a schema")
        return self.schema.model_validate(self.validate(event.data))

    def __repr__(self) -> str:
        schema = "None" if self.schema is None else self.schema.__qualname__
        return f"DefinedEvent({self.name!r}, schema={schema}, codes={sorted(self.codes)})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for ``earnevents events --json``)."""
        return {
            "name": self.name,
            "description": self.description,
            "schema": None if self.schema is None else _dotted(self.schema),
            "fields": [] if self.schema is None else list(self.schema.model_fields),
            "codes": codec.encode({code: dict(meta) for code, meta in self.codes.items()}, "codes"),
            "metadata": codec.encode(dict(self.metadata), "metadata"),
        }


@dataclass(frozen=True)
class Subscriber:
    """A handler or receiver as the registry lists it."""

    name: str
    """Dotted name (``module.qualname``), as in failed-job records."""
    subscription: str
    """The event name or pattern (``user.*``) it subscribed to."""
    sender: str | None = None
    """The sender it is filtered on; None: any."""
    receiver: bool = False
    """Registered with ``@on`` (called ``receiver(sender, **data)``) rather than ``@event_handler``."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "subscription": self.subscription, "sender": self.sender}


@dataclass(frozen=True)
class RegistryEntry:
    """An event name with its definition (None: subscribed to, never defined) and subscribers.

    ``handlers`` and ``receivers`` include pattern subscriptions (``user.*``) that match the name.
    """

    name: str
    definition: DefinedEvent | None
    handlers: tuple[Subscriber, ...]
    receivers: tuple[Subscriber, ...]

    def to_dict(self) -> dict[str, Any]:
        out = (
            self.definition.to_dict()
            if self.definition is not None
            else {"name": self.name, "description": None, "schema": None, "fields": [], "codes": {}, "metadata": {}}
        )
        out["defined"] = self.definition is not None
        out["handlers"] = [s.to_dict() for s in self.handlers]
        out["receivers"] = [s.to_dict() for s in self.receivers]
        return out


@dataclass(frozen=True)
class PatternEntry:
    """A wildcard subscription, its subscribers and the defined names it matches."""

    pattern: str
    handlers: tuple[Subscriber, ...]
    receivers: tuple[Subscriber, ...]
    matches: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "handlers": [s.to_dict() for s in self.handlers],
            "receivers": [s.to_dict() for s in self.receivers],
            "matches": list(self.matches),
        }


class EventRegistry:
    """Every :class:`DefinedEvent` of this process, by name (in definition order).

    ``handlers``: what lists the subscribed handlers (objects with ``name``,
    ``event_name`` and optionally ``sender`` and ``receiver``); by default
    ``earnevents.handlers.registry.handlers``.
    """

    def __init__(self, handlers: Callable[[], Iterable[Any]] | None = None) -> None:
        self._by_name: dict[str, DefinedEvent] = {}
        self._handlers = handlers

    # --- definitions ---------------------------------------------------------------

    def add(self, definition: DefinedEvent) -> DefinedEvent:
        """Register ``definition``; the one already registered if it has the same contents
        (a module imported again), EventDefinitionError if it differs. A name a model
        declared (:data:`MODEL_DECLARED`) gives way to an explicit ``define_event``."""
        existing = self._by_name.get(definition.name)
        if existing is None or (existing.metadata.get(MODEL_DECLARED) and not definition.metadata.get(MODEL_DECLARED)):
            self._by_name[definition.name] = definition
            return definition
        if _contents(existing) == _contents(definition):
            return existing
        raise EventDefinitionError(
            f"event {definition.name!r} is already defined with another {_difference(existing, definition)}; "
            "define each event once (e.g. in its app's events module) and import it where it is needed"
        )

    def unregister(self, name: str) -> None:
        """Forget the definition of ``name`` (tests, reloads); KeyError if there is none."""
        del self._by_name[name]

    def get(self, name: str) -> DefinedEvent | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> DefinedEvent:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[DefinedEvent]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self) -> list[str]:
        """Defined event names, sorted."""
        return sorted(self._by_name)

    def suggest(self, name: str) -> list[str]:
        """Defined names close to ``name`` (a typo's likely intent), best first."""
        return difflib.get_close_matches(name, list(self._by_name), n=3, cutoff=0.6)

    # --- publishing ----------------------------------------------------------------

    def prepare(self, events: list[Event], strict: bool) -> list[Event]:
        """``events`` as they are to be sent: data validated against each defined schema
        (EventValidationError), names checked in strict mode (UndefinedEventError).

        Events whose definition has a schema are replaced by copies (same id, timestamp
        and metadata) carrying the validated data; the others are sent as they are.
        """
        if not self._by_name and not strict:
            return events
        out: list[Event] | None = None
        for index, event in enumerate(events):
            definition = self._by_name.get(event.name)
            if definition is None:
                if strict:
                    raise UndefinedEventError(
                        f"event {event.name!r} is not defined and strict mode is on{self._hint(event.name)}; "
                        "define it with earnevents.define_event(...) in a module this process imports "
                        "(see EARNEVENTS_AUTODISCOVER); nothing was sent"
                    )
                continue
            if definition.schema is None:
                continue
            data = definition.validate(event.data)
            if out is None:
                out = list(events)
            out[index] = dataclasses.replace(event, data=data)
        return events if out is None else out

    def _hint(self, name: str) -> str:
        close = self.suggest(name)
        return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""

    # --- subscriptions -------------------------------------------------------------

    def entries(self) -> list[RegistryEntry]:
        """Each defined name (sorted), then each exact name handlers subscribe to without
        a definition, with the handlers and receivers that run for it."""
        subscribers = _subscribers(self._handlers)
        patterns = [(s, compile_pattern(s.subscription)) for s in subscribers if is_pattern(s.subscription)]
        exact: dict[str, list[Subscriber]] = {}
        for s in subscribers:
            if not is_pattern(s.subscription):
                exact.setdefault(s.subscription, []).append(s)
        out = []
        undefined = sorted(name for name in exact if name not in self._by_name)
        for name in [*self.names(), *undefined]:
            # A subscriber whose exact name and pattern both match runs once: list it once.
            once: dict[str, Subscriber] = {}
            for s in exact.get(name, []) + [s for s, matches in patterns if matches(name)]:
                once.setdefault(s.name, s)
            subs = list(once.values())
            out.append(
                RegistryEntry(
                    name,
                    self._by_name.get(name),
                    tuple(s for s in subs if not s.receiver),
                    tuple(s for s in subs if s.receiver),
                )
            )
        return out

    def patterns(self) -> list[PatternEntry]:
        """Each wildcard subscription (sorted), with the defined names it matches."""
        by_pattern: dict[str, list[Subscriber]] = {}
        for s in _subscribers(self._handlers):
            if is_pattern(s.subscription):
                by_pattern.setdefault(s.subscription, []).append(s)
        out = []
        for pattern in sorted(by_pattern):
            matches = compile_pattern(pattern)
            subs = by_pattern[pattern]
            out.append(
                PatternEntry(
                    pattern,
                    tuple(s for s in subs if not s.receiver),
                    tuple(s for s in subs if s.receiver),
                    tuple(name for name in self.names() if matches(name)),
                )
            )
        return out

    def undefined_subscriptions(self) -> list[Subscriber]:
        """Handlers and receivers subscribed to an exact name that has no definition."""
        return [
            s
            for s in _subscribers(self._handlers)
            if not is_pattern(s.subscription) and s.subscription not in self._by_name
        ]

    def check_subscriptions(self) -> None:
        """UndefinedEventError naming every handler subscribed to an undefined exact name
        (what a worker in strict mode checks at start; patterns are not checked)."""
        missing = self.undefined_subscriptions()
        if missing:
            listed = "; ".join(
                f"{s.name} subscribes to {s.subscription!r}{self._hint(s.subscription)}" for s in missing
            )
            raise UndefinedEventError(
                f"strict mode: {len(missing)} handler(s) subscribe to events that are not defined: {listed}. "
                "Define them with earnevents.define_event(...) in a module the worker imports "
                "(EARNEVENTS_AUTODISCOVER or EARNEVENTS_HANDLER_MODULES), or fix the names"
            )

    def to_dict(self) -> dict[str, Any]:
        """The whole registry, JSON-safe: ``events`` (defined, then undefined but subscribed
        to) and ``patterns``."""
        return {
            "events": [entry.to_dict() for entry in self.entries()],
            "patterns": [entry.to_dict() for entry in self.patterns()],
        }


MODEL_DECLARED = "declared_by_model"
"""Metadata key of the definitions models make for the events they declare (``EventDefinition``),
so strict mode knows those names; a ``define_event`` of the same name (with a schema, say) replaces them."""

registry = EventRegistry()
"""The process' event registry: ``from earnevents import registry``."""


def define_event(
    name: str,
    *,
    schema: type[pydantic.BaseModel] | None = None,
    description: str = "",
    codes: Mapping[str, Mapping[str, Any]] | None = None,
    **metadata: Any,
) -> DefinedEvent:
    """Declare the event ``name`` and return its definition.

    ``schema``: a pydantic model class; events of this name are validated against it
    when published (EventValidationError, nothing sent) and sent as validated.
    ``codes``: per-code metadata, ``{"PAID": {"type": "outcome", "level": "high",
    "description": "...", "order": 10, "selectable_by": [...], ...}}`` (any keys).
    Any other keyword is kept in ``metadata``. Defining a name again with the same
    contents returns the first definition; with other contents it is an
    EventDefinitionError. TypeError/ValueError for arguments of the wrong kind.
    """
    names.check_event_name(name, "define_event's event name")
    if schema is not None and not (isinstance(schema, type) and issubclass(schema, pydantic.BaseModel)):
        raise TypeError(f"define_event({name!r}): schema must be a pydantic model class, got {schema!r}")
    if not isinstance(description, str):
        raise TypeError(f"define_event({name!r}): description must be a str, got {type(description).__name__}")
    definition = DefinedEvent(
        name=name,
        schema=schema,
        description=description,
        codes=_check_codes(name, codes),
        metadata=_frozen(name, metadata, "metadata"),
    )
    return registry.add(definition)


# --- helpers ------------------------------------------------------------------------


def _subscribers(source: Callable[[], Iterable[Any]] | None) -> list[Subscriber]:
    if source is None:
        # Imported here: handlers may take definitions (``@on(OrderPaid)``), so handlers
        # must be able to import this module, not the other way round at import time.
        from .handlers import registry as handlers

        source = handlers.handlers
    return [
        Subscriber(
            name=h.name,
            subscription=h.event_name,
            sender=h.sender,
            receiver=h.receiver,
        )
        for h in source()
    ]


def _problem(error: ErrorDetails) -> str:
    where = "data" + "".join(f"[{part!r}]" for part in error["loc"])
    if "input" in error and error["type"] != "missing":
        value = error["input"]
        return f"{where}: {error['msg']} (got {type(value).__name__} {value!r:.80})"
    return f"{where}: {error['msg']}"


def _carryable(value: Any) -> Any:
    """A schema's dump in the types the event codec carries: those it knows are kept,
    enums become their values, sets lists, anything else its JSON form (pydantic's)."""
    if isinstance(value, enum.Enum) and not isinstance(value, (str, int)):
        return _carryable(value.value)
    if isinstance(value, (*_CARRIED, lazy.loaded_class("bson", "ObjectId"))):
        return value
    if isinstance(value, Mapping):
        return {
            k if isinstance(k, str) else str(pydantic_core.to_jsonable_python(k)): _carryable(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_carryable(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_carryable(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return [_carryable(v) for v in value]
    return pydantic_core.to_jsonable_python(value)


def _check_codes(name: str, codes: Any) -> Mapping[str, Mapping[str, Any]]:
    if codes is None:
        return MappingProxyType({})
    where = f"define_event({name!r}): codes"
    if not isinstance(codes, Mapping):
        raise TypeError(f"{where} must be a dict of code -> metadata dict, got {type(codes).__name__}")
    out: dict[str, Mapping[str, Any]] = {}
    for code, meta in codes.items():
        if not isinstance(code, str):
            raise TypeError(f"{where}: code names must be str, got {type(code).__name__} {code!r}")
        if not _CODE_NAME.fullmatch(code):
            raise ValueError(f"{where}: code {code!r} must be 1-200 ASCII letters, digits and '_:.-'")
        if not isinstance(meta, Mapping):
            raise TypeError(
                f"{where}[{code!r}] must be a dict (type, level, description, ...), got {type(meta).__name__}"
            )
        if "description" in meta and not isinstance(meta["description"], str):
            raise TypeError(f"{where}[{code!r}]['description'] must be a str")
        order = meta.get("order")
        if order is not None and (isinstance(order, bool) or not isinstance(order, int)):
            raise TypeError(f"{where}[{code!r}]['order'] must be an int or None")
        selectable = meta.get("selectable_by")
        if selectable is not None and (
            not isinstance(selectable, (list, tuple)) or not all(isinstance(s, str) for s in selectable)
        ):
            raise TypeError(f"{where}[{code!r}]['selectable_by'] must be a list of str")
        out[code] = _frozen(name, meta, f"codes[{code!r}]")
    return MappingProxyType(out)


def _frozen(name: str, values: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    """A read-only copy of ``values``, which the event codec must be able to carry (so
    the registry can be shown as JSON): TypeError naming the place otherwise."""
    for key in values:
        if not isinstance(key, str):
            raise TypeError(f"define_event({name!r}): {what} keys must be str, got {type(key).__name__} {key!r}")
    codec.encode(dict(values), f"define_event({name!r}): {what}")
    return MappingProxyType(copy.deepcopy(dict(values)))


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _schema_key(schema: type[pydantic.BaseModel] | None) -> Any:
    """What makes two schemas the same one: a class defined again (a module imported
    again, or as ``__main__``) counts as the same if its name and JSON schema agree."""
    if schema is None:
        return None
    try:
        return (schema.__qualname__, repr(schema.model_json_schema()))
    except Exception:  # arbitrary types without a JSON schema: only the class itself
        return schema


def _contents(definition: DefinedEvent) -> tuple[Any, ...]:
    return (
        _schema_key(definition.schema),
        definition.description,
        {code: dict(meta) for code, meta in definition.codes.items()},
        dict(definition.metadata),
    )


def _difference(old: DefinedEvent, new: DefinedEvent) -> str:
    labels = ("schema", "description", "codes", "metadata")
    differ = [label for label, a, b in zip(labels, _contents(old), _contents(new), strict=True) if a != b]
    return ", ".join(differ)
