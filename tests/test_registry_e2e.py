"""The event registry with real workers: autodiscovery at worker start, strict mode
refusing to start, a discovered module that fails to import stopping the worker.

Packages: tests/discover_apps (on the workers' PYTHONPATH, as tests/ is)."""

from __future__ import annotations

import pytest
from conftest import token, wait_results

from earnevents import Event, EventValidationError

pytestmark = pytest.mark.worker


async def test_a_worker_autodiscovers_apps_and_runs_their_handlers_with_schema_types(bus, rclient, queue, start_worker):
    from discover_apps.shop.billing.events import InvoiceSent
    from discover_apps.shop.events import OrderPaid

    # Strict mode on: every handler the worker discovered subscribes to a defined event.
    start_worker(modules="", env={"EARNEVENTS_AUTODISCOVER": "discover_apps.shop", "EARNEVENTS_STRICT": "1"})
    tok = token()

    await bus.publish(OrderPaid(token=tok, order_id="42", total="19.90"))
    await bus.publish(InvoiceSent(token=tok))  # from a subpackage (Django-style app) of the listed package

    records = wait_results(rclient, tok, 2)
    paid = next(r for r in records if r["handler"] == "record_paid")
    assert paid["types"] == {"token": "str", "order_id": "int", "total": "Decimal", "paid_at": "NoneType"}
    assert {r["handler"] for r in records} == {"record_paid", "record_invoice"}

    # Data that does not fit the schema never reaches the worker.
    with pytest.raises(EventValidationError, match="data\\['total'\\]"):
        await bus.publish(Event(OrderPaid.name, {"token": tok, "order_id": 1, "total": "a lot"}))
    assert rclient.llen(queue) == 0


def test_a_strict_worker_refuses_to_start_naming_the_handler_of_an_undefined_event(start_worker):
    env = {"EARNEVENTS_AUTODISCOVER": "discover_apps.shop,discover_apps.typo", "EARNEVENTS_STRICT": "1"}

    with pytest.raises(RuntimeError, match="worker exited") as info:
        start_worker(modules="", env=env)

    assert "UndefinedEventError" in str(info.value)
    assert "discover_apps.typo.handlers.on_paid_typo subscribes to 'shop.order_piad'" in str(info.value)
    assert "did you mean 'shop.order_paid'" in str(info.value)


def test_a_discovered_module_that_fails_to_import_stops_the_worker_with_its_error(start_worker):
    with pytest.raises(RuntimeError, match="worker exited") as info:
        start_worker(modules="", env={"EARNEVENTS_AUTODISCOVER": "discover_apps.shop,discover_apps.broken"})

    assert "RuntimeError: broken.events cannot be imported (on purpose)" in str(info.value)
