"""Events a model declares: ``EventDefinition`` in ``_events``, kept right on every write.

::

    class Reservation(BaseModel):
        _events = (
            "created",
            EventDefinition("reservation_confirmed", condition=lambda r: r.status == "confirmed"),
            EventDefinition("checkin_due", date_field="checkin_at", condition=lambda r: r.status == "confirmed"),
            EventDefinition("checkin_reminder", date_field="checkin_at", offset=timedelta(hours=-24)),
        )

- **Immediate** (no ``date_field``): published after a create or save when the
  condition holds and did not hold before the write (on create, "before" is false);
  ``fire="always"``: after every write while it holds. Delete publishes none.
- **Scheduled** (``date_field``): one pending *occurrence* per (document,
  definition) in the delay schedule, due at the field's datetime plus ``offset``
  while the condition holds. A write that changes the due time or the condition
  creates, moves or cancels it, and announces that with ``<name>:created`` /
  ``<name>:cancelled`` events (``@on_event_created`` / ``@on_event_cancelled``).
  When due, a worker loads the document again and publishes the event only if it
  still exists, the condition holds and the due time is the same
  (``earnevents.worker.occurrences``). A due time already past at write time fires
  at once, unless ``catch_up=False``. An occurrence is identified by (document,
  definition, due time): it is delivered once, however often it is scheduled.

The "before" state of a write is what the instance last loaded or wrote (its
snapshot), not what another process may have written since; the worker's check at
due time covers such races for scheduled events. Writes that bypass the model
(``update_many`` on the collection) maintain nothing: :func:`rebuild` (run by the
workers when Redis lost the schedule, and by ``earnevents scheduled rebuild``)
recreates pending occurrences from the documents.
"""

from __future__ import annotations

import datetime as dt
import inspect
import time
import types
import typing
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from .. import definitions, entities, ids, keys, lazy, message, names, runtime, schedule
from ..entities import EntityRef
from ..errors import EventConditionError
from ..event import Event
from ..handlers import occurrence_event_name
from ..logtext import get_logger
from .events import model_data
from .fields import MISSING

if TYPE_CHECKING:
    import pydantic
    from redis.asyncio import Redis

    from .base import BaseModel
else:
    pydantic = lazy.module("pydantic")

log = get_logger(__name__)

Condition = Callable[[Any], "bool | Awaitable[bool]"]

_NAMESPACE = uuid.UUID("0b3e8a4c-5f1d-4c2a-9e7b-6d2f1a8c3e51")


