"""e2e_handlers, plus a record of every task Celery's pool runs (its ``task_prerun`` signal,
sent by the pool's tracer), in the Redis list ``pool:<token>``: tests/test_loop_handoff_e2e.py
checks which messages reach the pool under ``-P threads``."""

from __future__ import annotations

from typing import Any

from celery.signals import task_prerun
from e2e_handlers import *  # noqa: F403 (the handlers themselves)
from e2e_handlers import _sync


@task_prerun.connect(weak=False)
def _ran_in_pool(task_id: str | None = None, args: Any = (), **_: Any) -> None:
    for event in args or ():
        token = (event.get("data") or {}).get("token") if isinstance(event, dict) else None
        if token:
            _sync.rpush(f"pool:{token}", str(task_id))
