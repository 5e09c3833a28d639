"""Plain ``def`` handlers' bookkeeping from the task thread: claimed before they run and
recorded right after, on the bookkeeper's blocking side, with no hop to the loop; the loop
takes over where that side fails."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from test_dispatch import FakeBooks, InlineLoop, job_for

from earnevents import Event
from earnevents.errors import HandlerTimeoutError
from earnevents.handlers import HandlerRegistry
from earnevents.worker.dispatch import handle
from earnevents.worker.jobs import COMPLETED, Outcome


class CountingLoop(InlineLoop):
    """An inline loop that counts the hops made to it (each run or submit)."""

    def __init__(self) -> None:
        super().__init__()
        self.hops = 0

    def submit(self, coro: Any) -> Any:
        self.hops += 1
        return super().submit(coro)

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        self.hops += 1
        return super().run(coro, timeout)


def wait(coro: Any) -> Any:
    """Run a FakeBooks coroutine to its end from this thread, as a blocking side would."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


class Interrupted(Exception):
    """Stands for what interrupts a task thread as an Exception (Celery's SoftTimeLimitExceeded)."""


class BlockingBooks(FakeBooks):
    """FakeBooks with a blocking side (``claim_blocking``, ``completed_blocking``) on the same state;
    ``store_down`` makes that side report a failed store, ``interrupt`` makes the claim raise."""

    def __init__(self, store_down: set[str] | None = None, interrupt: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store_down = store_down or set()
        self.interrupt = interrupt

    def claim_blocking(self, jobs):
        if self.interrupt:
            raise Interrupted("soft time limit")
        if "claim" in self.store_down:
            return None
        self.log.append("claim here")
        return wait(self.claim(jobs))

    async def claim(self, jobs):
        self.log.append("claim")
        return await super().claim(jobs)

    def completed_blocking(self, job, handler):
        if "record" in self.store_down:
            return False
        self.log.append(f"completed here {handler.rsplit('.', 1)[-1]}")
        wait(self.completed(job, handler))
        return True


@pytest.fixture
def registry() -> HandlerRegistry:
    return HandlerRegistry()


def test_a_sync_handler_is_claimed_run_and_recorded_from_the_task_thread_without_a_hop(registry):
    # Given a plain def handler and a bookkeeper with a blocking side
    books, loop = BlockingBooks(), CountingLoop()

    def plain(e):
        books.log.append("run plain")

    registry.register("e.x", plain)
    job = job_for(Event("e.x", {}))

    # When its event is handled
    [outcome] = handle(job, registry, loop, books)

    # Then it was claimed before it ran and recorded right after, all in this thread
    assert books.log == ["claim here", "claim", "run plain", "completed here plain"]
    assert outcome.error is None and outcome.recorded
    assert loop.hops == 0 and books.settled == []
    # And a redelivery skips it
    assert wait(books.claim([(job, [outcome.handler])])) == [{outcome.handler: COMPLETED}]


def test_when_the_blocking_claim_fails_the_loop_claims_and_the_handler_runs_once(registry):
    # Given a bookkeeper whose blocking side cannot reach its store for the claim
    books, loop = BlockingBooks(store_down={"claim"}), CountingLoop()
    ran: list[str] = []
    registry.register("e.x", lambda e: ran.append("ran"))

    # When the event is handled
    [outcome] = handle(job_for(Event("e.x", {})), registry, loop, books)

    # Then the claim ran on the loop (with its retries), once, and the handler once
    assert ran == ["ran"] and books.checks == 1 and loop.hops == 1
    assert outcome.error is None and outcome.recorded


def test_when_the_blocking_record_fails_settle_remembers_the_success(registry):
    # Given a bookkeeper whose blocking side cannot record a completion
    books, loop = BlockingBooks(store_down={"record"}), CountingLoop()

    def plain(e):
        pass

    handler = registry.register("e.x", plain)

    # When the handler succeeds
    [outcome] = handle(job_for(Event("e.x", {})), registry, loop, books)

    # Then its unrecorded success is settled on the loop, which remembers it
    assert outcome == Outcome(handler.name) and not outcome.recorded
    assert books.settled == [[outcome]] and loop.hops == 1


def test_an_interruption_during_the_blocking_claim_leaves_handle_and_nothing_runs(registry):
    # Given a task thread interrupted while it claims (a soft time limit)
    books, loop = BlockingBooks(interrupt=True), CountingLoop()
    ran: list[str] = []
    registry.register("e.x", lambda e: ran.append("ran"))

    # When the event is handled, Then the interruption leaves handle() (the message is handed back)
    with pytest.raises(Interrupted):
        handle(job_for(Event("e.x", {})), registry, loop, books)
    # And nothing ran, nor was claimed on the loop behind it
    assert ran == [] and books.checks == 0 and loop.hops == 0


def test_a_failing_sync_handler_is_claimed_here_and_settled_on_the_loop(registry):
    # Given a plain def handler that fails
    books, loop = BlockingBooks(), CountingLoop()

    def broken(e):
        raise KeyError("boom")

    registry.register("e.x", broken)

    # When its event is handled
    [outcome] = handle(job_for(Event("e.x", {})), registry, loop, books)

    # Then its failure is settled on the loop: the one hop
    assert isinstance(outcome.error, KeyError)
    assert books.settled == [[outcome]] and loop.hops == 1
    assert books.log == ["claim here", "claim"]


def test_beside_async_handlers_the_sync_ones_record_here_and_the_async_ones_on_the_loop(registry):
    # Given an event with an async and a plain def handler
    books, loop = LoopRecordingBooks(), CountingLoop()
    ran: list[str] = []

    async def on_loop(e):
        ran.append("async")

    def plain(e):
        ran.append("sync")

    registry.register("e.x", on_loop)
    registry.register("e.x", plain)

    # When it is handled
    outcomes = handle(job_for(Event("e.x", {})), registry, loop, books)

    # Then both ran and are recorded: the sync one from here, the async one on the loop as it
    # returned (not once the sync one is done too), in the one hop that ran it
    assert sorted(ran) == ["async", "sync"]
    assert all(o.error is None and o.recorded for o in outcomes) and len(outcomes) == 2
    assert "completed here plain" in books.log and "completed on loop on_loop" in books.log
    assert loop.hops == 1 and books.settled == []


def test_with_several_async_handlers_each_success_is_recorded_as_it_returns(registry):
    # Given an event with two async handlers, the second still running when the first returns
    books, loop = LoopRecordingBooks(), CountingLoop()
    seen: list[bool] = []

    async def quick(e):
        pass

    async def slow(e):
        await asyncio.sleep(0.05)
        seen.append(any(line.startswith("completed") and line.endswith(" quick") for line in books.log))

    registry.register("e.x", quick)
    registry.register("e.x", slow)

    # When it is handled in a prefork/solo task thread
    outcomes = handle(job_for(Event("e.x", {})), registry, loop, books)

    # Then the first was recorded while the second still ran: a worker dying then would not
    # run it again (recorded from here, it would wait for its sibling)
    assert seen == [True]
    assert all(o.error is None and o.recorded for o in outcomes) and len(outcomes) == 2


class LoopRecordingBooks(BlockingBooks):
    """BlockingBooks that log a completion recorded on the loop (``completed``) too."""

    async def completed(self, job, handler):
        self.log.append(f"completed on loop {handler.rsplit('.', 1)[-1]}")
        await super().completed(job, handler)

    def completed_blocking(self, job, handler):
        if "record" in self.store_down:
            return False
        self.log.append(f"completed here {handler.rsplit('.', 1)[-1]}")
        wait(FakeBooks.completed(self, job, handler))
        return True


def test_an_async_handler_is_claimed_and_recorded_from_the_task_thread_and_only_awaited_on_the_loop(registry):
    # Given an event whose only handler is async, in a prefork/solo task thread (the main thread)
    books, loop = LoopRecordingBooks(), CountingLoop()
    ran: list[str] = []

    async def on_loop(e):
        ran.append(e.id)

    registry.register("e.x", on_loop)
    event = Event("e.x", {})

    # When it is handled
    [outcome] = handle(job_for(event), registry, loop, books)

    # Then it was claimed and recorded from this thread, and the one hop ran the coroutine only
    assert ran == [event.id] and outcome.error is None and outcome.recorded
    assert books.log == ["claim here", "claim", "completed here on_loop"]  # "claim": the fake's own state
    assert loop.hops == 1 and books.settled == []
    # and a redelivery skips it
    assert handle(job_for(event, tag="other"), registry, loop, books) == [] and ran == [event.id]


def test_when_recording_an_async_handler_here_fails_settle_remembers_the_success(registry):
    books, loop = LoopRecordingBooks(store_down={"record"}), CountingLoop()

    async def on_loop(e):
        pass

    registry.register("e.x", on_loop)

    [outcome] = handle(job_for(Event("e.x", {})), registry, loop, books)

    assert outcome.error is None and not outcome.recorded
    assert books.settled == [[outcome]] and loop.hops == 2
    assert "completed on loop on_loop" not in books.log  # the loop did not record it on its own


def test_a_failing_async_handler_is_claimed_here_and_settled_on_the_loop(registry):
    books, loop = LoopRecordingBooks(), CountingLoop()

    async def broken(e):
        raise KeyError("x")

    registry.register("e.x", broken)

    [outcome] = handle(job_for(Event("e.x", {})), registry, loop, books)

    assert isinstance(outcome.error, KeyError)
    assert books.log == ["claim here", "claim"] and books.settled == [[outcome]] and loop.hops == 2


def test_an_async_handler_past_its_timeout_fails_on_the_loop_and_is_not_recorded(registry):
    books, loop = LoopRecordingBooks(), CountingLoop()

    async def slow(e):
        await asyncio.sleep(5)

    registry.register("e.x", slow, timeout=0.05)

    [outcome] = handle(job_for(Event("e.x", {})), registry, loop, books)

    assert isinstance(outcome.error, HandlerTimeoutError)
    assert books.log == ["claim here", "claim"] and books.settled == [[outcome]]


def test_in_one_of_many_task_threads_an_async_event_stays_on_the_loop(registry):
    # Given a -P threads task thread (not the main thread): the loop's group commit serves them all
    books, loop = LoopRecordingBooks(), CountingLoop()

    async def on_loop(e):
        pass

    registry.register("e.x", on_loop)
    result: list[Outcome] = []
    thread = threading.Thread(target=lambda: result.extend(handle(job_for(Event("e.x", {})), registry, loop, books)))
    thread.start()
    thread.join(10)

    [outcome] = result
    assert outcome.recorded and books.log == ["claim", "completed on loop on_loop"] and loop.hops == 1
