"""The Celery-free dispatch logic: which handlers run, which policy applies, what is settled."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest

from earnevents import Event, RetryPolicy, message
from earnevents.failures import FailedJob
from earnevents.handlers import HandlerRegistry
from earnevents.retry import RetryCaps
from earnevents.worker.dispatch import (
    SettleFailed,
    choose_policy,
    handle,
    handle_message,
    retry_delay,
    settle_failures,
)
from earnevents.worker.jobs import COMPLETED, HELD, Job, Outcome


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


class FakeBooks:
    """Claims and completions in memory, as ``worker.completions`` keeps them in Redis;
    records every settle call."""

    max_deliveries = 5

    def __init__(self, done: set[str] | None = None, settle_failures_with=None) -> None:
        self.done = set(done or ())  # handlers completed for every event
        self.done_for: dict[str, set[str]] = {}  # event id -> handlers done (packed messages)
        self.claims: dict[tuple[str, str], tuple[str, int]] = {}  # (event id, handler) -> (tag, starts)
        self.log: list[str] = []  # starts recorded and handlers run, in order
        self.settled: list[list[Outcome]] = []
        self.checks = 0
        self._failures = settle_failures_with

    async def claim(self, jobs):
        self.checks += 1
        results = []
        for job, handlers in jobs:
            states = {}
            for name in handlers:
                key = (job.event.id, name)
                if name in self.done or name in self.done_for.get(job.event.id, set()):
                    states[name] = COMPLETED
                elif key in self.claims and self.claims[key][0] != job.copy_id:
                    states[name] = HELD
                elif key in self.claims:  # our own claim, back after the worker died
                    states[name] = self.claims[key][1] + 1
                else:
                    self.claims[key] = (job.copy_id, 1)
                    states[name] = 1
            results.append(states)
        return results

    async def started(self, job, handler, starts):
        self.log.append(f"start {handler.rsplit('.', 1)[-1]} {starts}")
        self.claims[(job.event.id, handler)] = (job.copy_id, starts)

    async def completed(self, job, handler):
        self.done_for.setdefault(job.event.id, set()).add(handler)
        self.claims.pop((job.event.id, handler), None)

    async def settle(self, job, outcomes):
        self.settled.append(outcomes)
        for o in outcomes:
            self.claims.pop((job.event.id, o.handler), None)
            if o.error is None:
                self.done_for.setdefault(job.event.id, set()).add(o.handler)
        if self._failures is not None:
            await self._failures(job, [o for o in outcomes if o.error is not None])


def job_for(
    event: Event, handler: str | None = None, attempt: int = 0, policy: RetryPolicy | None = None, tag: str = "tag"
) -> Job:
    return Job(event=event, handler=handler, attempt=attempt, retry_policy=policy, queue="q", copy_id=tag)


@pytest.fixture
def registry() -> HandlerRegistry:
    return HandlerRegistry()


def test_the_registry_lists_every_handler_in_registration_order(registry):
    def first(e):
        pass

    def second(e):
        pass

    a = registry.register("e.x", first)
    b = registry.register("e.y", second)
    assert registry.handlers() == [a, b]
    registry.unregister(a.name)
    assert registry.handlers() == [b]


def test_policy_precedence_handler_then_message_then_worker_then_default(registry):
    own, msg, worker = RetryPolicy(max_retries=1), RetryPolicy(max_retries=2), RetryPolicy(max_retries=5)

    def own_handler(e):
        pass

    def plain_handler(e):
        pass

    with_own = registry.register("e.x", own_handler, own)
    plain = registry.register("e.x", plain_handler, None)
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
    books = FakeBooks()
    outcomes = handle(job_for(Event("e.x", {})), registry, InlineLoop(), books)
    assert sorted(ran) == ["a_ok", f"s_ok:{threading.current_thread().name}"]
    errors = {o.handler.rsplit(".", 1)[-1]: type(o.error).__name__ if o.error else None for o in outcomes}
    assert errors == {"a_ok": None, "a_bad": "RuntimeError", "s_bad": "KeyError", "s_ok": None}
    assert books.settled == [outcomes]


def test_a_retry_message_runs_only_its_handler(registry):
    ran: list[str] = []

    def first(e):
        ran.append("first")

    def second_handler(e):
        ran.append("second")

    registry.register("e.x", first)
    second = registry.register("e.x", second_handler)
    handle(job_for(Event("e.x", {}), handler=second.name, attempt=1), registry, InlineLoop(), FakeBooks())
    assert ran == ["second"]


def test_no_handlers_means_nothing_to_settle(registry):
    books = FakeBooks()
    assert handle(job_for(Event("nobody.listens", {})), registry, InlineLoop(), books) == []
    assert books.settled == []


def test_settle_schedules_a_retry_for_the_failed_handler_only(registry):
    h = registry.register("e.x", lambda e: None)
    bus, store = FakeBus(), FakeStore()
    event = Event("e.x", {})
    job = job_for(event, policy=RetryPolicy(max_retries=2, interval_start=0.7, interval_max=1))
    outcomes = [Outcome(h.name, RuntimeError("x")), Outcome("other.ok")]
    asyncio.run(settle_failures(job, outcomes, registry, bus, store, None))  # type: ignore[arg-type]
    [(messages, queue, delay)] = bus.enqueued
    assert queue == "q" and delay == 0.7 and len(messages) == 1 and store.added == []


def test_settle_records_the_failure_when_retries_are_spent(registry):
    h = registry.register("e.x", lambda e: None)
    bus, store = FakeBus(), FakeStore()
    event = Event("e.x", {"k": 1})
    job = job_for(event, attempt=2, policy=RetryPolicy(max_retries=2))
    asyncio.run(settle_failures(job, [Outcome(h.name, ValueError("bad"))], registry, bus, store, None))  # type: ignore[arg-type]
    [record] = store.added
    assert bus.enqueued == []
    assert (record.event, record.handler, record.error, record.attempts) == (event, h.name, "ValueError: bad", 3)


def test_settling_the_same_failure_twice_keeps_the_same_ids(registry):
    h = registry.register("e.x", lambda e: None)
    event = Event("e.x", {})
    store1, store2, bus1, bus2 = FakeStore(), FakeStore(), FakeBus(), FakeBus()
    for bus, store in ((bus1, store1), (bus2, store2)):
        asyncio.run(
            settle_failures(
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

    async def failures(j, failed):
        await settle_failures(j, failed, registry, bus, store, None)  # type: ignore[arg-type]

    handle(job, registry, InlineLoop(), FakeBooks(settle_failures_with=failures))
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


def test_handlers_completed_before_are_skipped_and_the_rest_run(registry):
    ran: list[str] = []

    def first_handler(e):
        ran.append("first")

    def second_handler(e):
        ran.append("second")

    first = registry.register("e.x", first_handler)
    registry.register("e.x", second_handler)
    books = FakeBooks(done={first.name})
    outcomes = handle(job_for(Event("e.x", {})), registry, InlineLoop(), books)
    assert ran == ["second"] and len(outcomes) == 1


def test_handlers_completed_before_are_told_to_the_event_log(registry, monkeypatch):
    # (the worker that completed them may have died before its log writes left its buffer)
    from earnevents.worker import eventlog as eventlog_hooks

    told: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(eventlog_hooks, "completed_before", lambda job, names: told.append((job.event.id, names)))

    def done_handler(e):
        pass

    def other_handler(e):
        pass

    done = registry.register("e.x", done_handler)
    registry.register("e.x", other_handler)
    event = Event("e.x", {})
    handle(job_for(event), registry, InlineLoop(), FakeBooks(done={done.name}))
    assert told == [(event.id, [done.name])]


def test_a_redelivered_message_reruns_nothing_that_completed(registry):
    ran: list[str] = []

    async def ok(e):
        ran.append("ok")

    def bad(e):
        ran.append("bad")
        raise RuntimeError

    registry.register("e.x", ok)
    registry.register("e.x", bad)
    books, job = FakeBooks(), job_for(Event("e.x", {}))
    handle(job, registry, InlineLoop(), books)
    handle(job, registry, InlineLoop(), books)  # the same message again
    assert ran == ["ok", "bad", "bad"]


def test_handlers_see_their_job_through_current_job(registry):
    import earnevents

    seen: list[earnevents.JobContext] = []

    async def a(e):
        seen.append(earnevents.current_job())

    def s(e):
        seen.append(earnevents.current_job())

    registry.register("e.x", a)
    registry.register("e.x", s)
    event = Event("e.x", {})
    handle(job_for(event, attempt=2), registry, InlineLoop(), FakeBooks())
    retry = handle(job_for(event, attempt=3), registry, InlineLoop(), FakeBooks())
    assert len(retry) == 2
    assert {c.handler for c in seen} == {
        f"{__name__}.{n}"
        for n in (
            "test_handlers_see_their_job_through_current_job.<locals>.a",
            "test_handlers_see_their_job_through_current_job.<locals>.s",
        )
    }
    assert [c.attempt for c in seen] == [3, 3, 4, 4] or sorted(c.attempt for c in seen) == [3, 3, 4, 4]
    by_handler: dict[str, set[str]] = {}
    for c in seen:
        by_handler.setdefault(c.handler, set()).add(c.job_id)
    assert all(len(ids) == 1 for ids in by_handler.values())  # stable across tries
    assert len({next(iter(ids)) for ids in by_handler.values()}) == 2  # distinct per handler
    assert all(c.event_id == event.id and c.queue == "q" for c in seen)
    with pytest.raises(LookupError):
        earnevents.current_job()


def test_two_different_functions_cannot_share_a_handler_name(registry):
    registry.register("e.x", lambda e: None)
    with pytest.raises(ValueError, match="name of its own"):
        registry.register("e.x", lambda e: None)


def test_importing_the_same_definition_again_replaces_it(registry):
    def handler(e):
        pass

    registry.register("e.x", handler)
    registry.register("e.x", handler)
    assert len(registry.for_event("e.x")) == 1


def test_success_is_recorded_at_once_and_settle_catches_up_when_that_fails(registry):
    def ok(e):
        pass

    registry.register("e.x", ok)

    class FlakyBooks(FakeBooks):
        async def completed(self, job, handler):
            raise ConnectionError("redis blinked")

    books = FakeBooks()
    [outcome] = handle(job_for(Event("e.x", {})), registry, InlineLoop(), books)
    assert outcome.recorded and books.settled == []  # nothing left to settle

    flaky = FlakyBooks()
    [outcome] = handle(job_for(Event("e.x", {})), registry, InlineLoop(), flaky)
    assert not outcome.recorded and flaky.settled == [[outcome]]


def test_a_single_async_handler_runs_without_leaking_its_job_context(registry):
    import earnevents
    from earnevents.worker.running import run_async

    seen: list[str] = []

    async def only(e):
        seen.append(earnevents.current_job().handler)

    registry.register("e.x", only)
    job = job_for(Event("e.x", {}))

    async def run_and_look() -> tuple[list[Outcome], bool]:
        outcomes = await run_async(registry.for_event("e.x"), job, FakeBooks())
        try:
            earnevents.current_job()
        except LookupError:
            return outcomes, False
        return outcomes, True

    outcomes, leaked = InlineLoop().run(run_and_look())
    assert [o.error for o in outcomes] == [None] and seen == [outcomes[0].handler]
    assert not leaked


def test_a_single_handler_raising_cancelled_error_is_a_failure_not_a_crash(registry):
    async def cancels(e):
        raise asyncio.CancelledError()

    registry.register("e.x", cancels)
    books = FakeBooks()
    outcomes = handle(job_for(Event("e.x", {})), registry, InlineLoop(), books)
    assert len(outcomes) == 1 and isinstance(outcomes[0].error, asyncio.CancelledError)
    assert books.settled == [outcomes]  # settled (retried or recorded), like any failure


def test_a_packed_message_runs_every_events_async_handlers_at_once_with_one_check(registry):
    running, most = 0, 0

    async def slow(e):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1

    registry.register("e.x", slow)
    books = FakeBooks()
    jobs = [job_for(Event("e.x", {"i": i})) for i in range(20)]
    outcomes = handle_message(jobs, registry, InlineLoop(), books)
    assert len(outcomes) == 20 and all(o.error is None for o in outcomes)
    assert most == 20  # all at once, not one after the other
    assert books.checks == 1  # one completion check for the whole message


def test_a_packed_message_skips_only_the_jobs_completed_before(registry):
    ran: list[tuple[int, str]] = []

    async def a(e):
        ran.append((e.data["i"], "a"))

    async def b(e):
        ran.append((e.data["i"], "b"))

    registry.register("e.x", a)
    registry.register("e.x", b)
    jobs = [job_for(Event("e.x", {"i": i})) for i in range(3)]
    books = FakeBooks()
    books.done_for[jobs[1].event.id] = {registry.for_event("e.x")[0].name}  # a completed for event 1
    handle_message(jobs, registry, InlineLoop(), books)
    assert sorted(ran) == [(0, "a"), (0, "b"), (1, "b"), (2, "a"), (2, "b")]


def test_in_a_packed_message_a_failing_job_is_settled_alone_and_sync_events_run_too(registry):
    ran: list[str] = []

    async def flaky(e):
        if e.data["i"] == 1:
            raise RuntimeError("boom")
        ran.append(f"async {e.data['i']}")

    def plain(e):
        ran.append(f"sync {e.data['i']}")

    registry.register("e.x", flaky)
    registry.register("e.s", plain)
    jobs = [job_for(Event("e.x", {"i": 0})), job_for(Event("e.x", {"i": 1})), job_for(Event("e.s", {"i": 2}))]
    books = FakeBooks()
    outcomes = handle_message(jobs, registry, InlineLoop(), books)
    assert sorted(ran) == ["async 0", "sync 2"]
    assert [str(o.error) for o in outcomes if o.error is not None] == ["boom"]
    assert [[str(o.error) for o in settled] for settled in books.settled] == [["boom"]]  # only event 1's job


def test_when_settling_one_job_of_a_packed_message_fails_the_others_still_finish_first(registry):
    finished: list[int] = []

    async def handler(e):
        if e.data["i"] == 0:
            raise RuntimeError("boom")
        await asyncio.sleep(0.01)
        finished.append(e.data["i"])

    async def cannot_settle(job, failed):
        raise ConnectionError("redis went away")

    registry.register("e.x", handler)
    jobs = [job_for(Event("e.x", {"i": i})) for i in range(4)]
    with pytest.raises(SettleFailed, match="redis went away"):
        handle_message(jobs, registry, InlineLoop(), FakeBooks(settle_failures_with=cannot_settle))
    assert sorted(finished) == [1, 2, 3]


# --- handlers that misbehave ---------------------------------------------------------


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt, GeneratorExit])
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_handler_raising_a_base_exception_is_a_failure_like_any_other(registry, exc_type, kind):
    # Given a handler that raises SystemExit, KeyboardInterrupt or GeneratorExit
    async def raising_async(e):
        raise exc_type()

    def raising_sync(e):
        raise exc_type()

    registry.register("e.x", raising_async if kind == "async" else raising_sync)
    books = FakeBooks()
    # When its event is handled
    outcomes = handle(job_for(Event("e.x", {})), registry, InlineLoop(), books)
    # Then it is a failure, settled (retried or recorded), not a crash
    assert len(outcomes) == 1 and isinstance(outcomes[0].error, exc_type)
    assert books.settled == [outcomes]


def test_a_loop_thread_survives_a_system_exit_escaping_a_task():
    from earnevents.worker.loop import LoopThread

    # Given the worker's loop thread
    loop = LoopThread()
    try:

        async def escapes():
            raise SystemExit(3)

        # When a coroutine lets SystemExit escape (the loop re-raises it from run_forever)
        with pytest.raises(SystemExit):
            loop.run(escapes(), timeout=5)

        # Then the loop still runs the next coroutine
        async def fine():
            return "still here"

        assert loop.run(fine(), timeout=5) == "still here"
    finally:
        loop.stop()


def test_an_async_handler_past_its_timeout_fails_with_handler_timeout_error(registry):
    from earnevents import HandlerTimeoutError

    # Given an async handler with timeout=0.2 that never returns, and a sibling
    async def hangs(e):
        await asyncio.sleep(3600)

    async def sibling(e):
        await asyncio.sleep(0.01)

    registry.register("e.x", hangs, timeout=0.2)
    registry.register("e.x", sibling)
    books = FakeBooks()
    started = time.monotonic()
    # When its event is handled
    outcomes = handle(job_for(Event("e.x", {})), registry, InlineLoop(), books)
    # Then it fails with HandlerTimeoutError after about 0.2 s; the sibling succeeds
    assert time.monotonic() - started < 2
    errors = {o.handler.rsplit(".", 1)[-1]: o.error for o in outcomes}
    assert isinstance(errors["hangs"], HandlerTimeoutError) and "0.2s" in str(errors["hangs"])
    assert errors["sibling"] is None
    assert books.settled == [outcomes]


def test_a_single_async_handler_past_its_timeout_leaves_its_task_uncancelled(registry):
    from earnevents import HandlerTimeoutError
    from earnevents.worker.running import run_async

    # Given a single async handler that times out
    async def hangs(e):
        await asyncio.sleep(3600)

    registry.register("e.x", hangs, timeout=0.1)

    async def run_then_await() -> tuple[list[Outcome], str]:
        outcomes = await run_async(registry.for_event("e.x"), job_for(Event("e.x", {})), FakeBooks())
        await asyncio.sleep(0)  # would raise CancelledError if the timeout's cancel leaked
        return outcomes, "went on"

    # When it runs in the caller's task, Then the caller goes on normally afterwards
    outcomes, after = InlineLoop().run(run_then_await())
    assert isinstance(outcomes[0].error, HandlerTimeoutError) and after == "went on"


def test_an_async_handler_that_swallows_the_timeout_and_returns_is_a_success(registry):
    # Given a handler that catches the timeout's cancellation and finishes anyway
    async def stubborn(e):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

    registry.register("e.x", stubborn, timeout=0.1)
    # When it runs, Then its result stands (it cannot be stopped from outside) and nothing leaks
    [outcome] = handle(job_for(Event("e.x", {})), registry, InlineLoop(), FakeBooks())
    assert outcome.error is None


@pytest.mark.timeout(0)  # pytest-timeout's own SIGALRM would otherwise make the handler use a thread
def test_a_sync_handler_past_its_timeout_is_interrupted_in_the_main_thread(registry):
    from earnevents import HandlerTimeoutError

    # Given a plain def handler with timeout=0.2 that sleeps for an hour, run in the main thread
    finished: list[bool] = []

    def hangs(e):
        time.sleep(3600)
        finished.append(True)

    registry.register("e.x", hangs, timeout=0.2)
    started = time.monotonic()
    # When its event is handled
    [outcome] = handle(job_for(Event("e.x", {})), registry, InlineLoop(), FakeBooks())
    # Then SIGALRM interrupted it: a HandlerTimeoutError, and the handler did not go on
    assert isinstance(outcome.error, HandlerTimeoutError)
    assert time.monotonic() - started < 2 and finished == []
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL and signal.getitimer(signal.ITIMER_REAL) == (0, 0)


def test_a_sync_handler_past_its_timeout_outside_the_main_thread_is_abandoned(registry):
    from earnevents import HandlerTimeoutError

    # Given a plain def handler with timeout=0.2 blocking until released, run by a thread pool's thread
    release = threading.Event()

    def blocks(e):
        release.wait(30)

    registry.register("e.x", blocks, timeout=0.2)
    result: list[list[Outcome]] = []
    worker = threading.Thread(
        target=lambda: result.append(handle(job_for(Event("e.x", {})), registry, InlineLoop(), FakeBooks()))
    )
    started = time.monotonic()
    # When its event is handled there
    worker.start()
    worker.join(10)
    release.set()
    # Then the wait ends after the timeout with HandlerTimeoutError
    [[outcome]] = result
    assert isinstance(outcome.error, HandlerTimeoutError) and time.monotonic() - started < 5


def test_the_workers_timeout_applies_to_handlers_without_their_own(registry):
    from earnevents import HandlerTimeoutError

    # Given handlers without a timeout of their own and a worker timeout of 0.2 s
    async def hangs(e):
        await asyncio.sleep(3600)

    async def own_is_longer(e):
        await asyncio.sleep(0.4)

    registry.register("e.x", hangs)
    registry.register("e.x", own_is_longer, timeout=5)
    job = Job(event=Event("e.x", {}), handler=None, attempt=0, retry_policy=None, queue="q", handler_timeout=0.2)
    # When the event is handled
    outcomes = handle(job, registry, InlineLoop(), FakeBooks())
    # Then the worker's timeout stops the first; the handler's own timeout wins for the second
    errors = {o.handler.rsplit(".", 1)[-1]: o.error for o in outcomes}
    assert isinstance(errors["hangs"], HandlerTimeoutError) and errors["own_is_longer"] is None


def test_a_sync_wrapper_returning_a_coroutine_is_awaited_on_the_loop(registry):
    ran: list[str] = []

    async def inner(e):
        ran.append(threading.current_thread().name)

    async def inner_fails(e):
        raise RuntimeError("inside the coroutine")

    # Given plain def wrappers that return coroutines (a common decorator pattern)
    def wrapper(e):
        return inner(e)

    def failing_wrapper(e):
        return inner_fails(e)

    registry.register("e.x", wrapper)
    registry.register("e.x", failing_wrapper)
    books = FakeBooks()
    # When the event is handled
    outcomes = handle(job_for(Event("e.x", {})), registry, InlineLoop(), books)
    # Then the coroutines ran; a failure inside one is the wrapper's failure
    assert ran == [threading.current_thread().name]  # InlineLoop runs the loop in this thread
    errors = {o.handler.rsplit(".", 1)[-1]: o.error for o in outcomes}
    assert errors["wrapper"] is None and str(errors["failing_wrapper"]) == "inside the coroutine"
    assert set().union(*books.done_for.values()) == {registry.for_event("e.x")[0].name}


def test_a_sync_handler_returning_an_awaitable_object_has_it_awaited(registry):
    awaited: list[bool] = []

    class Awaitable:
        def __await__(self):
            awaited.append(True)
            yield from asyncio.sleep(0).__await__()

    def returns_awaitable(e):
        return Awaitable()

    registry.register("e.x", returns_awaitable)
    [outcome] = handle(job_for(Event("e.x", {})), registry, InlineLoop(), FakeBooks())
    assert outcome.error is None and awaited == [True]


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(0, ValueError), (-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("1", TypeError)],
)
def test_a_bad_handler_timeout_is_refused_when_decorating(timeout, error):
    import earnevents

    with pytest.raises(error, match="timeout must be a"):
        earnevents.event_handler("e.x", timeout=timeout)
    with pytest.raises(error, match="timeout must be a"):
        earnevents.model_event_handler("User", "created", timeout=timeout)


def test_a_bool_handler_timeout_is_a_type_error(registry):
    with pytest.raises(TypeError, match="timeout must be a number"):
        registry.register("e.x", lambda e: None, timeout=True)


def test_a_handler_timeout_is_kept_on_the_handler(registry):
    def handler(e):
        pass

    assert registry.register("e.x", handler, timeout=2).timeout == 2.0


def test_a_retry_naming_a_handler_of_another_event_is_malformed(registry):
    # Given a handler subscribed to e.other
    def other_handler(e):
        pass

    other = registry.register("e.other", other_handler)
    wire = Event("e.x", {}).to_wire()
    # When a retry message for an e.x event names it, Then it is malformed (not run)
    with pytest.raises(ValueError, match=r"subscribed to 'e\.other'"):
        Job.from_message(wire, {"handler": other.name, "attempt": 1}, "q", registry)
    # while a handler of this event, or one this worker lacks, is accepted
    assert Job.from_message(Event("e.other", {}).to_wire(), {"handler": other.name}, "q", registry)
    assert Job.from_message(wire, {"handler": "gone.module.handler"}, "q", registry).handler == "gone.module.handler"


def test_a_failure_whose_str_raises_is_still_recorded(registry):
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no str for you")

    h = registry.register("e.x", lambda e: None)
    store = FakeStore()
    job = job_for(Event("e.x", {}), policy=RetryPolicy(max_retries=0))
    asyncio.run(settle_failures(job, [Outcome(h.name, Unprintable())], registry, FakeBus(), store, None))  # type: ignore[arg-type]
    [record] = store.added
    assert record.error.startswith("Unprintable: ") and record.traceback


def test_a_system_exit_from_the_process_own_termination_passes_through(registry):
    from earnevents.worker import running

    # Given a pool process whose terminate handler has fired (it raises SystemExit to exit)
    def interrupted(e):
        raise SystemExit(-241)

    registry.register("e.x", interrupted)
    running.on_termination(lambda: True)
    try:
        # When that SystemExit surfaces in a sync handler, Then it is not the handler's failure
        with pytest.raises(SystemExit):
            handle(job_for(Event("e.x", {})), registry, InlineLoop(), FakeBooks())
    finally:
        running.on_termination(lambda: False)


def test_when_the_task_thread_is_interrupted_the_async_handlers_beside_it_are_cancelled(registry):
    from earnevents.worker import running
    from earnevents.worker.loop import LoopThread

    # Given an async handler still running on the loop while a sync sibling is interrupted by
    # the process' termination (as Celery's soft time limit or a SIGTERM interrupts the task)
    started, finished = threading.Event(), threading.Event()

    async def slow(e):
        started.set()
        await asyncio.sleep(2)
        finished.set()

    def interrupted(e):
        started.wait(5)
        raise SystemExit(-241)

    registry.register("e.x", slow)
    registry.register("e.x", interrupted)
    loop = LoopThread()
    running.on_termination(lambda: True)
    try:
        # When the interruption leaves handle()
        with pytest.raises(SystemExit):
            handle(job_for(Event("e.x", {})), registry, loop, FakeBooks())
        # Then the async handler was cancelled: it never finishes behind the task's back
        assert not finished.wait(3)
    finally:
        running.on_termination(lambda: False)
        loop.stop()


def test_a_loop_thread_goes_on_when_a_handler_stops_its_loop():
    from earnevents.worker.loop import LoopThread

    # Given the worker's loop thread
    loop = LoopThread()
    try:

        async def stops_the_loop():
            asyncio.get_running_loop().stop()

        # When a coroutine on it stops the loop
        loop.run(stops_the_loop(), timeout=5)

        # Then the loop still runs the next coroutine
        async def fine():
            return "still here"

        assert loop.run(fine(), timeout=5) == "still here"
    finally:
        loop.stop()


def test_a_job_another_copy_of_the_message_runs_is_skipped_and_its_siblings_run(registry):
    ran: list[str] = []

    async def busy(e):
        ran.append("busy")

    def free(e):
        ran.append("free")

    held = registry.register("e.x", busy)
    registry.register("e.x", free)
    event = Event("e.x", {})
    books = FakeBooks()
    books.claims[(event.id, held.name)] = ("first-copy", 1)  # the first copy is running it
    outcomes = handle(job_for(event, tag="second-copy"), registry, InlineLoop(), books)
    assert ran == ["free"] and [o.error for o in outcomes] == [None]
    assert books.claims[(event.id, held.name)] == ("first-copy", 1)  # still the first copy's


def test_the_same_message_redelivered_after_its_worker_died_runs_the_job_and_counts_the_delivery(registry):
    import earnevents

    seen: list[int] = []

    def handler(e):
        seen.append(earnevents.current_job().deliveries)

    h = registry.register("e.x", handler)
    event = Event("e.x", {})
    books = FakeBooks()
    books.claims[(event.id, h.name)] = ("tag", 2)  # started in two deliveries of this message, never settled
    handle(job_for(event, tag="tag"), registry, InlineLoop(), books)
    handle(job_for(Event("e.x", {})), registry, InlineLoop(), books)  # a fresh event: first delivery
    assert seen == [3, 1]


def test_a_job_that_died_on_every_delivery_is_recorded_once_as_lost_and_its_siblings_run(registry):
    ran: list[str] = []

    def killer(e):
        ran.append("killer")

    async def sibling(e):
        ran.append("sibling")

    k = registry.register("e.x", killer)
    registry.register("e.x", sibling)
    event = Event("e.x", {})
    bus, store = FakeBus(), FakeStore()

    async def failures(j, failed):
        await settle_failures(j, failed, registry, bus, store, RetryPolicy(max_retries=3))  # type: ignore[arg-type]

    books = FakeBooks(settle_failures_with=failures)
    books.claims[(event.id, k.name)] = ("tag", books.max_deliveries)  # its worker died in all 5 starts
    outcomes = handle(job_for(event, tag="tag"), registry, InlineLoop(), books)
    assert ran == ["sibling"]  # the killer is not run a sixth time
    [record] = store.added
    assert record.handler == k.name and record.attempts == 1
    assert record.error.startswith("WorkerLostError: the worker process died while running this handler")
    assert "each of the 5 times it started" in record.error
    assert bus.enqueued == []  # final: retrying would only kill more processes
    assert sorted(o.error is None for o in outcomes) == [False, True]
    assert (event.id, k.name) not in books.claims  # settled: the claim is released


def test_a_packed_message_claims_all_its_jobs_at_once_and_skips_held_and_dead_ones(registry):
    ran: list[int] = []

    async def handler(e):
        ran.append(e.data["i"])

    h = registry.register("e.x", handler)
    jobs = [job_for(Event("e.x", {"i": i}), tag="packed") for i in range(4)]
    books = FakeBooks()
    books.claims[(jobs[1].event.id, h.name)] = ("another-copy", 1)
    books.claims[(jobs[2].event.id, h.name)] = ("packed", books.max_deliveries)
    outcomes = handle_message(jobs, registry, InlineLoop(), books)
    assert sorted(ran) == [0, 3] and books.checks == 1
    assert [type(o.error).__name__ for o in outcomes if o.error is not None] == ["WorkerLostError"]


def test_jobs_taken_over_from_a_delivery_that_died_run_one_at_a_time_after_the_fresh_ones(registry):
    running: list[str] = []
    overlaps: list[list[str]] = []
    books = FakeBooks()

    def tracked(name):
        async def handler(e):
            books.log.append(f"run {name}")
            running.append(name)
            overlaps.append(list(running))
            await asyncio.sleep(0.01)
            running.remove(name)

        handler.__name__ = handler.__qualname__ = name
        return handler

    hs = {name: registry.register("e.x", tracked(name)) for name in ("twice", "once", "fresh")}
    event = Event("e.x", {})
    books.claims[(event.id, hs["twice"].name)] = ("tag", 2)  # cut short in two deliveries
    books.claims[(event.id, hs["once"].name)] = ("tag", 1)  # cut short in one
    outcomes = handle(job_for(event, tag="tag"), registry, InlineLoop(), books)
    assert [o.error for o in outcomes] == [None, None, None]
    # The fresh job first; then fewest starts first, each start recorded before it runs
    assert books.log == ["run fresh", "start once 2", "run once", "start twice 3", "run twice"]
    assert all(len(o) == 1 for o in overlaps)  # never two at once


def test_a_packed_message_back_after_its_worker_died_runs_the_cut_short_jobs_one_at_a_time(registry):
    running, most = 0, 0

    async def handler(e):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1

    h = registry.register("e.x", handler)
    jobs = [job_for(Event("e.x", {"i": i}), tag="packed") for i in range(5)]
    books = FakeBooks()
    for job in jobs:
        books.claims[(job.event.id, h.name)] = ("packed", 1)
    outcomes = handle_message(jobs, registry, InlineLoop(), books)
    assert len(outcomes) == 5 and all(o.error is None for o in outcomes)
    assert most == 1 and books.log == ["start handler 2"] * 5


# --- the worker's caps on a message's retry policy -----------------------------------


def test_a_publishers_policy_is_capped_by_the_worker_and_its_retries_carry_the_capped_one(registry):
    # Given a worker allowing 2 retries at least 0.25 s apart, and a handler without a policy of its own
    h = registry.register("e.x", lambda e: None)
    caps = RetryCaps(max_retries=2, min_interval=0.25)
    wire = Event("e.x", {}).to_wire()
    absurd = {"max_retries": 10**12, "interval_start": 0, "interval_step": 0, "interval_max": 0}
    # When a message asks for 10**12 retries at 0 s
    job = Job.from_message(wire, {"retry_policy": absurd}, "q", registry, retry_caps=caps)
    # Then the effective policy is the capped one
    policy = choose_policy(h, job, None)
    assert (policy.max_retries, policy.interval_start, policy.interval_max) == (2, 0.25, 0.25)
    assert [retry_delay(policy, attempt) for attempt in range(3)] == [0.25, 0.25, None]
    # And the retry it schedules waits 0.25 s and carries the capped policy on
    bus, store = FakeBus(), FakeStore()
    asyncio.run(settle_failures(job, [Outcome(h.name, RuntimeError("x"))], registry, bus, store, None))  # type: ignore[arg-type]
    [([(_, _, payload)], _, delay)] = bus.enqueued
    assert delay == 0.25
    assert message.parse(payload)[1]["retry_policy"]["max_retries"] == 2
    # And after the capped number of tries the failure is recorded, not retried
    last = Job.from_message(wire, {"retry_policy": absurd, "attempt": 2}, "q", registry, retry_caps=caps)
    asyncio.run(settle_failures(last, [Outcome(h.name, RuntimeError("x"))], registry, bus, store, None))  # type: ignore[arg-type]
    assert len(bus.enqueued) == 1 and [r.attempts for r in store.added] == [3]
