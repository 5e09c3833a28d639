"""Lifecycle hooks: decorators that tag methods, the per-class registry, and the one runner.

The decorators only tag a method with its kind(s). When a model class is
created, :func:`collect` gathers the tagged methods of its whole MRO per kind,
parents first and each class in definition order. :func:`run_action` is the only
place hooks run: before-hooks, the write, after-hooks. ``before_save(name)`` and
``after_save(name)`` are different: they wrap the method itself and publish an
event named ``name`` with the model's data.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .. import lazy, names

if TYPE_CHECKING:
    import pydantic

    from .base import BaseModel
else:
    pydantic = lazy.module("pydantic")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

Action = Literal["create", "update", "delete"]

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

PHASES: Mapping[Action, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "create": (("before_create", "before_write"), ("after_create", "after_write")),
    "update": (("before_update", "before_write"), ("after_update", "after_write")),
    "delete": (("before_delete",), ("after_delete",)),
}
"""Per write: the hook kinds run before it and after it, in this order."""

_TAG = "__earnevents_hooks__"

Registry = Mapping[str, tuple[str, ...]]
"""Hook method names per kind, in the order they run."""


def _tagger(kind: str, doc: str) -> Callable[[F], F]:
    def tag(method: F) -> F:
        if not callable(method):
            raise TypeError(f"@{kind} decorates methods, got {type(method).__name__}")
        setattr(method, _TAG, frozenset({*getattr(method, _TAG, ()), kind}))
        return method

    tag.__name__ = tag.__qualname__ = kind
    tag.__doc__ = doc
    return tag


before_create = _tagger("before_create", "Run the method before a new model is inserted; raising aborts the insert.")
after_create = _tagger("after_create", "Run the method after a new model was inserted.")
before_update = _tagger("before_update", "Run the method before a stored model's changes are written; raising aborts.")
after_update = _tagger("after_update", "Run the method after a stored model's changes were written.")
before_write = _tagger("before_write", "Run the method before every insert and update (after before_create/update).")
after_write = _tagger("after_write", "Run the method after every insert and update (after after_create/update).")
before_delete = _tagger("before_delete", "Run the method before the model is deleted; raising aborts the delete.")
after_delete = _tagger("after_delete", "Run the method after the model was deleted.")


def collect(cls: type) -> dict[str, tuple[str, ...]]:
    """Hook method names per kind for ``cls``: parents' first, each class in definition order.

    Hooks are looked up by name when they run, so a subclass that overrides a hook
    method replaces it (in the parent's place); decorate the override to keep it a hook.
    """
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for klass in reversed(cls.__mro__):
        if klass is object or klass is pydantic.BaseModel:
            continue
        for name, member in vars(klass).items():
            kinds = getattr(member, _TAG, None)
            if not isinstance(kinds, frozenset):
                continue
            for kind in kinds:
                if name not in found[kind]:
                    found[kind].append(name)
    return {kind: tuple(names) for kind, names in found.items()}


async def run_hooks(model: BaseModel, kind: str) -> None:
    """Call ``model``'s hooks of ``kind`` (async or plain) in order; the first exception propagates."""
    for name in type(model).__hooks__[kind]:
        result = getattr(model, name)()
        if inspect.isawaitable(result):
            await result


async def run_action(
    model: BaseModel, action: Action, write: Callable[[], Awaitable[T]], *, skip_hooks: bool = False
) -> T:
    """Before-hooks, ``write()``, after-hooks; returns what ``write`` returned.

    A before-hook that raises aborts: ``write`` never runs. An after-hook that raises
    does not undo the write; its exception reaches the caller and later hooks don't run.
    """
    before, after = PHASES[action]
    if not skip_hooks:
        for kind in before:
            await run_hooks(model, kind)
    result = await write()
    if not skip_hooks:
        for kind in after:
            await run_hooks(model, kind)
    return result


def _save_event(name: str, when: Literal["before", "after"]) -> Callable[[F], F]:
    names.check_event_name(name, f"@{when}_save's event name")

    def decorate(method: F) -> F:
        if not inspect.iscoroutinefunction(method):
            raise TypeError(f"@{when}_save decorates async methods; {method.__qualname__} is not one")

        @functools.wraps(method)
        async def wrapper(self: BaseModel, *args: Any, **kwargs: Any) -> Any:
            if when == "before":
                await self.publish_event(name)
            result = await method(self, *args, **kwargs)
            if when == "after":
                await self.publish_event(name)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


def before_save(name: str) -> Callable[[F], F]:
    """Publish the event ``name`` with the model's data (``id`` included), then run the method."""
    return _save_event(name, "before")


def after_save(name: str) -> Callable[[F], F]:
    """Run the method; if it returned without raising, publish the event ``name`` with the model's data."""
    return _save_event(name, "after")
