"""The Event value object and its wire codec.

Events travel as JSON. Values JSON cannot carry keep their Python type through a
small tagged form, ``{"__ee__": <tag>, "v": <json value>}``, so a handler gets back
exactly the types that were published: datetime, date, time, timedelta, UUID,
Decimal, bson ObjectId, bytes and tuple, at any depth. A user dict that happens to
contain the tag key is wrapped too, so nothing published is ever misread.
Anything else (sets, arbitrary objects, non-string dict keys, containers nested
deeper than :data:`MAX_DEPTH` or holding themselves) is refused with a TypeError
naming the place when the event is encoded, which happens at publish time.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from . import entities, ids, lazy, names

if TYPE_CHECKING:
    import bson
else:
    bson = lazy.module("bson")  # PyMongo's: imported when an event carries an ObjectId

TAG = "__ee__"
"""Key marking a tagged (typed) value in the wire form."""

_JSON_SCALARS = (str, int, float, bool, type(None))

MAX_DEPTH = 100
"""How deep dicts, lists and tuples may nest in an event's data or metadata (data itself is level 1)."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _new_id() -> str:
    return ids.uuid4_hex()


@dataclass(frozen=True, slots=True)
class Event:
    """A named domain event: what happened (``name``) and its facts (``data``).

    ``id`` (a unique hex string) and ``timestamp`` (aware UTC) are filled in when
    the event is created; ``metadata`` holds context that is not domain data
    (tracing ids, the model's changed fields, ...) and defaults to an empty dict.
    ``name`` and a given ``id`` must follow the rules of :mod:`earnevents.names`
    (TypeError for a non-str, ValueError naming the rule otherwise).
    """

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    id: str = field(default_factory=_new_id)
    timestamp: dt.datetime = field(default_factory=_utcnow)

    def __post_init__(self) -> None:
        names.check_event_name(self.name, "Event name")
        names.check_event_id(self.id, "Event id")
        self._check_fields()

    def _check_fields(self) -> None:
        if not isinstance(self.data, Mapping):
            raise TypeError(f"Event data must be a dict, got {type(self.data).__name__}")
        if self.metadata is None:
            object.__setattr__(self, "metadata", {})
        elif not isinstance(self.metadata, Mapping):
            raise TypeError(f"Event metadata must be a dict or None, got {type(self.metadata).__name__}")
        if not isinstance(self.timestamp, dt.datetime) or self.timestamp.tzinfo is None:
            raise ValueError("Event timestamp must be a timezone-aware datetime")

    @property
    def sender(self) -> str | None:
        """Who sent it: ``metadata["sender"]`` (a class's qualified name or a str given to
        ``publish(..., sender=)``, a model's class name for model events); None if unsaid."""
        sender = self.metadata.get("sender") if self.metadata else None
        return sender if isinstance(sender, str) else None

    @property
    def entity_ref(self) -> entities.EntityRef | None:
        """The document this event is about (``metadata["entity"]``: model name and id),
        without loading it; None for an event about no document."""
        return entities.EntityRef.from_metadata(self.metadata.get("entity") if self.metadata else None)

    async def entity(self) -> Any:
        """Load the document this event is about as its model instance (a query each call).

        None if the document was deleted since. ValueError for an event about no
        document (no ``entity_ref``) or whose entity id is no ObjectId (no document can
        have it); :class:`earnevents.entities.UnknownModelError` when its model class is
        not imported in this process.
        """
        ref = self.entity_ref
        if ref is None:
            raise ValueError(
                f"event {self.name} {self.id} names no entity: only model events "
                "(automatic, dispatch_model_event, EventDefinition) carry metadata['entity']"
            )
        return await entities.load(ref)

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON-safe form of this event; raises TypeError on unserializable data."""
        return {
            "id": self.id,
            "name": self.name,
            "timestamp": self.timestamp.isoformat(),
            "data": encode(self.data, "data"),
            "metadata": encode(self.metadata, "metadata"),
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Event:
        """Rebuild an event from :meth:`to_wire` output; raises ValueError on malformed input.

        The name and id need only be non-empty strings here, not follow the rules
        ``Event(...)`` enforces: events stored (failed jobs, the schedule) before a rule
        existed stay readable. New events cannot break them: publishing builds an Event.
        """
        try:
            fields = {
                "name": wire["name"],
                "data": decode(wire["data"]),
                "metadata": decode(wire.get("metadata") or {}),
                "id": wire["id"],
                "timestamp": dt.datetime.fromisoformat(wire["timestamp"]),
            }
            for key in ("name", "id"):
                if not isinstance(fields[key], str) or not fields[key]:
                    raise TypeError(f"event {key} must be a non-empty str, got {fields[key]!r}")
            event = object.__new__(cls)
            for key, value in fields.items():
                object.__setattr__(event, key, value)
            event._check_fields()
            return event
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed event on the wire: {exc!r}") from exc


# --- the typed-value codec ---------------------------------------------------------

_Encoder = Callable[[Any], Any]
_Decoder = Callable[[Any], Any]

# Order matters: datetime is a subclass of date, bool of int.
_ENCODERS: tuple[tuple[type, str, _Encoder], ...] = (
    (dt.datetime, "datetime", lambda v: v.isoformat()),
    (dt.date, "date", lambda v: v.isoformat()),
    (dt.time, "time", lambda v: v.isoformat()),
    (dt.timedelta, "timedelta", lambda v: [v.days, v.seconds, v.microseconds]),
    (uuid.UUID, "uuid", str),
    (Decimal, "decimal", str),
    (bytes, "bytes", lambda v: base64.b64encode(v).decode("ascii")),
)

_DECODERS: dict[str, _Decoder] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "uuid": uuid.UUID,
    "decimal": Decimal,
    "objectid": lambda v: bson.ObjectId(v),
    "bytes": base64.b64decode,
    "tuple": lambda v: tuple(decode(x) for x in v),
    "dict": lambda v: {k: decode(x) for k, x in v.items()},
}


def encode(value: Any, path: str = "value") -> Any:
    """Return ``value`` in JSON-safe wire form, keeping supported types tagged.

    ``path`` names the position in error messages (``data['when'][2]``). Containers
    (dicts, lists, tuples) may nest :data:`MAX_DEPTH` deep, ``value`` itself counting
    as one; deeper nesting, and a container that holds itself, are a TypeError.
    """
    try:
        return _encode(value, path, 1)
    except _TooDeep as exc:
        raise TypeError(exc.explain()) from None


class _TooDeep(Exception):
    """Raised past MAX_DEPTH; each container on the way out adds itself, outermost last."""

    def __init__(self, value: Any, path: str) -> None:
        super().__init__(path)
        self.chain: list[tuple[Any, str]] = [(value, path)]

    def explain(self) -> str:
        # Tracking the open containers at every level would slow every publish: only
        # once the depth limit is hit, tell a container holding itself from deep data.
        seen: dict[int, str] = {}
        for value, path in reversed(self.chain):
            if id(value) in seen:
                return (
                    f"{path} is {seen[id(value)]} itself: an event cannot carry a dict, list or tuple "
                    "that contains itself"
                )
            seen[id(value)] = path
        return (
            f"{self.chain[0][1]} is nested {MAX_DEPTH + 1} levels deep; event data and metadata may "
            f"nest dicts, lists and tuples {MAX_DEPTH} levels deep at most"
        )


def _encode(value: Any, path: str, depth: int) -> Any:
    # ``value`` sits at level ``depth`` (the top value is level 1).
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, Mapping):
        if depth > MAX_DEPTH:
            raise _TooDeep(value, path)
        out: dict[str, Any] = {}
        try:
            for key, item in value.items():
                if not isinstance(key, str):
                    raise TypeError(f"{path} has a {type(key).__name__} key {key!r}; event dict keys must be str")
                out[key] = _encode(item, f"{path}[{key!r}]", depth + 1)
        except _TooDeep as exc:
            exc.chain.append((value, path))
            raise
        return {TAG: "dict", "v": out} if TAG in out else out
    if isinstance(value, (list, tuple)):
        if depth > MAX_DEPTH:
            raise _TooDeep(value, path)
        try:
            items = [_encode(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
        except _TooDeep as exc:
            exc.chain.append((value, path))
            raise
        return items if isinstance(value, list) else {TAG: "tuple", "v": items}
    for typ, tag, to_json in _ENCODERS:
        if isinstance(value, typ):
            return {TAG: tag, "v": to_json(value)}
    if isinstance(value, lazy.loaded_class("bson", "ObjectId")):  # no ObjectId before bson is imported
        return {TAG: "objectid", "v": str(value)}
    raise TypeError(
        f"{path} is a {type(value).__name__}, which an event cannot carry; use JSON types, "
        "datetime, date, time, timedelta, UUID, Decimal, ObjectId, bytes or tuple"
    )


def decode(value: Any) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(value, list):
        return [decode(item) for item in value]
    if isinstance(value, dict):
        tag = value.get(TAG)
        if tag is not None and len(value) == 2 and "v" in value:
            try:
                decoder = _DECODERS[tag]
            except KeyError:
                raise ValueError(f"unknown wire type tag {tag!r}") from None
            return decoder(value["v"])
        return {key: decode(item) for key, item in value.items()}
    return value
