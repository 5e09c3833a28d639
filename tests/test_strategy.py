"""The task strategy's hand-off (earnevents.worker.strategy), in process: which requests go to
the loop and which to the pool, how a request run on the loop is completed, and that the
threads pool's stop waits for those runs. End to end: tests/test_loop_handoff_e2e.py."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from celery.concurrency.thread import TaskPool

from earnevents.worker.strategy import _HandOff, _runs_of


class FakeRequest:
    def __init__(self, revoked: bool = False) -> None:
        self.id = "task-1"
        self.name = "earnevents.dispatch"
        self._revoked = revoked
        self.calls: list[tuple[Any, ...]] = []

    def revoked(self) -> bool:
        return self._revoked

    def on_accepted(self, pid: int, at: float) -> None:
        self.calls.append(("accepted",))

    def on_success(self, failed_retval_runtime: tuple[bool, Any, float]) -> None:
        failed, retval, _ = failed_retval_runtime
        self.calls.append(("succeeded", failed, retval))

    def reject(self, requeue: bool = False) -> None:
        self.calls.append(("rejected", requeue))


class FakeConsumer:
    def __init__(self) -> None:
        self.to_pool: list[Any] = []
        self.hostname = "w@h"

    def on_task_request(self, req: Any) -> None:
        self.to_pool.append(req)


def hand_off(run: Future[Any] | None, runs: Any = None) -> tuple[_HandOff, FakeConsumer, list[Any]]:
    consumer = FakeConsumer()
    offered: list[Any] = []

    def taker(req: Any) -> Any:
        offered.append(req)
        return None if run is None else (lambda: run)

    return _HandOff(consumer, taker, runs or _runs_of(TaskPool(limit=1))), consumer, offered


def test_the_consumer_is_seen_through_except_for_its_hand_off():
    handoff, consumer, _ = hand_off(None)
    assert handoff.hostname == "w@h"
    assert handoff.on_task_request != consumer.on_task_request


def test_a_request_the_taker_declines_goes_to_the_pool_untouched():
    handoff, consumer, offered = hand_off(None)
    req = FakeRequest()
    handoff.on_task_request(req)
    assert consumer.to_pool == [req] and offered == [req] and req.calls == []


def test_a_revoked_request_goes_to_the_pool_which_discards_it_and_is_not_offered():
    handoff, consumer, offered = hand_off(Future())
    req = FakeRequest(revoked=True)
    handoff.on_task_request(req)
    assert consumer.to_pool == [req] and offered == []


def test_a_run_on_the_loop_is_accepted_then_succeeds_when_it_returns():
    run: Future[Any] = Future()
    handoff, consumer, _ = hand_off(run)
    req = FakeRequest()
    handoff.on_task_request(req)
    assert req.calls == [("accepted",)] and consumer.to_pool == []
    run.set_result(None)
    assert req.calls == [("accepted",), ("succeeded", False, None)]


def test_a_run_that_raised_hands_the_message_back():
    run: Future[Any] = Future()
    handoff, _, _ = hand_off(run)
    req = FakeRequest()
    handoff.on_task_request(req)
    run.set_exception(ConnectionError("redis gone while settling"))
    assert req.calls == [("accepted",), ("rejected", True)]


def test_a_run_cancelled_by_the_loop_closing_hands_the_message_back():
    run: Future[Any] = Future()
    handoff, _, _ = hand_off(run)
    req = FakeRequest()
    handoff.on_task_request(req)
    run.cancel()
    assert req.calls == [("accepted",), ("rejected", True)]


def test_the_threads_pool_stop_waits_for_the_runs_on_the_loop():
    # Given a threads pool with one run on the loop still going
    pool = TaskPool(limit=1)
    run: Future[Any] = Future()
    handoff, _, _ = hand_off(run, _runs_of(pool))
    assert _runs_of(pool) is _runs_of(pool)  # wrapped once
    handoff.on_task_request(FakeRequest())
    # When the pool stops (a warm shutdown)
    stopped = threading.Event()
    stopper = threading.Thread(target=lambda: (pool.on_stop(), stopped.set()))
    stopper.start()
    # Then it returns only once the run has ended
    assert not stopped.wait(0.3)
    run.set_result(None)
    assert stopped.wait(5)
    stopper.join(5)
