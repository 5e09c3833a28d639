"""Durable workflows (seed 003 §3-6): steps run by earnevents' workers, runs kept in MongoDB.

- ``definitions``: ``@workflow``, ``@event_workflow``, ``@step`` and the registry
- ``commands``: what steps return: ``goto``, ``sleep``, ``wait``, ``wait_for_event``,
  ``complete``, ``fail``; ``Retry``
- ``context``: ``get_context()``, ``current_step_key()`` inside a step
- ``runs``: the run record in MongoDB and its compare-and-set transitions
- ``engine``: ``engine.start / signal / get_run / find_runs / cancel / resume``

The worker side (running steps) is ``earnevents.worker.workflows``.
"""

from .commands import Retry, complete, fail, goto, sleep, wait, wait_for_event
from .context import current_run_id, current_step_key, get_context
from .definitions import event_workflow, step, workflow
from .engine import RunNotFoundError, WorkflowError, engine
from .runs import ContextTooLargeError, Run

__all__ = [
    "workflow",
    "event_workflow",
    "step",
    "Retry",
    "goto",
    "sleep",
    "wait",
    "wait_for_event",
    "complete",
    "fail",
    "get_context",
    "current_step_key",
    "current_run_id",
    "engine",
    "Run",
    "WorkflowError",
    "RunNotFoundError",
    "ContextTooLargeError",
]
