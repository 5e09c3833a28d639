from __future__ import annotations

import datetime as dt
from decimal import Decimal

from pydantic import BaseModel

from discover_apps import IMPORTED
from earnevents import define_event

IMPORTED.append(__name__)


class OrderPaidData(BaseModel):
    token: str
    order_id: int
    total: Decimal
    paid_at: dt.datetime | None = None


OrderPaid = define_event(
    "shop.order_paid",
    schema=OrderPaidData,
    description="An order was paid in full",
    codes={
        "PAID": {"type": "outcome", "level": "high", "description": "Paid", "order": 10, "selectable_by": []},
        "PAID_LATE": {"type": "outcome", "level": "low", "description": "Paid after the reminder", "order": 20},
    },
    team="billing",
)
