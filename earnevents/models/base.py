"""BaseModel: async documents on MongoDB whose writes run hooks and publish events.

::

    class User(BaseModel):
        _collection = "users"          # default: snake_case plural of the class name
        _events = ("created", "updated", "deleted")   # optional automatic events
        username: str
        status: str = "inactive"

    user = await User(username="ada").create()
    user.status = "active"
    await user.save()                  # $set of the changed fields only

Writes run hooks in this order: before_create/before_update, before_write, the
write, the automatic event (if any), after_create/after_update, after_write. A
before-hook that raises aborts: nothing is written or published. An after-hook
that raises does not undo the write (it stands, and its automatic event was
sent); the exception reaches the caller.
"""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection

from .. import runtime
from ..errors import ModelStateError, ModelValidationError
from ..event import Event
from ..handlers import snake_case
from . import fields as fieldlib
from . import hooks
from .events import ACTIONS, publish_model_event

M = TypeVar("M", bound="BaseModel")

SortSpec = str | Sequence[str] | Sequence[tuple[str, int]] | None


def plural(name: str) -> str:
    """``user`` -> ``users``, ``category`` -> ``categories``, ``box`` -> ``boxes``."""
    if re.search(r"[^aeiou]y$", name):
        return name[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", name):
        return name + "es"
    return name + "s"


def sort_spec(sort: SortSpec) -> list[tuple[str, int]] | None:
    """PyMongo's ``[(field, direction)]`` from that, a field name, ``-name`` or a list of names."""
    if sort is None:
        return None
    items: Sequence[Any] = [sort] if isinstance(sort, str) else sort
    spec: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str):
            spec.append((item[1:], DESCENDING) if item.startswith("-") else (item, ASCENDING))
        else:
            field, direction = item
            spec.append((field, direction))
    return spec


