"""Where a worker's Celery app keeps its earnevents :class:`~earnevents.config.Settings`.

On the app object, not in ``app.conf``: any client of the broker can read a worker's
configuration (``celery inspect conf``, and ``celery report`` prints it), and Celery
masks only keys it recognizes (``broker_url``, names with PASS, KEY, SECRET, ...): the
``earnevents_mongo_uri`` and ``earnevents_redis_uri`` keys earnevents once set there were
shown with their passwords. The bootsteps (scheduler, keep-alive, relay) read the settings,
URIs and all, from here.
"""

from __future__ import annotations

from typing import Any

from ..config import Settings

_ATTRIBUTE = "earnevents_settings"


def attach(app: Any, settings: Settings) -> None:
    """Give ``app`` (made by ``create_app``) its settings."""
    setattr(app, _ATTRIBUTE, settings)


def settings_of(app: Any) -> Settings:
    """The settings ``app`` was made with; from the environment for an app ``create_app`` did not make."""
    settings = getattr(app, _ATTRIBUTE, None)
    if not isinstance(settings, Settings):
        settings = Settings.resolve()
        attach(app, settings)
    return settings
