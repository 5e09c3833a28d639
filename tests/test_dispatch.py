"""The Celery-free dispatch logic: which handlers run, which policy applies, what is settled."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

import pytest

from earnevents import Event, RetryPolicy
from earnevents.failures import FailedJob
from earnevents.handlers import HandlerRegistry
from earnevents.worker.dispatch import Job, Outcome, choose_policy, handle, retry_delay, settle


class InlineLoop:
    """Runs coroutines on a private loop in this thread (the worker uses a loop thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def submit(self, coro: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        fut.set_result(self.loop.run_until_complete(coro))
        return fut

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        return self.loop.run_until_complete(coro)


class FakeBus:
    def __init__(self) -> None:
        self.enqueued: list[tuple[list[tuple[str, str]], str, float | None]] = []

    async def enqueue(self, messages, *, queue, delay=None):
        self.enqueued.append((list(messages), queue, delay))


class FakeStore:
    def __init__(self) -> None:
        self.added: list[FailedJob] = []

    async def add(self, job: FailedJob) -> None:
        self.added.append(job)


def job_for(event: Event, handler: str | None = None, attempt: int = 0, policy: RetryPolicy | None = None) -> Job:
    return Job(event=event, handler=handler, attempt=attempt, retry_policy=policy, queue="q")


@pytest.fixture
def registry() -> HandlerRegistry:
    return HandlerRegistry()


def test_policy_precedence_handler_then_message_then_worker_then_default(registry):
    own, msg, worker = RetryPolicy(max_retries=1), RetryPolicy(max_retries=2), RetryPolicy(max_retries=5)
    with_own = registry.register("e.x", lambda e: None, own)
    plain = registry.register("e.x", lambda e: 1, None)
    event = Event("e.x", {})
    assert choose_policy(with_own, job_for(event, policy=msg), worker) is own
    assert choose_policy(plain, job_for(event, policy=msg), worker) is msg
    assert choose_policy(plain, job_for(event), worker) is worker
    assert choose_policy(plain, job_for(event), None) == RetryPolicy()


def test_retry_delay_follows_the_policy_until_spent():
    policy = RetryPolicy(max_retries=3, interval_start=1, interval_step=2, interval_max=4)
    assert [retry_delay(policy, attempt) for attempt in range(5)] == [1, 3, 4, None, None]
    assert retry_delay(RetryPolicy(max_retries=0), 0) is None


def test_every_handler_runs_and_a_failure_does_not_stop_the_others(registry):
    ran: list[str] = []

    async def a_ok(e):
        ran.append("a_ok")

    async def a_bad(e):
        raise RuntimeError("a")

    def s_bad(e):
        raise KeyError("s")

    def s_ok(e):
        ran.append(f"s_ok:{threading.current_thread().name}")

    for fn in (a_ok, a_bad, s_bad, s_ok):
        registry.register("e.x", fn)
    settled: list[list[Outcome]] = []

    async def record(job, outcomes):
        settled.append(outcomes)

    outcomes = handle(job_for(Event("e.x", {})), registry, InlineLoop(), record)
    assert sorted(ran) == ["a_ok", f"s_ok:{threading.current_thread().name}"]
    errors = {o.handler.rsplit(".", 1)[-1]: type(o.error).__name__ if o.error else None for o in outcomes}
    assert errors == {"a_ok": None, "a_bad": "RuntimeError", "s_bad": "KeyError", "s_ok": None}
    assert settled == [outcomes]


def test_a_retry_message_runs_only_its_handler(registry):
    ran: list[str] = []
    registry.register("e.x", lambda e: ran.append("first"))
    second = registry.register("e.x", lambda e: ran.append("second"))
    handle(job_for(Event("e.x", {}), handler=second.name, attempt=1), registry, InlineLoop(), None)  # type: ignore[arg-type]
    assert ran == ["second"]


def test_no_handlers_means_nothing_to_settle(registry):
    assert handle(job_for(Event("nobody.listens", {})), registry, InlineLoop(), None) == []  # type: ignore[arg-type]


def test_settle_schedules_a_retry_for_the_failed_handler_only(registry):
    h = registry.register("e.x", lambda e: None)
    bus, store = FakeBus(), FakeStore()
    event = Event("e.x", {})
    job = job_for(event, policy=RetryPolicy(max_retries=2, interval_start=0.7, interval_max=1))
    outcomes = [Outcome(h.name, RuntimeError("x")), Outcome("other.ok")]
    asyncio.run(settle(job, outcomes, registry, bus, store, None))  # type: ignore[arg-type]
    [(messages, queue, delay)] = bus.enqueued
    assert queue == "q" and delay == 0.7 and len(messages) == 1 and store.added == []


def test_settle_records_the_failure_when_retries_are_spent(registry):
    h = registry.register("e.x", lambda e: None)
    bus, store = FakeBus(), FakeStore()
    event = Event("e.x", {"k": 1})
    job = job_for(event, attempt=2, policy=RetryPolicy(max_retries=2))
    asyncio.run(settle(job, [Outcome(h.name, ValueError("bad"))], registry, bus, store, None))  # type: ignore[arg-type]
    [record] = store.added
    assert bus.enqueued == []
    assert (record.event, record.handler, record.error, record.attempts) == (event, h.name, "ValueError: bad", 3)


def test_settling_the_same_failure_twice_keeps_the_same_ids(registry):
    h = registry.register("e.x", lambda e: None)
    event = Event("e.x", {})
    store1, store2, bus1, bus2 = FakeStore(), FakeStore(), FakeBus(), FakeBus()
    for bus, store in ((bus1, store1), (bus2, store2)):
        asyncio.run(
            settle(
                job_for(event, policy=RetryPolicy(max_retries=0)),
                [Outcome(h.name, ValueError())],
                registry,
                bus,
                store,
                None,
            )
        )  # type: ignore[arg-type]
    assert store1.added[0].id == store2.added[0].id


def test_unknown_handler_in_a_retry_is_recorded_without_retrying(registry):
    bus, store = FakeBus(), FakeStore()
    job = job_for(Event("e.x", {}), handler="gone.module.handler")

    async def settle_with(j, outcomes):
        await settle(j, outcomes, registry, bus, store, None)  # type: ignore[arg-type]

    handle(job, registry, InlineLoop(), settle_with)
    [record] = store.added
    assert record.handler == "gone.module.handler" and record.error.startswith("HandlerNotFoundError")
    assert bus.enqueued == []


@pytest.mark.parametrize(
    ("event", "kwargs"),
    [
        ("nope", {}),
        ({"name": "x"}, {}),
        (Event("a.b", {}).to_wire(), {"attempt": "1"}),
        (Event("a.b", {}).to_wire(), {"handler": 5}),
        (Event("a.b", {}).to_wire(), {"retry_policy": {"max_retries": -1}}),
    ],
)
def test_malformed_task_arguments_are_value_or_type_errors(event, kwargs):
    with pytest.raises((ValueError, TypeError)):
        Job.from_message(event, kwargs, "q")
