"""Worker side: the Celery app, the dispatch task, the per-process loop, the scheduler.

Imported only by the Celery entry point (``earnevents.app``), never by the
publishing side.
"""

from .app import app, create_app

__all__ = ["app", "create_app"]
