"""Entities: which stored document an event is about, and the model classes that load them.

An event about a model's document carries ``metadata["entity"] = {"model": "Reservation",
"id": "<24 hex digits>"}``: automatic CRUD events, ``dispatch_model_event``, and the
events a model declares (``EventDefinition``). ``event.entity_ref`` reads it without a
query; ``await event.entity()`` loads the document as its model instance.

Model classes register here by class name when they are defined (``BaseModel``
subclasses do so themselves), so this module needs nothing from the model layer: a
worker finds the class of an entity among the models its handler modules imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import lazy, names

if TYPE_CHECKING:
    import bson
else:
    bson = lazy.module("bson")  # PyMongo's: imported when a document is loaded

Loadable = type[Any]
"""A model class: registered by ``__name__``, loading a document with ``await cls.get(id)``."""


@dataclass(frozen=True)
class EntityRef:
    """A model name and a document id (a str: the ObjectId's 24 hex digits)."""

    model: str
    id: str

    def to_dict(self) -> dict[str, str]:
        """The form events carry in ``metadata["entity"]``."""
        return {"model": self.model, "id": self.id}

    @classmethod
    def from_metadata(cls, value: Any) -> EntityRef | None:
        """The reference in an event's ``metadata["entity"]``, or None when it holds none
        (absent, or not a dict of two non-empty str; an ObjectId id is taken as its str)."""
        if not isinstance(value, Mapping):
            return None
        model, record_id = value.get("model"), value.get("id")
        # metadata written by hand with the document's id as it is
        if isinstance(record_id, lazy.loaded_class("bson", "ObjectId")):
            record_id = str(record_id)
        if not isinstance(model, str) or not isinstance(record_id, str) or not model or not record_id:
            return None
        return cls(model, record_id)

    def __str__(self) -> str:
        return f"{self.model} {self.id}"


class UnknownModelError(LookupError):
    """No model class of that name is imported in this process (or two are)."""


_models: dict[str, Loadable] = {}
_ambiguous: dict[str, set[str]] = {}


def register(model: Loadable) -> None:
    """Make ``model`` the class that loads entities named ``model.__name__``.

    A class defined again under the same module and qualified name (a module reloaded,
    imported twice) replaces the first; two different classes with one name make that
    name ambiguous: :func:`lookup` then refuses it, naming both.
    """
    name = model.__name__
    names.check_sender(name, "model name")
    current = _models.get(name)
    if current is not None and _where(current) != _where(model):
        _ambiguous.setdefault(name, {_where(current)}).add(_where(model))
    _models[name] = model


def _where(model: Loadable) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def lookup(name: str) -> Loadable:
    """The model class registered as ``name``; UnknownModelError if none or several are."""
    if name in _ambiguous:
        raise UnknownModelError(
            f"two model classes are named {name!r} ({', '.join(sorted(_ambiguous[name]))}): "
            "entity references name models by class name; rename one"
        )
    try:
        return _models[name]
    except KeyError:
        raise UnknownModelError(
            f"no model class named {name!r} is imported in this process; import its module "
            "(a worker imports EARNEVENTS_HANDLER_MODULES and autodiscovered modules)"
        ) from None


def models() -> list[Loadable]:
    """Every registered model class, in registration order (ambiguous names left out)."""
    return [model for name, model in _models.items() if name not in _ambiguous]


async def load(ref: EntityRef) -> Any:
    """The document ``ref`` names as its model instance, or None if it no longer exists.

    ValueError when its id is no ObjectId's 24 hex digits: models' documents have ObjectId
    ids, so it could name none (an event dispatched with another kind of id), which is not
    the same as a document deleted since."""
    model = lookup(ref.model)
    if not bson.ObjectId.is_valid(ref.id):
        raise ValueError(
            f"the entity {ref.model} {ref.id!r} cannot be loaded: {ref.model} documents have ObjectId ids "
            "(24 hex digits), and this id is none (was the event dispatched with another kind of id?)"
        )
    return await model.get(ref.id)
