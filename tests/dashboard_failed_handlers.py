"""Handlers the dashboard's browser tests run in a real worker (EARNEVENTS_HANDLER_MODULES=dashboard_failed_handlers).

``fixable`` fails (no retries, so its job is on the failed list at once) until the test
sets ``fixed:<token>``; then it records the event's id in ``handled:<token>``.
``broken`` always fails: its jobs stay on the list whatever is retried by another filter.
"""

from __future__ import annotations

from earnevents import Event, event_handler, runtime

NO_RETRIES = {"max_retries": 0}


@event_handler("dash.fixable", retry_policy=NO_RETRIES)
async def fixable(event: Event) -> None:
    client = runtime.current().redis
    token = event.data["token"]
    if not await client.exists(f"fixed:{token}"):
        raise ConnectionError(f"downstream <script>alert('error')</script> unavailable for {token}")
    await client.rpush(f"handled:{token}", event.id)


@event_handler("dash.broken", retry_policy=NO_RETRIES)
async def broken(event: Event) -> None:
    raise RuntimeError("always broken")
