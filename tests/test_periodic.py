"""The worker's background threads (scheduler, keep-alive, relay) survive any error in a tick."""

from __future__ import annotations

import logging
import threading

import pytest
import redis

from earnevents.testing import wait_for
from earnevents.worker.periodic import PeriodicThread


class Flaky(PeriodicThread):
    """Raises the given errors on its first ticks, then counts successful ones."""

    what = "flaky thread"

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__(0.01)
        self.errors = errors
        self.ok = 0
        self.lock = threading.Lock()

    def tick(self) -> None:
        with self.lock:
            if self.errors:
                raise self.errors.pop(0)
            self.ok += 1


@pytest.mark.parametrize(
    "error",
    [RuntimeError("boom"), KeyError("missing"), ZeroDivisionError("bad arithmetic"), redis.ConnectionError("down")],
)
def test_a_thread_whose_tick_raises_logs_it_and_goes_on(caplog, error):
    # Given a background thread whose first two ticks raise
    thread = Flaky([error, error])
    caplog.set_level(logging.INFO, logger="earnevents.worker.periodic")
    # When it runs
    thread.start()
    try:
        # Then it keeps ticking after the errors
        wait_for(lambda: thread.ok >= 3, 5, "ticks after the errors")
    finally:
        thread.stop()
    # And the error was logged once (not once per tick), naming the thread, then its recovery
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(failures) == 1
    assert "flaky thread" in failures[0].getMessage() and repr(error) in failures[0].getMessage()
    assert any("flaky thread" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def test_an_unexpected_error_is_logged_with_its_traceback(caplog):
    # Given a thread whose tick raises a programming error
    thread = Flaky([TypeError("unsupported operand")])
    caplog.set_level(logging.INFO, logger="earnevents.worker.periodic")
    # When it runs
    thread.start()
    try:
        wait_for(lambda: thread.ok >= 1, 5, "a tick after the error")
    finally:
        thread.stop()
    # Then the traceback is in the log, so the bug can be found
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR and record.exc_info is not None
