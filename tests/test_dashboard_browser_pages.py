"""The dashboard's Scheduled, Events and Workflows pages in headless Chromium, served by uvicorn
against the real Redis and MongoDB stand-in: the buttons do what they say (screenshots for docs/)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import workflow_ops_defs  # noqa: F401  (declares the ops_* workflows the runs are of)
from browser_harness import wait_for_text, wait_until
from selenium.webdriver.common.by import By

import earnevents
from earnevents import Event, runtime
from earnevents.dashboard import create_app
from earnevents.eventlog.record import FAILED, SUCCEEDED, HandlerChange
from earnevents.workflows import engine

pytest_plugins = ["model_fixtures"]


@pytest.fixture
async def logged(redis_url: str, queue: str) -> AsyncIterator[runtime.Environment]:
    """earnevents with the event log on (Redis store)."""
    env = await earnevents.init(
        redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue, "event_log": True}
    )
    yield env
    await earnevents.close()


async def test_cancel_a_scheduled_event_in_the_browser(bus, serve_asgi, browser, screenshot):
    # Given a delayed event among others, and a model's occurrence-like neighbour
    await bus.publish(Event("invoice.reminder", {"invoice": 1042}), delay=7200)
    target = await bus.publish(Event("user.created", {"email": "ann@example.com"}), delay=3600)
    await bus.publish(
        Event("trial.ending", {}, metadata={"entity": {"model": "Account", "id": "6f1c" * 6}}), delay=86400
    )
    base_url = serve_asgi(create_app(token=""))
    # When the Scheduled page is opened, soonest first
    browser.get(base_url + "/scheduled")
    wait_for_text(browser, "h1", "Scheduled")
    ids = [row.get_attribute("data-id") for row in browser.find_elements(By.CSS_SELECTOR, "#scheduled tbody tr")]
    assert ids[0] == target and len(ids) == 3
    screenshot("scheduled")
    # And its row's cancel button is clicked
    browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{target}"] button.cancel').click()
    # Then the page says so, its row is gone and Redis no longer holds it
    wait_for_text(browser, "#notice", f"Cancelled {target}.")
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-id="{target}"]')
    assert target not in [item.id for item in await bus.get_scheduled()]
    assert len(await bus.get_scheduled()) == 2


async def test_open_an_event_and_replay_it_in_the_browser(logged, queue, serve_asgi, browser, screenshot):
    # Given logged events, one with a failed and a succeeded handler
    bus = earnevents.event_bus
    for n in range(3):
        await bus.publish(Event("order.paid", {"order": 100 + n, "amount": "19.90"}), sender="Checkout")
    event = Event("user.created", {"email": "ann@example.com", "plan": "pro"})
    await bus.publish(event, sender="Signup")
    await bus.flush_event_log()
    now = time.time()
    failed = {
        "status": FAILED,
        "attempts": 4,
        "started_at": now - 2,
        "finished_at": now - 1.9,
        "duration": 0.1,
        "error": "SMTPServerDisconnected: Connection unexpectedly closed",
        "traceback": 'Traceback (most recent call last):\n  File "app/mail.py", line 12, in welcome\n',
    }
    done = {"status": SUCCEEDED, "attempts": 1, "started_at": now - 2, "finished_at": now - 1.95, "duration": 0.05}
    await logged.eventlog.write(
        [
            HandlerChange(event.id, queue, "app.handlers.send_welcome_email", failed, event),
            HandlerChange(event.id, queue, "app.handlers.audit", done, event),
        ]
    )
    base_url = serve_asgi(create_app(token=""))
    # When the Events page is opened and the event's link clicked
    browser.get(base_url + "/events")
    wait_for_text(browser, "h1", "Events")
    screenshot("events")
    browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{event.id}"] td.id a').click()
    wait_for_text(browser, "#event-status", "partially_failed")
    assert "SMTPServerDisconnected" in browser.find_element(By.ID, "handlers").text
    screenshot("event")
    # And Replay is clicked (every handler)
    browser.find_element(By.ID, "replay").click()
    # Then the new event's page opens: another id, a replay of this one
    wait_for_text(browser, "#replay-of", event.id)
    new_id = browser.find_element(By.ID, "event-id").text
    assert new_id != event.id
    record = await bus.get_event(new_id)
    assert record.replay_of == event.id and record.data == event.data


async def test_open_a_workflow_run_and_cancel_it_in_the_browser(models_env, serve_asgi, browser, screenshot):
    # Given runs (no worker: they stay at their first step)
    await engine.start("ops_nap", seconds=60.0)
    run_id = await engine.start("ops_signalled")
    await engine.start("ops_nap", seconds=5.0)
    base_url = serve_asgi(create_app(token=""))
    # When the Workflows page is opened and the run's link clicked
    browser.get(base_url + "/workflows")
    wait_for_text(browser, "h1", "Workflows")
    screenshot("workflows")
    browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{run_id}"] td.id a').click()
    wait_for_text(browser, "#run-status", "running")
    screenshot("workflow-run")
    # And Cancel run is clicked
    browser.find_element(By.ID, "cancel-run").click()
    # Then the page shows it cancelled (and offers resume instead), and so does MongoDB
    wait_for_text(browser, "#run-status", "cancelled")
    wait_until(browser, lambda d: d.find_elements(By.ID, "resume-run"), "the resume button")
    assert (await engine.get_run(run_id)).status == "cancelled"
