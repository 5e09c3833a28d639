"""A message back after its process died runs alone on the loop (earnevents.worker.quarantine):
under -P threads, a handler that keeps killing its process must not take the jobs beside it to
EARNEVENTS_MAX_DELIVERIES. In process, with the dispatch's fake bookkeeping."""

from __future__ import annotations

import asyncio
import time

import pytest
from test_dispatch import FakeBooks, job_for

from earnevents import Event
from earnevents.handlers import HandlerRegistry
from earnevents.worker import quarantine
from earnevents.worker.dispatch import handle_all_async
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
