from __future__ import annotations

import json

from discover_apps import IMPORTED
from earnevents import Event, event_handler, runtime

IMPORTED.append(__name__)


@event_handler("shop.invoice_sent")
async def record_invoice(event: Event) -> None:
    await runtime.current().redis.rpush(f"results:{event.data['token']}", json.dumps({"handler": "record_invoice"}))
