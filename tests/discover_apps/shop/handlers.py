from __future__ import annotations

import json

from discover_apps import IMPORTED
from earnevents import Event, event_handler, runtime

IMPORTED.append(__name__)


@event_handler("shop.order_paid")
async def record_paid(event: Event) -> None:
    """Records the types it got, so the e2e test sees the schema's Decimal arrive."""
    seen = {k: type(v).__name__ for k, v in event.data.items()}
    await runtime.current().redis.rpush(
        f"results:{event.data['token']}", json.dumps({"handler": "record_paid", "types": seen})
    )
