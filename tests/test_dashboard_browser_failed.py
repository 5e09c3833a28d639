"""The Failed jobs pages in Chromium, against a real worker: open a failed job, retry it and
see the worker handle it; bulk-retry a filter through its confirmation and progress page;
markup in event data and errors shows as text and runs nothing.

The dashboard runs under uvicorn in a thread of this process (``serve_asgi``) and initializes
earnevents itself from EARNEVENTS_* (its lifespan); the test publishes and reads through
that same runtime, on the server's loop (:class:`OnServerLoop`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from browser_harness import wait_for_text, wait_until
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from earnevents import Event, event_bus
from earnevents.dashboard import create_app
from earnevents.testing import wait_for

pytestmark = pytest.mark.worker

T = TypeVar("T")
HANDLERS = "dashboard_failed_handlers"
FIXABLE = "dashboard_failed_handlers.fixable"


class OnServerLoop:
    """The dashboard app, remembering the loop uvicorn serves it on, to run coroutines there."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        assert self.loop is not None, "the server has not started"
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@pytest.fixture
def dashboard(serve_asgi, redis_url, queue, monkeypatch):
    """(base_url, server) of a dashboard for this test's queue, earnevents initialized by its lifespan."""
    monkeypatch.setenv("EARNEVENTS_REDIS_URI", redis_url)
    monkeypatch.setenv("EARNEVENTS_QUEUE", queue)
    monkeypatch.setenv("EARNEVENTS_MONGO_URI", "")
    server = OnServerLoop(create_app(token=""))
    return serve_asgi(server), server


def no_script_ran(browser) -> None:
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018  (the property raises when no alert is open)
    assert browser.execute_script("return window.pwned === undefined") is True


def failed_count(server: OnServerLoop, event_name: str | None = None) -> int:
    return server.run(event_bus.count_failed_jobs(event_name))


def test_retry_a_failed_job_from_its_page(dashboard, start_worker, rclient, browser, screenshot):
    base_url, server = dashboard
    start_worker(HANDLERS, pool="solo", concurrency=1)
    # Given a job that failed in the worker, with markup in its event data and its error
    tok = uuid.uuid4().hex
    hostile = "<script>window.pwned = 1; alert('data')</script>"
    server.run(event_bus.publish(Event("dash.fixable", {"token": tok, "note": hostile})))
    wait_for(lambda: failed_count(server) == 1, 15, "the job on the failed list")
    # When the overview is opened and Failed jobs chosen in the navigation
    browser.get(base_url + "/")
    browser.find_element(By.LINK_TEXT, "Failed jobs").click()
    wait_for_text(browser, "#summary", "1 failed job(s)")
    row = browser.find_element(By.CSS_SELECTOR, "#jobs tbody tr")
    assert row.find_element(By.CSS_SELECTOR, ".handler").text == FIXABLE
    assert (
        "downstream <script>alert('error')</script> unavailable" in row.find_element(By.CSS_SELECTOR, ".message").text
    )
    no_script_ran(browser)
    screenshot("failed-jobs")
    # And the job opened
    row.find_element(By.CSS_SELECTOR, ".when a").click()
    data = wait_for_text(browser, "#data", "pwned")
    # Then its data, error and traceback show as text, and no script of theirs ran
    assert f'"note": "{hostile}"' in data and f'"token": "{tok}"' in data
    assert "ConnectionError: downstream <script>" in browser.find_element(By.CSS_SELECTOR, "dd.message").text
    assert "Traceback (most recent call last)" in browser.find_element(By.ID, "traceback").text
    assert browser.find_elements(By.CSS_SELECTOR, "#data script, dd.message script") == []
    no_script_ran(browser)
    screenshot("failed-job")
    # When the downstream is fixed and Retry is pressed
    rclient.set(f"fixed:{tok}", 1)
    browser.find_element(By.CSS_SELECTOR, "button.retry").click()
    # Then the list says so, the worker handles the event, and the list is empty
    wait_for_text(browser, "#notice", "Retried failed job")
    wait_for(lambda: rclient.llen(f"handled:{tok}") == 1, 15, "the worker handling the retried job")
    browser.refresh()
    wait_for_text(browser, "#summary", "0 failed job(s)")
    assert failed_count(server) == 0


def test_bulk_retry_of_a_filter(dashboard, start_worker, rclient, browser, screenshot):
    base_url, server = dashboard
    start_worker(HANDLERS, pool="solo", concurrency=1)
    # Given 25 failed jobs of one event, and 2 of another that stay broken
    tok = uuid.uuid4().hex
    server.run(event_bus.publish_batch([Event("dash.fixable", {"token": tok, "n": n}) for n in range(25)]))
    server.run(event_bus.publish_batch([Event("dash.broken", {"token": tok}) for _ in range(2)]))
    wait_for(lambda: failed_count(server) == 27, 20, "27 jobs on the failed list")
    # When the list is filtered by the event
    browser.get(base_url + "/failed")
    browser.find_element(By.NAME, "event").send_keys("dash.fixable")
    browser.find_element(By.CSS_SELECTOR, "#filter button[type=submit]").click()
    wait_for_text(browser, "#summary", "25 failed job(s) matching event 'dash.fixable'")
    # And "Retry all" chosen: the confirmation shows the count
    browser.find_element(By.ID, "bulk-retry").click()
    assert wait_for_text(browser, "#count", "25") == "25"
    assert "run their handlers again" in browser.find_element(By.ID, "confirm").text
    screenshot("failed-bulk-confirm")
    # When the downstream is fixed and the bulk confirmed
    rclient.set(f"fixed:{tok}", 1)
    browser.find_element(By.ID, "bulk-confirm").click()
    # Then the progress page (refreshing itself) reaches the end
    wait_for_text(browser, "#status", "Finished: 25 of 25", timeout=15)
    progress = browser.find_element(By.ID, "progress")
    assert (progress.get_attribute("value"), progress.get_attribute("max")) == ("25", "25")
    assert browser.find_elements(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]') == []
    # And the worker handles all 25; the filter's list is empty, the other event's 2 are kept
    wait_for(lambda: rclient.llen(f"handled:{tok}") == 25, 20, "the worker handling the 25 retried jobs")
    browser.find_element(By.LINK_TEXT, "← Failed jobs").click()
    wait_for_text(browser, "#summary", "0 failed job(s) matching event 'dash.fixable'")
    assert wait_until(browser, lambda d: d.find_element(By.NAME, "event").get_attribute("value"), "filter kept") == (
        "dash.fixable"
    )
    assert failed_count(server) == 2 and failed_count(server, "dash.broken") == 2
    # And the overview shows the live worker and charts what it did this minute
    browser.get(base_url + "/")
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "table.workers tbody tr"), "the live worker listed")

    def outcomes(d: Any) -> dict[str, str] | None:
        d.refresh()  # the chart is drawn when the page is served: counts land within a second
        totals = {e.get_attribute("data-total"): e.text for e in d.find_elements(By.CSS_SELECTOR, "[data-total]")}
        return totals if totals.get("succeeded", "").endswith(": 25") else None

    totals = wait_until(browser, outcomes, "the 25 retried jobs charted as succeeded")
    assert totals["failed"] == "failed: 27" and browser.find_elements(By.CSS_SELECTOR, "#outcomes-chart rect.bar")
    screenshot("overview")
