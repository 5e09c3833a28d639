"""kombu's Redis transport, hardened against items that are not messages.

Plain kombu parses what BRPOP returns inside the worker's event loop; an item
that is not a kombu message (not JSON, not an envelope, a broken body) raises
there and Celery stops the whole worker with "Unrecoverable error". BRPOP has
already removed such an item, so the only sound choice left is to log it and
keep serving, which is what this transport does. Everything else is kombu's.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


def envelope_problem(message: Any) -> str | None:
    """Why ``message`` (a parsed queue item) is not a kombu message, or None if it is."""
    if not isinstance(message, dict):
        return f"a JSON {type(message).__name__}, not an object"
    properties = message.get("properties")
    if not isinstance(properties, dict) or not isinstance(properties.get("delivery_tag"), str):
        return "no properties.delivery_tag"
    if not isinstance(message.get("headers", {}), dict):
        return "headers is not an object"
    body = message.get("body")
    if not isinstance(body, str):
        return "no string body"
    if properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "body is not valid base64"
    return None


class Channel(kombu_redis.Channel):
    """A Redis channel whose BRPOP reader drops items that are not JSON."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handlers = {**self.handlers, "BRPOP": self._read_or_drop}

    def _read_or_drop(self, **options: Any) -> bool:
        try:
            return bool(self._brpop_read(**options))
        except (ValueError, TypeError) as exc:  # JSON/UTF-8 decoding; KeyError stays kombu's
            log.error("dropped an item on the queue that is not a message: %r", exc)
            return False


class Transport(kombu_redis.Transport):
    """Use with ``broker_transport='earnevents.worker.transport:Transport'``."""

    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        problem = envelope_problem(message)
        if problem is not None:
            log.error("dropped an item on queue %r that is not a message (%s): %.200r", queue, problem, message)
            return
        super()._deliver(message, queue)
