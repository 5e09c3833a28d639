"""The worker's side of models' scheduled events: firing occurrences, rebuilding them.

- :func:`fire` is the handler every occurrence message names (``keys.OCCURRENCE_HANDLER``).
  At due time it loads the document again and publishes the model's event only if the
  document exists, the condition holds and its due time is the one scheduled: a stale
  occurrence (a write raced the schedule, the document changed through ``update_many``)
  is dropped; when the document is due at another time then, that occurrence is put in the
  schedule unless one is pending (the write that moved it may have lost it to the outbox).
  It runs as a job like any handler: a MongoDB outage is retried by
  :data:`POLICY` and then recorded as a failed job; a redelivery after it completed is
  skipped; the event it publishes has an id derived from the occurrence's, so
  publishing twice delivers once.
- :class:`Rebuilder` (a thread in every worker's main process) notices when Redis has
  lost the schedule (the ``occurrences`` marker set is gone: a flush, a failover to an
  empty replica, no persistence) and, one worker at a time under a lock, recreates the
  pending occurrences of the models this worker imports from MongoDB.
"""

from __future__ import annotations

import time
from typing import Any

from .. import entities, keys
from ..event import Event
from ..handlers import dotted_name, registry
from ..logtext import get_logger
from ..models import automations
from ..retry import RetryPolicy
from . import appsettings
from .periodic import ThreadStep, consumed_queues
from .restore import RestoreThread

log = get_logger(__name__)

POLICY = RetryPolicy(max_retries=10, interval_start=1.0, interval_step=2.0, interval_max=30.0)
"""Firing an occurrence fails only when MongoDB or Redis does (or the model is not imported):
tried again for about four minutes before it is recorded as a failed job."""

INTERVAL = 1.0
"""Seconds between a worker's checks that the schedule still holds the models' occurrences."""


class MalformedOccurrenceError(ValueError):
    """An occurrence message without the entity or occurrence fields models write."""


async def fire(event: Event) -> None:
    """Publish the model event ``event`` stands for, if its document still calls for it now."""
    ref = event.entity_ref
    occurrence = (event.metadata or {}).get("occurrence")
    if ref is None or not isinstance(occurrence, dict):
        raise MalformedOccurrenceError(f"event {event.id} is no model occurrence: it names no entity or occurrence")
    name, due = occurrence.get("definition"), occurrence.get("due_ms")
    if not isinstance(name, str) or isinstance(due, bool) or not isinstance(due, int):
        raise MalformedOccurrenceError(f"event {event.id}: malformed occurrence {occurrence!r}")
    model = entities.lookup(ref.model)
    definition = automations.of(model).get(name)
    if definition is None or not definition.scheduled:
        raise LookupError(f"the model {ref.model} declares no scheduled event {name!r} (any more?)")
    instance = await model.get(ref.id)
    if instance is None:
        log.info("%s for %s not published: the document was deleted", name, ref)
        return
    now_due = await definition.due_if_holds(instance)
    if now_due != due:
        if now_due is not None:
            why = f"it is due at {automations.when(now_due)} now"
        elif definition.due_ms(instance) is None:
            why = f"its {definition.date_field} is empty"
        else:
            why = "its condition no longer holds"
        log.info("%s for %s due at %s not published: %s", name, ref, automations.when(due), why)
        if now_due is not None and (definition.catch_up or now_due >= time.time() * 1000):
            # The write that moved it may have lost its occurrence (automations.schedule_if_absent).
            await automations.schedule_if_absent(instance, definition, now_due)
        return
    await automations.publish(instance, definition, due, event.id)


if dotted_name(fire) != keys.OCCURRENCE_HANDLER:  # pragma: no cover - caught by any test run
    raise RuntimeError(f"keys.OCCURRENCE_HANDLER must be {dotted_name(fire)}")
registry.register_targeted(keys.OCCURRENCE_HANDLER, fire, POLICY)


class Rebuilder(RestoreThread):
    """Rebuilds ``queue``'s model occurrences whenever Redis has lost them."""

    what = "occurrence rebuilder"

    def __init__(self, redis_uri: str, mongo_uri: str, database: str, queue: str, interval: float) -> None:
        super().__init__(redis_uri, mongo_uri, database, interval)
        self.queue = queue

    def missing(self) -> list[Any]:
        """The scheduled models whose occurrences the schedule does not hold (never rebuilt,
        or Redis lost them)."""
        models = automations.scheduled_models()
        if not models:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for model in models:
            pipe.sismember(keys.occurrences_rebuilt(self.queue), model.__name__)
        present = pipe.execute()
        return [model for model, found in zip(models, present, strict=True) if not found]

    def tick(self) -> None:
        self.rebuild_missing()

    def rebuild_missing(self) -> list[automations.Rebuilt]:
        """Rebuild the models :meth:`missing` names, if no other worker is doing it."""
        if not self.missing():
            return []
        with self.locked(keys.occurrences_lock(self.queue)) as held:
            models = self.missing() if held else []  # another worker may have finished just before
            if not models:
                return []
            log.info(  # at a first start as after a loss: the rebuild's own line says what it added
                "the schedule of %s is not marked as holding the occurrences of %s (a first start, or Redis "
                "lost its data): rebuilding them from MongoDB",
                self.queue,
                ", ".join(m.__name__ for m in models),
            )
            return self.run_with_clients(lambda redis, db: automations.rebuild(redis, db, self.queue, models))


class OccurrencesStep(ThreadStep):
    """Celery worker bootstep owning one :class:`Rebuilder`, when a MongoDB is configured and
    the worker consumes the configured queue (model writes schedule there)."""

    label = "earnevents occurrence rebuilder"

    def create(self, worker: Any) -> Rebuilder | None:
        settings = appsettings.settings_of(worker.app)
        if not settings.mongo_uri or settings.queue_name not in consumed_queues(worker):
            return None
        return Rebuilder(settings.redis_uri, settings.mongo_uri, settings.database, settings.queue_name, INTERVAL)
