"""Handlers that misbehave, for the end-to-end fault tests (imported beside e2e_handlers).

They record to ``results:<token>`` like e2e_handlers' handlers do.
"""

from __future__ import annotations

import asyncio
import time

from e2e_handlers import arecord, srecord, tries

from earnevents import Event, event_handler

ONE_RETRY = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0, "interval_max": 0.1}

_BASE_EXCEPTIONS: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
}


@event_handler("t.raises_base", retry_policy=ONE_RETRY)
async def raises_base_async(event: Event) -> None:
    await arecord(event, "raises_base_async", attempt=tries(event, "raises_base_async"))
    raise _BASE_EXCEPTIONS[event.data["kind"]]()


@event_handler("t.raises_base_sync", retry_policy=ONE_RETRY)
def raises_base_sync(event: Event) -> None:
    srecord(event, "raises_base_sync", attempt=tries(event, "raises_base_sync"))
    raise _BASE_EXCEPTIONS[event.data["kind"]]()


@event_handler("t.hangs", timeout=1, retry_policy=ONE_RETRY)
async def hangs_async(event: Event) -> None:
    await arecord(event, "hangs_async", attempt=tries(event, "hangs_async"))
    await asyncio.sleep(3600)


@event_handler("t.hangs_sync", timeout=1, retry_policy=ONE_RETRY)
def hangs_sync(event: Event) -> None:
    srecord(event, "hangs_sync", attempt=tries(event, "hangs_sync"))
    time.sleep(3600)


@event_handler("t.hangs_without_own_timeout", retry_policy={"max_retries": 0})
async def hangs_without_own_timeout(event: Event) -> None:
    """Only the worker's EARNEVENTS_HANDLER_TIMEOUT stops it."""
    await arecord(event, "hangs_without_own_timeout")
    await asyncio.sleep(3600)


@event_handler("t.slow_first_try")
def slow_first_try(event: Event) -> None:
    """Sleeps ``seconds`` on its first try only, then records that it finished."""
    n = tries(event, "slow_first_try")
    srecord(event, "slow_first_try_started", attempt=n)
    if n == 1:
        time.sleep(event.data["seconds"])
    srecord(event, "slow_first_try_done", attempt=n)


@event_handler("t.slow_first_try_async")
async def slow_first_try_async(event: Event) -> None:
    """Sleeps ``seconds`` on its first try only, then records that it finished."""
    n = tries(event, "slow_first_try_async")
    await arecord(event, "slow_first_try_async_started", attempt=n)
    if n == 1:
        await asyncio.sleep(event.data["seconds"])
    await arecord(event, "slow_first_try_async_done", attempt=n)


@event_handler("t.sleeps_sync", retry_policy={"max_retries": 0})
def sleeps_sync(event: Event) -> None:
    srecord(event, "sleeps_sync")
    time.sleep(event.data["seconds"])
