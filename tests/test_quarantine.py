"""A message back after its process died runs alone in its process (earnevents.worker.quarantine):
under -P threads, a handler that keeps killing its process must not take the jobs beside it to
EARNEVENTS_MAX_DELIVERIES. In process, with the dispatch's fake bookkeeping."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from test_dispatch import FakeBooks, job_for

from earnevents import Event
from earnevents.handlers import HandlerRegistry
from earnevents.worker import quarantine
from earnevents.worker.dispatch import handle, handle_all_async
from earnevents.worker.loop import LoopThread
from earnevents.worker.quarantine import Gate


class Spans:
    """When each block ran (loop time), to tell which overlapped."""

    def __init__(self) -> None:
        self.spans: dict[str, tuple[float, float]] = {}

    async def hold(self, name: str, seconds: float) -> None:
        start = time.monotonic()
        await asyncio.sleep(seconds)
        self.spans[name] = (start, time.monotonic())

    def overlap(self, a: str, b: str) -> bool:
        (a0, a1), (b0, b1) = self.spans[a], self.spans[b]
        return a0 < b1 and b0 < a1


async def test_alone_waits_for_the_running_and_holds_back_the_later():
    gate, spans = Gate(), Spans()

    async def run(name: str, alone: bool, seconds: float, after: float = 0) -> None:
        await asyncio.sleep(after)
        async with gate.enter(alone):
            await spans.hold(name, seconds)

    await asyncio.gather(
        run("a", False, 0.2),
        run("b", False, 0.2),
        run("alone", True, 0.2, after=0.05),
        run("later", False, 0.1, after=0.1),
    )
    assert spans.overlap("a", "b")  # the others run together
    assert not any(spans.overlap("alone", other) for other in ("a", "b", "later"))
    assert spans.spans["later"][0] >= spans.spans["alone"][1]  # it waited for the one alone


async def test_the_waits_are_bounded_so_a_hung_handler_does_not_stall_the_process(monkeypatch):
    monkeypatch.setattr(quarantine, "ALONE_WAIT", 0.2)
    gate = Gate()
    hung = asyncio.Event()

    async def hangs() -> None:
        async with gate.enter(False):
            await hung.wait()

    holder = asyncio.create_task(hangs())
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    async with gate.enter(True):  # gives up waiting for the hung one after ALONE_WAIT
        waited = time.monotonic() - t0
        async with gate.enter(False):  # nor does a later one wait for ever
            pass
    assert 0.15 < waited < 2
    hung.set()
    await holder


@pytest.fixture
def registry() -> HandlerRegistry:
    return HandlerRegistry()


def test_a_message_back_after_its_process_died_runs_alone_and_the_others_together(registry):
    spans = Spans()

    async def work(event: Event) -> None:
        await spans.hold(event.data["name"], 0.2)

    handler = registry.register("q.work", work)
    books = FakeBooks()
    books.gate = Gate()  # type: ignore[attr-defined]  # as the worker's runtime has one
    back = job_for(Event("q.work", {"name": "back"}), tag="died")
    books.claims[(back.event.id, handler.name)] = ("died", 1)  # it was running when its process died

    async def main() -> None:
        fresh = [job_for(Event("q.work", {"name": f"fresh-{i}"}), tag=f"t{i}") for i in range(3)]
        await asyncio.gather(
            *(handle_all_async([(job, [handler])], books) for job in fresh[:2]),
            _later(handle_all_async([(back, [handler])], books), 0.05),
            _later(handle_all_async([(fresh[2], [handler])], books), 0.1),
        )

    asyncio.run(main())
    assert spans.overlap("fresh-0", "fresh-1")
    assert not any(spans.overlap("back", f"fresh-{i}") for i in range(3))


async def _later(coro, seconds: float):
    await asyncio.sleep(seconds)
    return await coro


def test_from_threads_alone_waits_for_the_running_and_holds_back_the_later():
    gate, spans = Gate(), ThreadSpans()

    def run(name: str, alone: bool, seconds: float, after: float = 0) -> None:
        time.sleep(after)
        with gate.enter_here(alone):
            spans.hold(name, seconds)

    threads = [
        threading.Thread(target=run, args=args)
        for args in (("a", False, 0.2), ("b", False, 0.2), ("alone", True, 0.2, 0.05), ("later", False, 0.1, 0.1))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert spans.overlap("a", "b")
    assert not any(spans.overlap("alone", other) for other in ("a", "b", "later"))
    assert spans.spans["later"][0] >= spans.spans["alone"][1]


async def test_the_loop_and_threads_share_the_gate():
    # A sync message back after its process died, in a pool thread, waits for the loop's
    # messages; a loop message arriving meanwhile waits for it, without blocking the loop.
    gate, spans = Gate(), ThreadSpans()

    async def on_loop(name: str, seconds: float, after: float = 0) -> None:
        await asyncio.sleep(after)
        async with gate.enter(False):
            start = time.monotonic()
            await asyncio.sleep(seconds)
            spans.spans[name] = (start, time.monotonic())

    def in_thread() -> None:
        time.sleep(0.05)
        with gate.enter_here(True):
            spans.hold("alone", 0.2)

    ticks = 0

    async def ticking() -> None:  # the loop keeps running while the gate holds messages back
        nonlocal ticks
        for _ in range(20):
            await asyncio.sleep(0.02)
            ticks += 1

    await asyncio.gather(
        on_loop("loop-a", 0.2), asyncio.to_thread(in_thread), on_loop("loop-later", 0.1, after=0.1), ticking()
    )
    assert not spans.overlap("alone", "loop-a") and not spans.overlap("alone", "loop-later")
    assert spans.spans["loop-later"][0] >= spans.spans["alone"][1]
    assert ticks == 20


async def test_a_message_giving_up_its_wait_to_run_alone_holds_nobody_back():
    gate = Gate()
    async with gate.enter(False):
        waiting = asyncio.create_task(_enter_alone(gate))
        await asyncio.sleep(0.05)
        waiting.cancel()  # e.g. the worker shutting down
        with pytest.raises(asyncio.CancelledError):
            await waiting
    t0 = time.monotonic()
    async with gate.enter(False):  # not held back by a queued message that left
        pass
    assert time.monotonic() - t0 < 0.1


async def _enter_alone(gate: Gate) -> None:
    async with gate.enter(True):
        pass


class ThreadSpans(Spans):
    def hold(self, name: str, seconds: float) -> None:  # type: ignore[override]
        start = time.monotonic()
        time.sleep(seconds)
        self.spans[name] = (start, time.monotonic())


def test_a_sync_message_back_after_its_process_died_runs_alone_beside_task_threads(registry):
    spans = ThreadSpans()

    def work(event: Event) -> None:
        spans.hold(event.data["name"], 0.2)

    handler = registry.register("q.sync", work)
    books = FakeBooks()
    books.gate = Gate()  # type: ignore[attr-defined]
    back = job_for(Event("q.sync", {"name": "back"}), tag="died")
    books.claims[(back.event.id, handler.name)] = ("died", 1)
    fresh = [job_for(Event("q.sync", {"name": f"fresh-{i}"}), tag=f"t{i}") for i in range(3)]
    loop = LoopThread()
    try:
        runs = [(fresh[0], 0), (fresh[1], 0), (back, 0.05), (fresh[2], 0.1)]
        threads = [
            threading.Thread(target=_handle_later, args=(job, registry, loop, books, after)) for job, after in runs
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    finally:
        loop.stop()
    assert spans.overlap("fresh-0", "fresh-1")
    assert not any(spans.overlap("back", f"fresh-{i}") for i in range(3))


def _handle_later(job, registry, loop, books, after: float) -> None:
    time.sleep(after)
    handle(job, registry, loop, books)
