"""``Model.find(...)``: a lazy query, awaitable to a list and async-iterable."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from .base import BaseModel

M = TypeVar("M", bound="BaseModel")

ASCENDING, DESCENDING = 1, -1  # pymongo's (imported only where a MongoDB is used)

SortSpec = str | Sequence[str] | Sequence[tuple[str, int]] | Mapping[str, int] | None
"""``"name"``, ``"-name"`` (descending), a list of those, PyMongo's ``[("name", 1)]`` or ``{"name": 1}``."""


def sort_spec(sort: SortSpec) -> list[tuple[str, int]] | None:
    """PyMongo's ``[(field, direction)]`` from any :data:`SortSpec`."""
    if sort is None:
        return None
    if isinstance(sort, Mapping):
        return [(str(field), int(direction)) for field, direction in sort.items()]
    items: Sequence[Any] = [sort] if isinstance(sort, str) else sort
    spec: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str):
            spec.append((item[1:], DESCENDING) if item.startswith("-") else (item, ASCENDING))
        else:
            field, direction = item
            spec.append((field, direction))
    return spec


class Query(Generic[M]):
    """Documents matching ``filter`` as ``model`` instances; nothing is sent until awaited or iterated."""

    def __init__(
        self,
        model: type[M],
        filter: Mapping[str, Any] | None = None,
        sort: SortSpec = None,
        skip: int = 0,
        limit: int = 0,
    ) -> None:
        if skip < 0 or limit < 0:
            raise ValueError(f"skip and limit must not be negative (got skip={skip}, limit={limit})")
        self.model = model
        self.filter = dict(filter or {})
        self.sort = sort_spec(sort)
        self.skip = skip
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[M]:
        cursor = self.model.get_collection().find(self.filter, sort=self.sort, skip=self.skip, limit=self.limit)
        async with cursor:
            async for doc in cursor:
                yield self.model.from_document(doc)

    async def to_list(self) -> list[M]:
        """All matching models (what ``await query`` gives)."""
        return [item async for item in self]

    def __await__(self) -> Generator[Any, None, list[M]]:
        return self.to_list().__await__()

    def __repr__(self) -> str:
        where = f"{self.filter!r}, sort={self.sort!r}, skip={self.skip}, limit={self.limit}"
        return f"Query({self.model.__name__}, {where})"
