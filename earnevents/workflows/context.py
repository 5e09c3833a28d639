"""What a running step can ask for: ``get_context()`` and ``current_step_key()``."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepScope:
    run_id: str
    workflow: str
    step: str
    visit: int
    context: Any


_scope: contextvars.ContextVar[StepScope | None] = contextvars.ContextVar("earnevents_workflow_step", default=None)


def enter(scope: StepScope) -> contextvars.Token[StepScope | None]:
    return _scope.set(scope)


def leave(token: contextvars.Token[StepScope | None]) -> None:
    _scope.reset(token)


def _current(what: str) -> StepScope:
    scope = _scope.get()
    if scope is None:
        raise RuntimeError(f"{what}() is called inside a workflow step only")
    return scope


def get_context() -> Any:
    """The running workflow's Context (its pydantic model): changes made in the step are
    saved with the step's outcome, also when the step raises."""
    return _current("get_context").context


def current_step_key() -> str:
    """A key unique to this visit of this step of this run, the same when the step runs
    again (a retry, a redelivery after its worker died): use it to make side effects
    idempotent (an email provider's idempotency key, a unique index)."""
    scope = _current("current_step_key")
    return f"{scope.run_id}:{scope.step}:{scope.visit}"


def current_run_id() -> str:
    """The id of the run whose step is running."""
    return _current("current_run_id").run_id
