"""Model fields: read from class annotations, validated with pydantic, stored as BSON."""

from __future__ import annotations

import copy
import datetime as dt
import typing
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bson import Decimal128, ObjectId
from pydantic import ConfigDict, TypeAdapter, ValidationError

from ..errors import ModelValidationError


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"

    def __copy__(self) -> _Missing:
        return self  # one sentinel: identity checks must survive copies of defaults

    def __deepcopy__(self, memo: dict[int, Any]) -> _Missing:
        return self


MISSING: Any = _Missing()
"""A required field not given yet (a before-hook may still set it)."""

_ADAPTER_CONFIG = ConfigDict(arbitrary_types_allowed=True)


@dataclass(frozen=True)
class Field:
    """One declared field of a model."""

    name: str
    annotation: Any
    default: Any
    adapter: TypeAdapter[Any]

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def initial(self) -> Any:
        """The default for a new instance (a copy, so instances never share a list)."""
        return copy.deepcopy(self.default)

    def validate(self, model: str, value: Any) -> Any:
        try:
            return self.adapter.validate_python(value)
        except ValidationError as exc:
            problems = "; ".join(err["msg"] for err in exc.errors())
            raise ModelValidationError(
                f"{model}.{self.name}: {problems} (got {type(value).__name__} {value!r:.80})"
            ) from None


def collect(cls: type) -> dict[str, Field]:
    """Fields of ``cls`` from the annotations of its MRO: public names, not ClassVars."""
    fields: dict[str, Field] = {}
    for klass in reversed(cls.__mro__):
        if "__annotations__" not in vars(klass):
            continue
        hints = typing.get_type_hints(klass, include_extras=True)
        for name in vars(klass)["__annotations__"]:
            if name.startswith("_") or name == "id":
                continue
            annotation = hints[name]
            if typing.get_origin(annotation) is typing.ClassVar:
                continue
            default = getattr(cls, name, MISSING)
            if callable(default) and hasattr(default, "__earnevents_hooks__"):
                default = MISSING
            fields[name] = Field(name, annotation, default, TypeAdapter(annotation, config=_ADAPTER_CONFIG))
    return fields


def to_bson(value: Any) -> Any:
    """Values BSON cannot hold as they are: Decimal -> Decimal128, date -> datetime, tuple -> list."""
    if isinstance(value, Decimal):
        return Decimal128(value)
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    if isinstance(value, dict):
        return {k: to_bson(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_bson(v) for v in value]
    return value


def from_bson(value: Any) -> Any:
    """Inverse of :func:`to_bson` where the type is not known: Decimal128 -> Decimal."""
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, dict):
        return {k: from_bson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_bson(v) for v in value]
    return value


def object_id(value: Any) -> Any:
    """A 24-hex string becomes an ObjectId (what ``get`` accepts); anything else stays."""
    if isinstance(value, str) and ObjectId.is_valid(value):
        return ObjectId(value)
    return value
