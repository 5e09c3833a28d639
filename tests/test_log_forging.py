"""What earnevents logs about events, handlers and their errors cannot forge log lines:
a newline in an exception message (or in a stored event's name) stays inside its record."""

from __future__ import annotations

import logging

import pytest
from test_dispatch import FakeBooks, FakeBus, FakeStore, InlineLoop, job_for

from earnevents import Event, RetryPolicy
from earnevents.handlers import HandlerRegistry
from earnevents.worker.dispatch import handle, settle_failures


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every line the records make with a plain formatter, tracebacks included."""
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    return [line for record in caplog.records for line in formatter.format(record).splitlines()]


@pytest.mark.parametrize("max_retries", [0, 3], ids=["recorded", "retried"])
def test_a_handler_error_with_a_newline_forges_no_log_line(caplog, max_retries):
    # Given a handler whose exception message carries a line of its own
    registry = HandlerRegistry()

    def forger(event: Event) -> None:
        raise RuntimeError("boom\nFAKE LINE\r\nFAKE CRLF\x1b[2K\u2028FAKE LS")

    registry.register("t.forge", forger)
    bus, store = FakeBus(), FakeStore()

    async def settle(job, failed):
        await settle_failures(job, failed, registry, bus, store, None)  # type: ignore[arg-type]

    # When the worker runs it and logs the failure (recorded, or retried)
    job = job_for(Event("t.forge", {}), policy=RetryPolicy(max_retries=max_retries))
    with caplog.at_level(logging.INFO, logger="earnevents"):
        handle(job, registry, InlineLoop(), FakeBooks(settle_failures_with=settle))
    # Then the failure is logged, with its message escaped, and no line starts with the forged text
    [record] = [r for r in caplog.records if "forger" in r.getMessage()]
    assert "boom\\nFAKE LINE\\r\\nFAKE CRLF\\x1b[2K\\u2028FAKE LS" in record.getMessage()
    logged = lines(caplog)
    assert not [line for line in logged if line.startswith("FAKE") or "\x1b" in line or "\u2028" in line]
    # And the stored record keeps the message as it was
    if max_retries == 0:
        assert store.added[0].error == "RuntimeError: boom\nFAKE LINE\r\nFAKE CRLF\x1b[2K\u2028FAKE LS"
