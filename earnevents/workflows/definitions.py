"""Declaring workflows: ``@workflow``, ``@event_workflow``, ``@step`` and the registry.

::

    @workflow("reindex_listing")
    class ReindexListing:
        class Context(BaseModel):          # pydantic
            listing_id: int

        @classmethod
        def create_context(cls, listing_id: int):
            return cls.Context(listing_id=listing_id)

        @step(start=True)
        def run(self):
            return complete()

Checked when the class is decorated: a nested pydantic ``Context``, a classmethod
``create_context`` (``def`` or ``async def``: it may load what the Context needs, such as
the event's document with ``await event.entity()``), exactly one start step, and every step that a ``goto``,
``sleep(then=)``, ``wait(..., then=/on_timeout=)`` in a step's source names with a
literal (``"name"`` or ``self.name``) exists. Targets computed at run time are checked
when the step returns them (the run fails, naming the step).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .. import lazy, names
from .commands import Retry

if TYPE_CHECKING:
    import pydantic
else:
    pydantic = lazy.module("pydantic")

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

_STEP = "__earnevents_step__"

_TARGET_CALLS: dict[str, tuple[tuple[int, str], ...]] = {
    "goto": ((0, "step"),),
    "sleep": ((1, "then"),),
    "wait": ((2, "on_timeout"), (3, "then")),
    "for_signal": ((2, "on_timeout"), (3, "then")),
    "wait_for_event": ((2, "on_timeout"), (4, "then")),
}
"""Per command: the (position, keyword) of the arguments that name a step."""


@dataclass(frozen=True)
class StepSpec:
    name: str
    func: Callable[..., Any]
    start: bool
    retry: Retry | None
    is_async: bool


@dataclass(frozen=True)
class EventTrigger:
    """What starts an ``@event_workflow``: an event name, an offset, a model filter."""

    event_name: str
    offset_minutes: float = 0
    entity_type: str | None = None


@dataclass
class WorkflowSpec:
    """A declared workflow: its class, steps and how it starts."""

    name: str
    cls: type
    steps: dict[str, StepSpec]
    start: str
    default_retry: Retry | None = None
    trigger: EventTrigger | None = None
    awaited_events: frozenset[str] = field(default_factory=frozenset)
    """Event names its steps wait for with a literal ``wait_for_event("name", ...)``."""

    @property
    def context_class(self) -> type[pydantic.BaseModel]:
        return self.cls.Context  # type: ignore[attr-defined, no-any-return]

    def retry_of(self, step: str) -> Retry | None:
        spec = self.steps.get(step)
        return (spec.retry if spec is not None and spec.retry is not None else None) or self.default_retry


registry: dict[str, WorkflowSpec] = {}
"""Declared workflows by name (this process: a worker imports them with its handler modules)."""

_listeners: list[Callable[[], None]] = []


def on_declared(listener: Callable[[], None]) -> None:
    """Call ``listener`` now and after every workflow declared from now on (the worker's
    event bridge subscribes to the events the declared workflows start on or wait for)."""
    _listeners.append(listener)
    listener()


def step(start: bool = False, retry: Retry | None = None) -> Callable[[F], F]:
    """Make a method a step of its workflow; ``start=True`` for the one it starts with.
    ``retry``: tries of this step when it raises (default: the workflow's ``default_retry``,
    else one try)."""
    if not isinstance(start, bool):
        raise TypeError("step(start=) takes a bool; write @step(start=True)")
    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(f"step(retry=) takes a Retry, got {type(retry).__name__}")

    def tag(func: F) -> F:
        if not callable(func):
            raise TypeError(f"@step decorates methods, got {type(func).__name__}")
        setattr(func, _STEP, (start, retry))
        return func

    return tag


def workflow(name: str, *, default_retry: Retry | None = None) -> Callable[[C], C]:
    """Declare a workflow started by hand: ``engine.start(name, **kwargs)``."""
    names.check_event_name(name, "workflow name")

    def declare(cls: C) -> C:
        _register(_spec(name, cls, default_retry, None))
        return cls

    return declare


def event_workflow(
    event_name: str,
    offset_minutes: float = 0,
    entity_type: type | str | None = None,
    default_retry: Retry | None = None,
    *,
    name: str | None = None,
) -> Callable[[C], C]:
    """Declare a workflow started when ``event_name`` occurs, with ``create_context(event=...)``.

    ``offset_minutes`` > 0 starts it that long after the event's time (a scheduled model
    event's ``due_at``, else the event's timestamp): the run is created ``waiting`` for its
    start until then (``wake_at``; ``waiting_for`` ``{"kind": "start", "name": event_name,
    "then": <start step>, "offset_minutes": ...}``: no signal or event starts it earlier; at
    ``wake_at`` it starts its start step). < 0 starts it before: for a model's scheduled
    event (``EventDefinition`` with a ``date_field``) the run is created ``waiting`` so when
    the occurrence is scheduled (its ``<name>:created`` event, which ``create_context`` then receives: same entity, data
    ``id``/``due_at``), moved when the occurrence moves, cancelled when it is cancelled; the
    event itself starts nothing more (a run is started then, late, only if none was
    created: the workflow was declared after the occurrence was scheduled). Any other
    event has no time known in advance: a negative offset starts the run at once.
    An event delivered twice (same id) starts one run. ``entity_type`` (a model class or
    its name) starts it only for that model's events. ``name`` defaults to the class name.
    """
    names.check_event_name(event_name, "event_workflow's event name")
    if isinstance(offset_minutes, bool) or not isinstance(offset_minutes, (int, float)):
        raise TypeError(f"offset_minutes must be a number, got {type(offset_minutes).__name__}")
    sender = names.check_sender(entity_type, "event_workflow's entity_type")
    trigger = EventTrigger(event_name, float(offset_minutes), sender)

    def declare(cls: C) -> C:
        _register(_spec(name or cls.__name__, cls, default_retry, trigger))
        return cls

    return declare


def _register(spec: WorkflowSpec) -> None:
    existing = registry.get(spec.name)
    if existing is not None and _where(existing.cls) != _where(spec.cls):
        raise ValueError(
            f"another workflow is already declared as {spec.name!r} ({_where(existing.cls)}); give each its own name"
        )
    registry[spec.name] = spec
    spec.cls.__workflow__ = spec  # type: ignore[attr-defined]
    for listener in _listeners:
        listener()


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _spec(name: str, cls: type, default_retry: Retry | None, trigger: EventTrigger | None) -> WorkflowSpec:
    names.check_event_name(name, "workflow name")
    if not isinstance(cls, type):
        raise TypeError(f"@workflow decorates classes, got {type(cls).__name__}")
    if default_retry is not None and not isinstance(default_retry, Retry):
        raise TypeError(f"default_retry takes a Retry, got {type(default_retry).__name__}")
    context = getattr(cls, "Context", None)
    if not (isinstance(context, type) and issubclass(context, pydantic.BaseModel)):
        raise TypeError(f"workflow {name!r}: {cls.__name__} needs a nested pydantic model class Context")
    if not isinstance(inspect.getattr_static(cls, "create_context", None), classmethod):
        raise TypeError(f"workflow {name!r}: {cls.__name__} needs a classmethod create_context(cls, ...)")
    steps: dict[str, StepSpec] = {}
    for klass in reversed(cls.__mro__):
        for attr, member in vars(klass).items():
            tagged = getattr(member, _STEP, None)
            if tagged is not None:
                start, retry = tagged
                steps[attr] = StepSpec(attr, member, start, retry, inspect.iscoroutinefunction(member))
    if not steps:
        raise ValueError(f"workflow {name!r}: {cls.__name__} has no @step methods")
    starts = [s.name for s in steps.values() if s.start]
    if len(starts) != 1:
        raise ValueError(f"workflow {name!r} needs exactly one @step(start=True), has {len(starts)}: {starts}")
    awaited: set[str] = set()
    for spec in steps.values():
        for target in _literal_targets(spec.func, awaited):
            if target not in steps:
                raise ValueError(
                    f"workflow {name!r}: step {spec.name} goes to {target!r}, which is no step of {cls.__name__} "
                    f"(steps: {', '.join(sorted(steps))})"
                )
    return WorkflowSpec(name, cls, steps, starts[0], default_retry, trigger, frozenset(awaited))


def _literal_targets(func: Callable[..., Any], awaited: set[str]) -> list[str]:
    """Step names a step's source gives ``goto``/``sleep``/``wait*`` as literals; adds the
    literal event names of its ``wait_for_event`` calls to ``awaited``. None found when the
    source cannot be read (the run-time check remains)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return []
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        callee = node.func
        called = (
            callee.id if isinstance(callee, ast.Name) else callee.attr if isinstance(callee, ast.Attribute) else None
        )
        if called not in _TARGET_CALLS:
            continue
        values: list[ast.expr] = []
        for position, keyword in _TARGET_CALLS[called]:
            if len(node.args) > position:
                values.append(node.args[position])
            values += [k.value for k in node.keywords if k.arg == keyword]
        if called == "wait_for_event":
            given = node.args[:1] + [k.value for k in node.keywords if k.arg == "name"]
            awaited.update(v.value for v in given if isinstance(v, ast.Constant) and isinstance(v.value, str))
        for value in values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.append(value.value)
            elif isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "self":
                found.append(value.attr)
    return found
