"""Example handlers: what `make demo` and the docker-compose worker run.

Start a worker on them with::

    EARNEVENTS_HANDLER_MODULES=workers.example_handlers celery -A earnevents worker

Each handler appends a line to the Redis list ``earnevents:demo:log`` so the demo
can show what ran, where and when.
"""

from __future__ import annotations

import asyncio
import os
import time

import redis
from pydantic import BaseModel

from earnevents import (
    Event,
    define_event,
    event_handler,
    model_event_handler,
    on,
    on_event,
    on_event_cancelled,
    redisurl,
    runtime,
)

from .example_models import Reservation  # the worker loads and checks reservations: it imports the model

LOG_KEY = "earnevents:demo:log"
FIXED_KEY = "earnevents:demo:invoicing-fixed"


def _line(text: str) -> str:
    return f"{time.strftime('%H:%M:%S')} [pid {os.getpid()}] {text}"


async def log(text: str) -> None:
    """From async handlers: the worker's own asyncio Redis client, on the worker's loop."""
    await runtime.current().redis.rpush(LOG_KEY, _line(text))


_sync_redis: redis.Redis | None = None


def log_sync(text: str) -> None:
    """From plain-function handlers: an ordinary blocking client."""
    global _sync_redis
    if _sync_redis is None:
        _sync_redis = redisurl.sync_client(runtime.current().settings.redis_uri)  # any URL form
    _sync_redis.rpush(LOG_KEY, _line(text))


@event_handler("user.created")
async def send_welcome_email(event: Event) -> None:
    await asyncio.sleep(0.05)  # stands in for an SMTP call; other handlers run meanwhile
    await log(f"send_welcome_email: welcome mail to {event.data['email']}")


@event_handler("user.created")
def add_to_crm(event: Event) -> None:
    """A plain function handler: runs as a normal call in the worker."""
    log_sync(f"add_to_crm: contact {event.data['email']} added (sync handler)")


@event_handler("user.welcome_reminder")
async def remind(event: Event) -> None:
    waited = (event.timestamp.now(event.timestamp.tzinfo) - event.timestamp).total_seconds()
    await log(f"remind: reminder for {event.data['email']} ({waited:.1f}s after publish)")


@event_handler("order.paid", retry_policy={"max_retries": 2, "interval_start": 0.5, "interval_max": 1})
async def issue_invoice(event: Event) -> None:
    """Fails until the invoicing service is 'fixed', to show retries and failed jobs."""
    if not await runtime.current().redis.exists(FIXED_KEY):
        await log(f"issue_invoice: invoicing service down for order {event.data['order_id']}")
        raise ConnectionError("invoicing service unavailable")
    await log(f"issue_invoice: invoice for order {event.data['order_id']}, total {event.data['total']!r}")


@event_handler("order.paid")
async def update_stats(event: Event) -> None:
    await log(f"update_stats: +{event.data['total']} ({type(event.data['total']).__name__})")


class Shipment(BaseModel):
    order_id: int
    carrier: str


OrderShipped = define_event("order.shipped", schema=Shipment, description="An order left the warehouse")
"""A defined event: publishing one whose data does not fit ``Shipment`` is refused."""


@on(OrderShipped, sender="Warehouse")
async def tell_customer(sender: str, order_id: int, carrier: str, event: Event) -> None:
    """A receiver: runs only for order.shipped events the warehouse sent."""
    await log(f"tell_customer: order {order_id} shipped with {carrier} (sender {sender})")


@model_event_handler("Customer", "created")
async def welcome_customer(event: Event) -> None:
    signed_up = event.data["signed_up_at"]  # a datetime again, not a string
    await log(f"welcome_customer: {event.data['name']} <{event.data['email']}> signed up {signed_up:%H:%M:%S}")


@model_event_handler("Customer", "updated")
async def sync_plan(event: Event) -> None:
    await log(f"sync_plan: {event.data['name']} changed {event.metadata['changed_fields']} -> {event.data['plan']}")


@on_event("reservation_confirmed", entity_type="Reservation")
async def send_confirmation(event: Event) -> None:
    reservation: Reservation | None = await event.entity()  # loaded from MongoDB now (None if deleted since)
    guest = "(deleted)" if reservation is None else reservation.guest
    await log(f"send_confirmation: {guest}'s reservation is {event.data['status']}")


@on_event("checkin_due")
async def prepare_room(event: Event) -> None:
    late = (time.time() - event.metadata["due_at"].timestamp()) * 1000
    await log(f"prepare_room: {event.data['guest']} checks in now (fired {late:.0f} ms after its time)")


@on_event_cancelled("checkin_due")
async def release_room(event: Event) -> None:
    await log(f"release_room: check-in at {event.data['due_at']:%H:%M:%S} cancelled ({event.data['reason']})")
