"""The worker's features that keep their state in MongoDB: workflows and model automations.

Imported by :func:`earnevents.worker.app.create_app` only when a MongoDB is configured:
importing registers the workflow handler (``workflows``), the bridge from events to
workflow runs (``workflow_events``) and the handler of scheduled model events
(``occurrences``); :data:`STEPS` are their bootsteps (the threads that rebuild runs' and
occurrences' messages when Redis lost them). Without a MongoDB none of them could work,
and a worker does not carry their modules (issue 15: memory and start of a worker).
"""

from __future__ import annotations

from . import occurrences, workflow_events, workflow_rebuild, workflows

__all__ = ["STEPS", "workflow_events", "workflows"]

STEPS = (occurrences.OccurrencesStep, workflow_rebuild.WorkflowRebuildStep)
"""Worker bootsteps of these features, added to the app's worker blueprint."""
