"""Lifecycle hook decorators and the runner that calls them.

The decorators only tag methods. When a model class is created, the tagged
methods of its whole MRO are collected per kind, parents first and in
definition order; :func:`run_hooks` calls them (async or plain) in that order.
``before_save(name)`` / ``after_save(name)`` are different: they wrap a method
and publish an event named ``name`` with the model's data.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .base import BaseModel

F = TypeVar("F", bound=Callable[..., Any])

KINDS = (
    "before_create",
    "after_create",
    "before_update",
    "after_update",
    "before_write",
    "after_write",
    "before_delete",
    "after_delete",
)
_TAG = "__earnevents_hooks__"


def _tagger(kind: str) -> Callable[[F], F]:
    def tag(method: F) -> F:
        kinds = set(getattr(method, _TAG, ()))
        kinds.add(kind)
        setattr(method, _TAG, frozenset(kinds))
        return method

    tag.__name__ = kind
    tag.__doc__ = f"Run the decorated method as a {kind.replace('_', ' ')} hook."
    return tag


before_create = _tagger("before_create")
after_create = _tagger("after_create")
before_update = _tagger("before_update")
after_update = _tagger("after_update")
before_write = _tagger("before_write")
"""Runs before create and before update."""
after_write = _tagger("after_write")
"""Runs after create and after update."""
before_delete = _tagger("before_delete")
after_delete = _tagger("after_delete")


def collect(cls: type) -> dict[str, tuple[str, ...]]:
    """Hook method names per kind for ``cls``: parents' first, each in definition order."""
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for klass in reversed(cls.__mro__):
        for name, member in vars(klass).items():
            for kind in getattr(member, _TAG, ()):
                if name not in found[kind]:
                    found[kind].append(name)
    return {kind: tuple(names) for kind, names in found.items()}


async def run_hooks(model: BaseModel, kind: str) -> None:
    """Call ``model``'s hooks of ``kind`` in order; the first exception propagates."""
    for name in type(model).__hooks__[kind]:
        result = getattr(model, name)()
        if inspect.isawaitable(result):
            await result


def _save_event(name: str, when: str) -> Callable[[F], F]:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"@{when}_save needs an event name such as 'user.before_create'")

    def decorate(method: F) -> F:
        if not inspect.iscoroutinefunction(method):
            raise TypeError(f"@{when}_save decorates async methods; {method.__qualname__} is not one")

        @functools.wraps(method)
        async def wrapper(self: BaseModel, *args: Any, **kwargs: Any) -> Any:
            if when == "before":
                await self._publish(name)
            result = await method(self, *args, **kwargs)
            if when == "after":
                await self._publish(name)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


def before_save(name: str) -> Callable[[F], F]:
    """Publish event ``name`` with the model's data, then run the decorated method."""
    return _save_event(name, "before")


def after_save(name: str) -> Callable[[F], F]:
    """Run the decorated method; if it returned without raising, publish event ``name``."""
    return _save_event(name, "after")
