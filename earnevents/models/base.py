"""BaseModel: pydantic-validated documents on MongoDB whose writes run hooks and publish events.

::

    class User(BaseModel):
        _collection = "users"          # default: snake_case plural of the class name
        _events = ("created", "updated", "deleted")   # optional automatic events
        username: str
        status: str = "inactive"

    user = await User(username="ada").create()
    user.status = "active"
    await user.save()                  # $set of the changed fields only

Fields are validated on construction and on assignment, and the whole model again
before each write. A required field may stay unset until the write (a
before_create hook may fill it). Writes run, via :func:`hooks.run_action`:
before_create/before_update, before_write, the write, the automatic event (if
any), after_create/after_update, after_write. A before-hook that raises aborts:
nothing is written or published. An after-hook that raises does not undo the
write (it stands, and its automatic event was sent); the exception reaches the caller.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

import pydantic
from bson import ObjectId
from pydantic import BeforeValidator, ConfigDict, PlainSerializer, PrivateAttr, WithJsonSchema

from .. import entities, runtime
from ..errors import ModelStateError, ModelValidationError
from ..event import Event
from ..handlers import snake_case
from . import automations, hooks
from .automations import EventDefinition
from .events import ACTIONS, publish_automatic
from .fields import MISSING, from_bson, object_id, to_bson, validation_error
from .query import Query, SortSpec, sort_spec

if TYPE_CHECKING:  # pymongo is imported only where a MongoDB is used (a faster start without one)
    from pymongo.asynchronous.collection import AsyncCollection

M = TypeVar("M", bound="BaseModel")


def plural(name: str) -> str:
    """``user`` -> ``users``, ``category`` -> ``categories``, ``box`` -> ``boxes``."""
    if re.search(r"[^aeiou]y$", name):
        return name[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", name):
        return name + "es"
    return name + "s"


def collection_name(model: type) -> str:
    """The default ``_collection``: ``OrderItem`` -> ``order_items``."""
    return plural(snake_case(model.__name__))


class BaseModel(pydantic.BaseModel):
    """Base class of earnevents' MongoDB models: a pydantic model with an ``id`` and CRUD.

    Class settings: ``_collection`` (the MongoDB collection) and ``_events``: which of
    ``created``/``updated``/``deleted`` to publish automatically, and the events the
    model declares (:class:`~earnevents.models.automations.EventDefinition`).
    """

    model_config = ConfigDict(validate_assignment=True, extra="forbid", arbitrary_types_allowed=True)

    _collection: ClassVar[str]
    _events: ClassVar[tuple[str | EventDefinition, ...]] = ()
    __hooks__: ClassVar[hooks.Registry] = {kind: () for kind in hooks.KINDS}
    __event_definitions__: ClassVar[dict[str, EventDefinition]] = {}

    id: Annotated[
        ObjectId | None,
        BeforeValidator(object_id),
        PlainSerializer(lambda v: v if v is None else str(v), when_used="json"),
        WithJsonSchema({"anyOf": [{"type": "string", "pattern": "^[0-9a-f]{24}$"}, {"type": "null"}]}),
    ] = None
    """The stored ``_id``; None until the model is created (or set it yourself first)."""

    _snapshot: dict[str, Any] | None = PrivateAttr(default=None)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "_collection" not in vars(cls):
            cls._collection = collection_name(cls)
        if not isinstance(cls._collection, str) or not cls._collection:
            raise TypeError(f"{cls.__name__}._collection must be a non-empty collection name")
        cls._events = tuple(cls._events)
        unknown = sorted(str(e) for e in cls._events if not isinstance(e, EventDefinition) and e not in ACTIONS)
        if unknown:
            raise ValueError(
                f"{cls.__name__}._events: unknown {unknown}; choose from {ACTIONS} or give EventDefinition(...)s"
            )
        cls.__hooks__ = hooks.collect(cls)
        cls.__event_definitions__ = automations.collect(cls, cls._events)
        entities.register(cls)
        if _default_required_to_missing(cls) and cls.__pydantic_complete__:
            cls.model_rebuild(force=True)
        # else: an unresolved forward reference; pydantic rebuilds later, through model_rebuild below

    @classmethod
    def model_rebuild(
        cls,
        *,
        force: bool = False,
        raise_errors: bool = True,
        _parent_namespace_depth: int = 2,
        _types_namespace: Any = None,
    ) -> bool | None:
        """pydantic's rebuild, keeping required fields' MISSING defaults (a rebuild of a model
        whose forward references are now defined collects its fields again)."""
        depth = _parent_namespace_depth + 1 if _parent_namespace_depth > 0 else 0  # one frame more: this one
        options: dict[str, Any] = {"_parent_namespace_depth": depth, "_types_namespace": _types_namespace}
        result = super().model_rebuild(force=force, raise_errors=raise_errors, **options)
        if cls.__pydantic_complete__ and _default_required_to_missing(cls):
            super().model_rebuild(force=True, raise_errors=raise_errors, **options)
        return result

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise validation_error(type(self).__name__, exc) from exc

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in type(self).model_fields:
            raise ModelValidationError(f"{type(self).__name__} has no field {name!r}")
        try:
            super().__setattr__(name, value)
        except pydantic.ValidationError as exc:
            raise validation_error(type(self).__name__, exc) from exc

    def __eq__(self, other: object) -> bool:
        """Same model class and the same field values (what was loaded or written does not matter)."""
        return type(other) is type(self) and isinstance(other, BaseModel) and other.to_dict() == self.to_dict()

    __hash__ = None  # type: ignore[assignment]

    # --- environment ------------------------------------------------------------------

    @property
    def _env(self) -> runtime.Environment:
        """What ``init()`` set up: ``event_bus``, ``db``, ``redis``, ``settings``."""
        return runtime.current()

    @classmethod
    def get_collection(cls) -> AsyncCollection[Any]:
        """This model's collection in the database ``init()`` configured (for the running loop)."""
        return runtime.current().db[cls._collection]

    # --- data -------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        """The model's data fields (``id`` not included), in declaration order."""
        return [name for name in cls.model_fields if name != "id"]

    def missing_fields(self) -> list[str]:
        """Required fields that have no value yet."""
        return [name for name in self.field_names() if getattr(self, name) is MISSING]

    def to_dict(self) -> dict[str, Any]:
        """``id`` and the field values with their Python types (datetime, ObjectId, ...); unset
        required fields are left out. This is the data model events carry."""
        return self.model_dump(exclude=set(self.missing_fields()))

    def _document(self) -> dict[str, Any]:
        """The BSON document to write, after validating the whole model again."""
        name = type(self).__name__
        missing = self.missing_fields()
        if missing:
            raise ModelValidationError(
                f"{name}: required field(s) {missing} not set; give them values (a before_create hook may) "
                "before writing"
            )
        try:  # catches in-place changes assignment could not see (user.tags.append(5))
            type(self).model_validate({n: getattr(self, n) for n in type(self).model_fields})
        except pydantic.ValidationError as exc:
            raise validation_error(name, exc) from exc
        data = self.to_dict()
        data.pop("id", None)
        return {key: to_bson(value) for key, value in data.items()}

    @classmethod
    def from_document(cls: type[M], doc: Mapping[str, Any]) -> M:
        """A stored model from its MongoDB document (as ``find`` returns them); keys that are
        not fields are ignored, fields the document lacks get their defaults."""
        values = {name: from_bson(doc[name]) for name in cls.field_names() if name in doc}
        values["id"] = doc.get("_id")
        try:
            instance = cls.model_validate(values)
        except pydantic.ValidationError as exc:
            raise validation_error(cls.__name__, exc) from exc
        instance._take_snapshot()
        return instance

    def _take_snapshot(self) -> None:
        self._snapshot = copy.deepcopy({name: getattr(self, name) for name in self.field_names()})

    def changed_fields(self) -> list[str]:
        """Fields whose value differs from what was last loaded or written (all of them if never stored)."""
        snapshot = self._snapshot
        if snapshot is None:
            return self.field_names()
        return [name for name in self.field_names() if getattr(self, name) != snapshot.get(name, MISSING)]

    @property
    def is_stored(self) -> bool:
        """Whether this instance was loaded from or written to MongoDB (and not deleted since)."""
        return self.id is not None and self._snapshot is not None

    def _set_id(self, value: Any) -> None:
        self.__dict__["id"] = value  # the database's own value: no validation, no validators re-run
        self.__pydantic_fields_set__.add("id")

    # --- writes -----------------------------------------------------------------------

    async def create(self: M, *, skip_hooks: bool = False) -> M:
        """Insert this model (create and write hooks around it) and return it; ``id`` is set."""
        if self.is_stored:
            raise ModelStateError(f"{type(self).__name__} {self.id} is stored already; use save() to update it")
        await hooks.run_action(self, "create", self._insert, skip_hooks=skip_hooks)
        return self

    async def _insert(self) -> None:
        doc = self._document()
        if self.id is not None:
            doc["_id"] = self.id
        result = await self.get_collection().insert_one(doc)
        self._set_id(result.inserted_id)
        self._take_snapshot()
        await publish_automatic(self, "created")
        await automations.after_write(self, None)

    async def save(self, *, skip_hooks: bool = False) -> list[str]:
        """Create when new, else ``$set`` only the changed fields; returns the fields written.

        Unchanged: nothing is sent, no hook runs, no event. A new model is created through
        ``self.create()``, so a subclass' create override runs (not with ``skip_hooks=True``).
        """
        if not self.is_stored:
            if skip_hooks:
                await BaseModel.create(self, skip_hooks=True)
            else:
                await self.create()
            return self.field_names()
        if not self.changed_fields():
            return []
        return await hooks.run_action(self, "update", self._update, skip_hooks=skip_hooks)

    async def _update(self) -> list[str]:
        changed = self.changed_fields()  # again: before-hooks may have changed more
        if not changed:
            return []
        doc = self._document()
        result = await self.get_collection().update_one(
            {"_id": self.id}, {"$set": {name: doc[name] for name in changed if name in doc}}
        )
        if result.matched_count == 0:
            raise ModelStateError(
                f"{type(self).__name__} {self.id} is no longer in {self._collection!r} (deleted elsewhere?); "
                "nothing was updated; call create() to store it again"
            )
        before = self._snapshot
        self._take_snapshot()
        await publish_automatic(self, "updated", changed)
        await automations.after_write(self, before)
        return changed

    async def delete(self, *, skip_hooks: bool = False) -> bool:
        """Delete this model's document (delete hooks around it).

        Returns whether a document was removed; the automatic ``deleted`` event is sent only then.
        """
        if self.id is None:
            raise ModelStateError(f"this {type(self).__name__} was never stored; there is nothing to delete")
        return await hooks.run_action(self, "delete", self._remove, skip_hooks=skip_hooks)

    async def _remove(self) -> bool:
        result = await self.get_collection().delete_one({"_id": self.id})
        self._snapshot = None
        if not result.deleted_count:
            return False
        await publish_automatic(self, "deleted")
        await automations.after_delete(self)
        return True

    async def publish_event(self, name: str, delay: float | None = None) -> str:
        """Publish an event called ``name`` whose data is this model's :meth:`to_dict`, sent by
        this model's class (``Event.sender``); returns its id."""
        return await runtime.current().event_bus.publish(
            Event(name=name, data=self.to_dict()), delay=delay, sender=type(self)
        )

    # --- reads ------------------------------------------------------------------------

    @classmethod
    async def get(cls: type[M], id: Any) -> M | None:
        """The model stored with that ``_id`` (an ObjectId or its 24-hex-digit string), or None.

        Anything but an ObjectId or a str is a TypeError (a dict would be a query
        operator); a str that is not 24 hex digits names no model (ids are ObjectIds):
        None, without a query.
        """
        if isinstance(id, str):
            if not ObjectId.is_valid(id):
                return None
            id = ObjectId(id)
        elif not isinstance(id, ObjectId):
            raise TypeError(f"{cls.__name__}.get takes an ObjectId or its 24-hex-digit string, got {type(id).__name__}")
        doc = await cls.get_collection().find_one({"_id": id})
        return None if doc is None else cls.from_document(doc)

    @classmethod
    async def find_one(cls: type[M], filter: Mapping[str, Any] | None = None, sort: SortSpec = None) -> M | None:
        """The first model matching ``filter`` (in ``sort`` order), or None.

        ``filter`` is a raw MongoDB filter, operators included: never pass request data
        into it unchecked (``{"email": request_value}`` with a dict value is a query).
        """
        doc = await cls.get_collection().find_one(dict(filter or {}), sort=sort_spec(sort))
        return None if doc is None else cls.from_document(doc)

    @classmethod
    def find(
        cls: type[M], filter: Mapping[str, Any] | None = None, sort: SortSpec = None, skip: int = 0, limit: int = 0
    ) -> Query[M]:
        """Matching models: ``await`` it for a list, or ``async for`` over it.

        ``filter`` is a raw MongoDB filter, as for :meth:`find_one`: check request data first.

        ``sort``: ``"name"``, ``"-name"`` (descending), a list of those, or PyMongo's ``[("name", 1)]``.
        """
        return Query(cls, filter, sort, skip, limit)

    @classmethod
    async def count(cls, filter: Mapping[str, Any] | None = None) -> int:
        """How many stored documents match ``filter``."""
        return await cls.get_collection().count_documents(dict(filter or {}))


def _default_required_to_missing(cls: type[BaseModel]) -> bool:
    """Let required fields start as MISSING (pydantic does not validate defaults), so a
    before-hook can fill them before the write, where they are checked. True if any changed."""
    required = [field for field in cls.model_fields.values() if field.is_required()]
    for field in required:
        field.default = MISSING
    return bool(required)