class BaseModel:
    """Base class of earnevents' MongoDB models; fields come from annotations."""

    _collection: ClassVar[str]
    _events: ClassVar[tuple[str, ...]] = ()
    __fields__: ClassVar[dict[str, fieldlib.Field]] = {}
    __hooks__: ClassVar[dict[str, tuple[str, ...]]] = {}

    id: ObjectId | None
    _snapshot: dict[str, Any] | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_collection" not in vars(cls):
            cls._collection = plural(snake_case(cls.__name__))
        unknown = set(cls._events) - set(ACTIONS)
        if unknown:
            raise ValueError(f"{cls.__name__}._events: unknown {sorted(unknown)}; choose from {ACTIONS}")
        cls.__fields__ = fieldlib.collect(cls)
        cls.__hooks__ = hooks.collect(cls)

    def __init__(self, **values: Any) -> None:
        cls = type(self)
        unknown = set(values) - set(cls.__fields__) - {"id"}
        if unknown:
            raise ModelValidationError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
        object.__setattr__(self, "id", values.pop("id", None))
        object.__setattr__(self, "_snapshot", None)
        for name, field in cls.__fields__.items():
            if name in values:
                setattr(self, name, values[name])
            else:
                object.__setattr__(self, name, field.initial())

    def __setattr__(self, name: str, value: Any) -> None:
        field = type(self).__fields__.get(name)
        if field is not None:
            value = field.validate(type(self).__name__, value)
        elif name != "id" and not name.startswith("_"):
            raise ModelValidationError(f"{type(self).__name__} has no field {name!r}")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BaseModel) and type(other) is type(self) and other.to_dict() == self.to_dict()

    __hash__ = None  # type: ignore[assignment]

    # --- environment --------------------------------------------------------------

    @property
    def _env(self) -> runtime.Environment:
        """What ``init()`` set up: ``event_bus``, ``db``, ``settings``, ``redis``."""
        return runtime.current()

    @classmethod
    def collection(cls) -> AsyncCollection[Any]:
        """This model's MongoDB collection in the configured database."""
        return runtime.current().db[cls._collection]

    # --- data ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Field values plus ``id``, with their Python types (required fields not set yet left out)."""
        out = {"id": self.id}
        for name in type(self).__fields__:
            value = getattr(self, name)
            if value is not fieldlib.MISSING:
                out[name] = value
        return out

    def _document(self) -> dict[str, Any]:
        cls = type(self)
        missing = [n for n, f in cls.__fields__.items() if getattr(self, n) is fieldlib.MISSING]
        if missing:
            raise ModelValidationError(f"{cls.__name__}: required field(s) {missing} not set")
        return {name: fieldlib.to_bson(getattr(self, name)) for name in cls.__fields__}

    @classmethod
    def _from_document(cls: type[M], doc: Mapping[str, Any]) -> M:
        instance = cls.__new__(cls)
        object.__setattr__(instance, "id", doc.get("_id"))
        for name, field in cls.__fields__.items():
            raw = fieldlib.from_bson(doc[name]) if name in doc else field.initial()
            object.__setattr__(instance, name, field.validate(cls.__name__, raw) if name in doc else raw)
        instance._take_snapshot()
        return instance

    def _take_snapshot(self) -> None:
        object.__setattr__(self, "_snapshot", copy.deepcopy({n: getattr(self, n) for n in type(self).__fields__}))

    def changed_fields(self) -> list[str]:
        """Fields whose value differs from what was last loaded or written."""
        snapshot = self._snapshot
        if snapshot is None:
            return list(type(self).__fields__)
        return [n for n in type(self).__fields__ if getattr(self, n) != snapshot.get(n)]

    @property
    def is_stored(self) -> bool:
        return self.id is not None and self._snapshot is not None

    # --- writes -------------------------------------------------------------------

    async def create(self: M, *, skip_hooks: bool = False) -> M:
        """Insert this document; runs create and write hooks. Returns self."""
        if self.is_stored:
            raise ModelStateError(f"{type(self).__name__} {self.id} is stored already; use save()")
        if not skip_hooks:
            await hooks.run_hooks(self, "before_create")
            await hooks.run_hooks(self, "before_write")
        doc = self._document()
        if self.id is not None:
            doc["_id"] = self.id
        result = await self.collection().insert_one(doc)
        object.__setattr__(self, "id", result.inserted_id)
        self._take_snapshot()
        if "created" in type(self)._events:
            await publish_model_event(self, "created")
        if not skip_hooks:
            await hooks.run_hooks(self, "after_create")
            await hooks.run_hooks(self, "after_write")
        return self

    async def save(self, *, skip_hooks: bool = False) -> list[str]:
        """Create when new, else ``$set`` the changed fields (none: nothing is sent).

        Returns the names of the fields written.
        """
        if not self.is_stored:
            if skip_hooks:
                await BaseModel.create(self, skip_hooks=True)
            else:
                await self.create()  # a subclass' create() override runs too
            return list(type(self).__fields__)
        if not self.changed_fields():
            return []
        if not skip_hooks:
            await hooks.run_hooks(self, "before_update")
            await hooks.run_hooks(self, "before_write")
        changed = self.changed_fields()  # hooks may have changed more
        doc = self._document()
        await self.collection().update_one({"_id": self.id}, {"$set": {n: doc[n] for n in changed}})
        self._take_snapshot()
        if "updated" in type(self)._events:
            await publish_model_event(self, "updated", changed_fields=changed)
        if not skip_hooks:
            await hooks.run_hooks(self, "after_update")
            await hooks.run_hooks(self, "after_write")
        return changed

    async def delete(self, *, skip_hooks: bool = False) -> None:
        """Delete this document; runs delete hooks."""
        if self.id is None:
            raise ModelStateError(f"this {type(self).__name__} was never stored; nothing to delete")
        if not skip_hooks:
            await hooks.run_hooks(self, "before_delete")
        await self.collection().delete_one({"_id": self.id})
        object.__setattr__(self, "_snapshot", None)
        if "deleted" in type(self)._events:
            await publish_model_event(self, "deleted")
        if not skip_hooks:
            await hooks.run_hooks(self, "after_delete")

    async def _publish(self, name: str) -> None:
        """Publish an event called ``name`` with this model's data (``@before_save`` etc.)."""
        await runtime.current().event_bus.publish(Event(name=name, data=self.to_dict()))

    # --- reads --------------------------------------------------------------------

    @classmethod
    async def get(cls: type[M], id: Any) -> M | None:
        """The document with that ``_id`` (an ObjectId or its hex string), or None."""
        doc = await cls.collection().find_one({"_id": fieldlib.object_id(id)})
        return None if doc is None else cls._from_document(doc)

    @classmethod
    async def find_one(cls: type[M], filter: Mapping[str, Any] | None = None, sort: SortSpec = None) -> M | None:
        doc = await cls.collection().find_one(dict(filter or {}), sort=sort_spec(sort))
        return None if doc is None else cls._from_document(doc)

    @classmethod
    def find(
        cls: type[M], filter: Mapping[str, Any] | None = None, sort: SortSpec = None, skip: int = 0, limit: int = 0
    ) -> Query[M]:
        """Matching documents: ``await`` it for a list, or ``async for`` over it."""
        return Query(cls, dict(filter or {}), sort_spec(sort), skip, limit)

    @classmethod
    async def count(cls, filter: Mapping[str, Any] | None = None) -> int:
        return await cls.collection().count_documents(dict(filter or {}))


class Query(Generic[M]):
    """A find() result: awaitable to a list and async-iterable."""

    def __init__(
        self, model: type[M], filter: dict[str, Any], sort: list[tuple[str, int]] | None, skip: int, limit: int
    ) -> None:
        self.model, self.filter, self.sort, self.skip, self.limit = model, filter, sort, skip, limit

    async def __aiter__(self) -> AsyncIterator[M]:
        cursor = self.model.collection().find(self.filter, sort=self.sort, skip=self.skip, limit=self.limit)
        async for doc in cursor:
            yield self.model._from_document(doc)

    async def to_list(self) -> list[M]:
        return [item async for item in self]

    def __await__(self) -> Generator[Any, None, list[M]]:
        return self.to_list().__await__()