@dataclass(frozen=True)
class EventDefinition:
    """An event a model declares in ``_events``: immediate, or scheduled at a date field.

    ``condition``: a plain or async callable of the model instance returning whether the
    event applies (None: always). ``date_field``: the name of a datetime field; the event
    is then scheduled at its value plus ``offset`` (a timedelta, negative for before).
    ``fire``: ``"transition"`` (immediate events publish when the condition becomes
    true) or ``"always"`` (after every write while it holds). ``catch_up``: a scheduled
    occurrence whose time is already past when written fires at once (True) or is
    skipped (False). Naive datetimes are taken as UTC; due times count in whole
    milliseconds, as MongoDB stores datetimes.
    """

    name: str
    _: KW_ONLY  # EventDefinition(name, *, condition=..., date_field=..., ...): the signature
    condition: Condition | None = None
    date_field: str | None = None
    offset: dt.timedelta | None = None
    fire: Literal["transition", "always"] = "transition"
    catch_up: bool = True

    def __post_init__(self) -> None:
        names.check_event_name(self.name, "EventDefinition name")
        if self.condition is not None and not callable(self.condition):
            raise TypeError(f"EventDefinition({self.name!r}): condition must be callable, got {self.condition!r}")
        if self.date_field is not None and (not isinstance(self.date_field, str) or not self.date_field):
            raise TypeError(f"EventDefinition({self.name!r}): date_field must be a field name (str)")
        if self.offset is not None:
            if not isinstance(self.offset, dt.timedelta):
                raise TypeError(f"EventDefinition({self.name!r}): offset must be a timedelta, got {self.offset!r}")
            if self.date_field is None:
                raise ValueError(f"EventDefinition({self.name!r}): offset applies to scheduled events (date_field)")
        if self.fire not in ("transition", "always"):
            raise ValueError(f"EventDefinition({self.name!r}): fire must be 'transition' or 'always'")
        if self.fire == "always" and self.date_field is not None:
            raise ValueError(
                f"EventDefinition({self.name!r}): fire='always' applies to immediate events; a scheduled "
                "event has one pending occurrence per document"
            )
        if not isinstance(self.catch_up, bool):
            raise TypeError(f"EventDefinition({self.name!r}): catch_up must be a bool")

    @property
    def scheduled(self) -> bool:
        return self.date_field is not None

    async def holds(self, instance: Any) -> bool:
        """Whether the condition holds for ``instance`` (True without a condition);
        :class:`~earnevents.errors.EventConditionError` if the condition raises."""
        if self.condition is None:
            return True
        try:
            result = self.condition(instance)
            if inspect.isawaitable(result):
                result = await result
            return bool(result)
        except Exception as exc:
            who = f"{type(instance).__name__} {getattr(instance, 'id', None)}"
            raise EventConditionError(f"the condition of {self.name!r} raised on {who}: {exc!r}") from exc

    def due_ms(self, instance: Any) -> int | None:
        """The due time in unix milliseconds (date field plus offset); None when the field is
        unset, or when a positive offset takes it past ``datetime.max`` (a date of
        ``datetime.max`` meaning "never")."""
        value = getattr(instance, cast(str, self.date_field), None)
        if value is None or value is MISSING:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(
                f"EventDefinition({self.name!r}): {self.date_field} holds a {type(value).__name__}, not a datetime"
            )
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        # whole milliseconds before the offset: the worker computes it again from the stored
        # (truncated) date, and a fraction of a millisecond in the offset must round alike
        value = value.replace(microsecond=value.microsecond // 1000 * 1000)
        if self.offset is not None:
            try:
                value = value + self.offset
            except OverflowError:
                if self.offset > dt.timedelta(0):
                    return None  # after the year 9999: never due
                raise ValueError(
                    f"EventDefinition({self.name!r}): {self.date_field} {value} plus the offset {self.offset} "
                    "is before the year 1"
                ) from None
        seconds = value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        return (seconds.days * 86_400 + seconds.seconds) * 1000 + seconds.microseconds // 1000

    async def due_if_holds(self, instance: Any) -> int | None:
        """:meth:`due_ms` when the condition holds, else None."""
        due = self.due_ms(instance)
        if due is None or not await self.holds(instance):
            return None
        return due


def collect(model: type[BaseModel], declared: Iterable[Any]) -> dict[str, EventDefinition]:
    """The EventDefinitions among ``declared`` (a model's ``_events``) by name, checked
    against the model: a ``date_field`` must name a datetime field, a name appear once.

    Each name (and, for scheduled ones, ``<name>:created`` / ``<name>:cancelled``) is
    defined in the event registry if it is not already, so strict mode accepts them; a
    later ``define_event`` of the name (a schema for its data) takes its place.
    """
    found: dict[str, EventDefinition] = {}
    for item in declared:
        if not isinstance(item, EventDefinition):
            continue
        where = f"{model.__name__}._events"
        if item.name in found:
            raise ValueError(f"{where}: the event {item.name!r} is declared twice")
        if item.date_field is not None:
            field = model.model_fields.get(item.date_field)
            if field is None or item.date_field == "id":
                raise ValueError(f"{where}: {item.name!r} has date_field {item.date_field!r}, which is no field")
            if not _is_datetime(field.annotation):
                raise TypeError(
                    f"{where}: {item.name!r} has date_field {item.date_field!r}, a {field.annotation!r} field; "
                    "a scheduled event needs a datetime field (datetime or datetime | None)"
                )
        found[item.name] = item
    for item in found.values():
        described = [item.name]
        if item.scheduled:
            described += [occurrence_event_name(item.name, "created"), occurrence_event_name(item.name, "cancelled")]
        for name in described:
            if name not in definitions.registry:
                # declared_by_model: definitions.MODEL_DECLARED, so define_event may replace it
                definitions.define_event(
                    name, description="declared by a model (EventDefinition)", declared_by_model=True
                )
    return found


def _is_datetime(annotation: Any) -> bool:
    if annotation is None:
        return False
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_datetime(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(kinds) and all(_is_datetime(a) for a in kinds)
    return isinstance(annotation, type) and issubclass(annotation, (dt.datetime, *_pydantic_datetimes()))


def _pydantic_datetimes() -> tuple[type, ...]:
    """pydantic's constrained datetime types: classes of their own, whose fields hold datetimes."""
    return (pydantic.AwareDatetime, pydantic.NaiveDatetime, pydantic.PastDatetime, pydantic.FutureDatetime)


def of(model: type) -> Mapping[str, EventDefinition]:
    """The EventDefinitions a model class declares, by name."""
    return cast("Mapping[str, EventDefinition]", getattr(model, "__event_definitions__", {}))


def scheduled_models() -> list[type[BaseModel]]:
    """The model classes imported in this process that declare scheduled events (only
    ``BaseModel`` subclasses register in :mod:`earnevents.entities`)."""
    return [model for model in entities.models() if any(d.scheduled for d in of(model).values())]


# --- ids ----------------------------------------------------------------------------


def entity_of(instance: BaseModel) -> EntityRef:
    return EntityRef(type(instance).__name__, str(instance.id))


def occurrence_id(ref: EntityRef, definition: str, due_ms: int) -> str:
    """The id of the occurrence of ``definition`` for ``ref`` due at ``due_ms``: the same
    whenever it is scheduled, so the worker fires it once (its completion record)."""
    return ids.uuid5_hex(_NAMESPACE, f"occurrence/{ref.model}/{ref.id}/{definition}/{due_ms}")


def occurred_id(occurrence: str) -> str:
    """The id of the event published when occurrence ``occurrence`` fires (the same if it fires twice)."""
    return ids.uuid5_hex(_NAMESPACE, f"occurred/{occurrence}")


def when(due_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(due_ms / 1000, dt.timezone.utc)


# --- after a write ------------------------------------------------------------------


async def after_write(instance: BaseModel, before: Mapping[str, Any] | None) -> None:
    """Publish the immediate events and maintain the scheduled ones after a create
    (``before`` None) or a save (``before``: the fields as stored until then).

    A condition that raises on the written document (:class:`EventConditionError`), or any
    other error maintaining one definition, leaves that definition as it was; the other
    definitions are still maintained, then the first error is raised (the write stands).
    A condition that raises on the state before the write counts as not holding then (the
    data that made it raise may be what the write fixed).
    """
    declared = of(type(instance))
    if not declared:
        return
    previous = None if before is None else type(instance).model_construct(**before, id=instance.id)
    errors: list[Exception] = []
    for definition in declared.values():
        try:
            if definition.scheduled:
                after_due = await definition.due_if_holds(instance)
                before_due = None if previous is None else await _before(definition.due_if_holds(previous), _UNKNOWN)
                if before_due is _UNKNOWN or before_due != after_due:
                    await _reschedule(instance, definition, _known(before_due), after_due)
            elif await definition.holds(instance):
                if (
                    definition.fire == "always"
                    or previous is None
                    or not await _before(definition.holds(previous), False)
                ):
                    await publish(instance, definition)
        except Exception as exc:  # each definition on its own: one that fails leaves the others maintained
            errors.append(exc)
    for extra in errors[1:]:
        log.error("%s: %s", type(extra).__name__, extra)
    if errors:
        raise errors[0]


_UNKNOWN: Any = object()
"""The result of a condition that raised on the state before a write."""


async def _before(result: Awaitable[Any], raised: Any) -> Any:
    """``result`` awaited; ``raised`` if the condition raised on the state before the write."""
    try:
        return await result
    except (EventConditionError, ValueError, TypeError) as exc:
        log.info("%s (on the state before the write: taken as not holding then)", exc)
        return raised


def _known(value: Any) -> Any:
    return None if value is _UNKNOWN else value


async def after_delete(instance: BaseModel) -> None:
    """Cancel the deleted document's pending occurrences."""
    for definition in of(type(instance)).values():
        if definition.scheduled:
            await _cancel(instance, definition, "deleted")


async def _reschedule(
    instance: BaseModel, definition: EventDefinition, before_due: int | None, after_due: int | None
) -> None:
    if after_due is None:
        reason = "condition" if definition.due_ms(instance) is not None else "date_cleared"
        await _cancel(instance, definition, reason)
        return
    if after_due < time.time() * 1000 and not definition.catch_up:
        await _cancel(instance, definition, "past")
        return
    env = runtime.current()
    queue = env.settings.queue_name
    ref = entity_of(instance)
    member = keys.occurrence_member(ref.model, ref.id, definition.name)
    await env.event_bus.enqueue(
        [(member, definition.name, occurrence_message(ref, definition.name, after_due, queue))],
        queue=queue,
        at=after_due / 1000,
    )
    data = {
        "id": ref.id,
        "due_at": when(after_due),
        "previous_due_at": None if before_due is None else when(before_due),
    }
    await _announce(instance, definition, "created", data)


async def schedule_if_absent(instance: BaseModel, definition: EventDefinition, due_ms: int) -> None:
    """Put the occurrence of ``definition`` for ``instance`` due at ``due_ms`` in the schedule
    unless one is pending for the document already (a write scheduled it meanwhile).

    For the worker, when a stale occurrence comes due while the document calls for another:
    the write that moved it may have lost its occurrence (two reschedules kept in the
    MongoDB outbox under one id keep the first; a relay after Redis came back overwrites
    what a later write scheduled directly)."""
    env = runtime.current()
    queue = env.settings.queue_name
    ref = entity_of(instance)
    member = keys.occurrence_member(ref.model, ref.id, definition.name)
    triple = (member, definition.name, occurrence_message(ref, definition.name, due_ms, queue))
    script_keys, argv = schedule.add_args(queue, [triple], at=due_ms / 1000, only_new=True)
    await env.redis.eval(schedule.ADD_SCRIPT, len(script_keys), *script_keys, *argv)


async def _cancel(instance: BaseModel, definition: EventDefinition, reason: str) -> None:
    env = runtime.current()
    ref = entity_of(instance)
    script_keys, argv = schedule.cancel_args(
        env.settings.queue_name, keys.occurrence_member(ref.model, ref.id, definition.name)
    )
    due = await env.redis.eval(schedule.CANCEL_SCRIPT, len(script_keys), *script_keys, *argv)
    if due:  # it was pending
        data = {"id": ref.id, "due_at": when(round(float(due) * 1000)), "reason": reason}
        await _announce(instance, definition, "cancelled", data)


async def _announce(instance: BaseModel, definition: EventDefinition, change: str, data: dict[str, Any]) -> None:
    event = Event(
        name=occurrence_event_name(definition.name, change),
        data=data,
        metadata={"entity": entity_of(instance).to_dict(), "model": type(instance).__name__},
    )
    await runtime.current().event_bus.publish(event, sender=type(instance))


def occurrence_message(ref: EntityRef, definition: str, due_ms: int, queue: str) -> str:
    """The scheduled message of one occurrence: for the worker's occurrence handler, which
    checks the document again and publishes the event."""
    occurrence = occurrence_id(ref, definition, due_ms)
    event = Event(
        name=definition,
        data={"id": ref.id},
        metadata={
            "entity": ref.to_dict(),
            "model": ref.model,
            "sender": ref.model,
            "occurrence": {"definition": definition, "due_ms": due_ms},
        },
        id=occurrence,
    )
    return message.build(event.to_wire(), queue=queue, task_id=occurrence, handler=keys.OCCURRENCE_HANDLER)


async def publish(
    instance: BaseModel, definition: EventDefinition, due_ms: int | None = None, occurrence: str | None = None
) -> str:
    """Publish ``definition``'s event for ``instance``: its data (``id`` as a str), sent by
    its model class, ``metadata["entity"]`` naming the document; for a scheduled one,
    ``metadata["due_at"]`` and an id derived from the occurrence's."""
    model = type(instance)
    metadata: dict[str, Any] = {"entity": entity_of(instance).to_dict(), "model": model.__name__}
    fields: dict[str, Any] = {}
    if occurrence is not None and due_ms is not None:
        metadata["due_at"] = when(due_ms)
        metadata["occurrence"] = occurrence
        fields["id"] = occurred_id(occurrence)
    event = Event(name=definition.name, data=model_data(instance, str(instance.id)), metadata=metadata, **fields)
    return await runtime.current().event_bus.publish(event, sender=model)


# --- rebuilding the schedule from MongoDB -------------------------------------------


@dataclass(frozen=True)
class Rebuilt:
    """What :func:`rebuild` did for one model."""

    model: str
    documents: int
    """Documents read (those with a value in one of the date fields)."""
    scheduled: int
    """Occurrences due from the threshold on: put in the schedule, unless one was pending there already."""
    skipped: int
    """Occurrences due before ``now - since``: not recreated."""
    unreadable: int
    """Documents the model could not load (validation errors) or whose condition raised
    (or date field held no datetime), logged and left out."""
    moved: int = 0
    """Of ``scheduled``: occurrences that were pending at another time than their document's
    (made stale by a write that bypassed the model), moved to the document's time."""


async def rebuild(
    redis: Redis,
    db: Any,
    queue: str,
    models: Iterable[type[BaseModel]],
    *,
    since: float = 0.0,
    batch: int = 500,
) -> list[Rebuilt]:
    """Recreate the pending occurrences of ``models``' scheduled events from their documents.

    For each document whose condition holds and whose due time is at or after now
    minus ``since`` seconds, the occurrence is put in ``queue``'s schedule unless one
    is pending there already (so a write racing the rebuild keeps what it scheduled); one
    pending at another time than the document's (a write bypassed the model) is moved to
    the document's time, unless a write through the model moved it meanwhile.
    Due times before that are not recreated: whether they fired before Redis lost its
    data cannot be known; ``since`` > 0 recreates those of that last stretch, which
    fire at once (a second delivery if they had fired), except for definitions with
    ``catch_up=False``, whose past due times are never recreated. Then each model is marked
    rebuilt (:func:`keys.occurrences_rebuilt`), unless Redis lost its data while it was
    rebuilt (its guard key is gone): then the workers' next check rebuilds it again. Condition and date are read as
    stored: writes that bypassed the model are covered too.
    """
    now = time.time() * 1000
    threshold = now - since * 1000
    report: list[Rebuilt] = []
    for model in models:
        scheduled_defs = [d for d in of(model).values() if d.scheduled]
        if not scheduled_defs:
            continue
        # A key that lives while this rebuild runs: if Redis loses its data meanwhile (and the
        # occurrences added so far with it), the model is not marked rebuilt at the end.
        guard = keys.occurrences_rebuilding(queue, uuid.uuid4().hex)
        await redis.set(guard, model.__name__, px=_GUARD_MS)
        fields = sorted({cast(str, d.date_field) for d in scheduled_defs})
        query = {"$or": [{field: {"$ne": None}} for field in fields]}
        documents = scheduled = skipped = unreadable = moved = 0
        pending: list[_Found] = []
        async for doc in db[model._collection].find(query):
            documents += 1
            try:
                instance = model.from_document(doc)
            except Exception as exc:
                unreadable += 1
                log.warning("rebuild: %s %s cannot be loaded, skipped: %r", model.__name__, doc.get("_id"), exc)
                continue
            found: list[_Found] = []
            passed = 0  # occurrences of this document due too long ago
            try:
                for definition in scheduled_defs:
                    due = await definition.due_if_holds(instance)
                    if due is None:
                        continue
                    if due < threshold or (due < now and not definition.catch_up):
                        passed += 1
                        continue
                    found.append(_Found(instance, definition, due))
            except (EventConditionError, TypeError, ValueError) as exc:  # a date no due time can be made of
                unreadable += 1  # the whole document: none of its occurrences counted as skipped
                log.warning("rebuild: %s %s skipped: %s", model.__name__, doc.get("_id"), exc)
                continue
            pending += found
            skipped += passed
            if len(pending) >= batch:
                scheduled, moved = scheduled + len(pending), moved + await _put(redis, db, queue, pending)
                pending = []
        scheduled, moved = scheduled + len(pending), moved + await _put(redis, db, queue, pending)
        marker = keys.occurrences_rebuilt(queue)
        if not await redis.eval(schedule.MARK_REBUILT_SCRIPT, 2, guard, marker, model.__name__):
            log.warning(
                "Redis lost its data while %s's scheduled events in %s were rebuilt: not marked rebuilt, "
                "so the workers rebuild them again",
                model.__name__,
                queue,
            )
        report.append(Rebuilt(model.__name__, documents, scheduled, skipped, unreadable, moved))
        log.info(
            "rebuilt %s's scheduled events in %s: %d document(s), %d occurrence(s) scheduled (%d moved), %d past, "
            "%d unreadable",
            model.__name__,
            queue,
            documents,
            scheduled,
            moved,
            skipped,
            unreadable,
        )
    return report


_GUARD_MS = 86_400_000
"""The longest a rebuild of one model may take before it cannot tell whether Redis lost its data."""


@dataclass(frozen=True)
class _Found:
    instance: BaseModel
    definition: EventDefinition
    due: int

    def triple(self, queue: str, due: int) -> tuple[str, str, str]:
        ref = entity_of(self.instance)
        member = keys.occurrence_member(ref.model, ref.id, self.definition.name)
        return member, self.definition.name, occurrence_message(ref, self.definition.name, due, queue)


async def _put(redis: Redis, db: Any, queue: str, found: list[_Found]) -> int:
    """Add the occurrences in ``found`` where none is pending; move the pending ones whose
    due time differs from their document's (a write that bypassed the model); returns how
    many were moved.

    A differing one may instead be a write through the model racing the rebuild: so the
    document is read again after the pending due time was, and the occurrence moved
    only if it is still pending at that due time (:data:`schedule.RESCHEDULE_IF_SCRIPT`).
    """
    zset = keys.scheduled_zset(queue)
    async with redis.pipeline(transaction=False) as pipe:
        for item in found:
            triple = item.triple(queue, item.due)
            pipe.zscore(zset, triple[0])
            script_keys, argv = schedule.add_args(queue, [triple], at=item.due / 1000, only_new=True)
            pipe.eval(schedule.ADD_SCRIPT, len(script_keys), *script_keys, *argv)
        replies = await pipe.execute()
    moved = 0
    for item, was in zip(found, replies[::2], strict=True):
        if was is None or round(float(was) * 1000) == item.due:
            continue  # added, or pending at the document's due time
        model = type(item.instance)
        doc = await db[model._collection].find_one({"_id": item.instance.id})
        try:
            due = None if doc is None else await item.definition.due_if_holds(model.from_document(doc))
        except Exception as exc:  # changed meanwhile into something it cannot read: the worker checks it when due
            log.warning("rebuild: %s %s not moved: %s", model.__name__, item.instance.id, exc)
            continue
        if (
            due is None
            or round(float(was) * 1000) == due
            or (due < time.time() * 1000 and not item.definition.catch_up)
        ):
            continue  # now pending as the document says, or stale: the worker drops it when due
        script_keys, argv = schedule.reschedule_if_args(queue, item.triple(queue, due), was=float(was), at=due / 1000)
        moved += int(await redis.eval(schedule.RESCHEDULE_IF_SCRIPT, len(script_keys), *script_keys, *argv))
    return moved
