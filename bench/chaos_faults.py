"""Misbehaving handlers for `make chaos ARGS='--exit-every K --hang-every K'`.

Loaded by the chaos workers only when a fault mode is on. Each handler counts its
runs like the well-behaved ones, and misbehaves on the events the publisher marked:
``crasher`` kills its worker process (``os._exit``), ``hanger`` never returns and is
cut off by its ``timeout``. With ``--sync-faults`` the crasher is a plain ``def`` (its
messages then run in pool threads under ``-P threads``, not on the loop). Both must end as
failed-job records, never as lost events, and their sibling handlers (``first``,
``second``) must complete for the same events.
"""

from __future__ import annotations

import asyncio
import os

from earnevents import Event, event_handler

from .chaos_handlers import record, record_here

FAST = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0, "interval_max": 0.1}
HANG_TIMEOUT = 0.5


if os.environ.get("CHAOS_SYNC_FAULTS") == "1":  # `--sync-faults`: the crasher is a plain def

    @event_handler("chaos.tick", retry_policy=FAST)
    def crasher(event: Event) -> None:
        if event.data.get("exit"):
            os._exit(1)
        record_here(event, "crasher")

else:

    @event_handler("chaos.tick", retry_policy=FAST)
    async def crasher(event: Event) -> None:
        if event.data.get("exit"):
            os._exit(1)
        await record(event, "crasher")


@event_handler("chaos.tick", retry_policy=FAST, timeout=HANG_TIMEOUT)
async def hanger(event: Event) -> None:
    if event.data.get("hang"):
        await asyncio.sleep(3600)
    await record(event, "hanger")
