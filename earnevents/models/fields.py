"""Field values between Python, pydantic and BSON: the MISSING marker, conversions, errors."""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bson import Decimal128, ObjectId

from ..errors import ModelValidationError

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails


class _Missing:
    """Type of :data:`MISSING`; one instance, kept by copies."""

    def __repr__(self) -> str:
        return "MISSING"

    def __copy__(self) -> _Missing:
        return self  # identity checks must survive copies of defaults and snapshots

    def __deepcopy__(self, memo: dict[int, Any]) -> _Missing:
        return self

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""The value of a required field not given yet: a before-hook may still set it, and
writing the model while a field is MISSING is a :class:`ModelValidationError`."""

UNKNOWN_FIELD_ERRORS = frozenset({"extra_forbidden", "no_such_attribute"})


def to_bson(value: Any) -> Any:
    """What BSON cannot hold as it is: Decimal -> Decimal128, date -> datetime (UTC
    midnight), tuple/set -> list, Enum -> its value; dicts and lists at any depth."""
    if isinstance(value, Decimal):
        return Decimal128(value)
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    if isinstance(value, enum.Enum):
        return to_bson(value.value)
    if isinstance(value, dict):
        return {k: to_bson(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_bson(v) for v in value]
    return value


def from_bson(value: Any) -> Any:
    """Undo what pydantic cannot undo from the annotation alone: Decimal128 -> Decimal; and
    aware datetimes in ``datetime.timezone.utc`` (PyMongo gives bson's own UTC tzinfo)."""
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc)
    if isinstance(value, dict):
        return {k: from_bson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_bson(v) for v in value]
    return value


def object_id(value: Any) -> Any:
    """A 24-hex string becomes an ObjectId (``get("65a...")``, ``User(id="65a...")``); anything else stays."""
    if isinstance(value, str) and ObjectId.is_valid(value):
        return ObjectId(value)
    return value


def _location(loc: tuple[int | str, ...]) -> str:
    """``("tags", 0, "name")`` -> ``tags[0].name``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(model: str, error: ErrorDetails) -> str:
    where = _location(error["loc"])
    if error["type"] in UNKNOWN_FIELD_ERRORS:
        return f"{model} has no field {where!r}"
    if not where:
        return f"{model}: {error['msg']}"
    value = error.get("input")
    return f"{model}.{where}: {error['msg']} (got {type(value).__name__} {value!r:.80})"


def validation_error(model: str, exc: ValidationError) -> ModelValidationError:
    """pydantic's error as ours, naming the model and each field: ``User.email: Input should be ...``."""
    return ModelValidationError("; ".join(_problem(model, error) for error in exc.errors()))
