"""Handlers for tests/test_startup.py's worker (EARNEVENTS_HANDLER_MODULES=startup_handlers)."""

from __future__ import annotations

import gc
import json
import sys

from earnevents import Event, event_handler, runtime


@event_handler("startup.probe")
async def probe(event: Event) -> None:
    """What the pool process runs with: objects frozen before its fork, libraries imported."""
    seen = {
        "frozen": gc.get_freeze_count(),
        "imported": [m for m in event.data["modules"] if m in sys.modules],
    }
    await runtime.current().redis.rpush(f"results:{event.data['token']}", json.dumps(seen))
