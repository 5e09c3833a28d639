"""Autodiscovery (earnevents.autodiscover, init(autodiscover=...), EARNEVENTS_AUTODISCOVER)
and `earnevents events`, on the small packages in tests/discover_apps."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import earnevents
from earnevents import DefinedEvent, registry
from earnevents import cli as cli_module
from earnevents.definitions import EventRegistry

TESTS_DIR = Path(__file__).parent


def test_autodiscover_imports_events_handlers_and_receivers_of_a_package_and_its_direct_subpackages():
    imported = earnevents.autodiscover(["discover_apps.shop"])

    assert imported == [
        "discover_apps.shop.events",
        "discover_apps.shop.handlers",
        "discover_apps.shop.receivers",
        "discover_apps.shop.billing.events",  # a subpackage (an app of the project) ...
        "discover_apps.shop.billing.handlers",  # ... without receivers: skipped
    ]
    assert "discover_apps.shop.lonely" not in sys.modules  # a plain module of the app is not an app module
    assert registry.get("shop.order_paid") is not None and registry.get("shop.invoice_sent") is not None
    assert "discover_apps.shop.handlers.record_paid" in {h.name for h in earnevents.handlers.registry.handlers()}


def test_a_listed_plain_module_is_imported_with_nothing_to_discover():
    from discover_apps import IMPORTED

    assert earnevents.autodiscover(["discover_apps.plain"]) == []
    assert "discover_apps.plain" in IMPORTED


def test_a_submodule_that_exists_and_fails_to_import_raises_its_own_error():
    with pytest.raises(RuntimeError, match=r"broken\.events cannot be imported") as info:
        earnevents.autodiscover(["discover_apps.broken"])
    if sys.version_info >= (3, 11):
        assert "while autodiscovery imported discover_apps.broken.events" in " ".join(info.value.__notes__)


def test_a_module_not_found_inside_a_submodule_is_that_submodules_failure_not_a_missing_submodule():
    with pytest.raises(ModuleNotFoundError) as info:
        earnevents.autodiscover(["discover_apps.broken_inside"])
    assert info.value.name == "discover_apps_no_such_module"


def test_a_listed_package_that_does_not_exist_is_an_error():
    with pytest.raises(ModuleNotFoundError, match=r"discover_apps\.no_such_app"):
        earnevents.autodiscover(["discover_apps.no_such_app"])


@pytest.mark.parametrize(("packages", "error"), [("myapp", TypeError), (["my-app"], ValueError), ([3], TypeError)])
def test_autodiscover_takes_a_list_of_module_names(packages, error):
    with pytest.raises(error):
        earnevents.autodiscover(packages)


async def test_init_autodiscovers_the_packages_it_is_given(redis_url, queue):
    assert "discover_apps.via_init.events" not in sys.modules
    await earnevents.init(
        redis_uri=redis_url, event_config={"queue_name": queue}, autodiscover=["discover_apps.via_init"]
    )
    try:
        assert "via_init.defined" in registry
        assert earnevents.runtime.current().settings.autodiscover == ("discover_apps.via_init",)
    finally:
        await earnevents.close()


async def test_init_autodiscovers_earnevents_autodiscover_when_not_given(redis_url, queue, monkeypatch):
    monkeypatch.setenv("EARNEVENTS_AUTODISCOVER", " discover_apps.via_env , ")
    assert "discover_apps.via_env.events" not in sys.modules
    await earnevents.init(redis_uri=redis_url, event_config={"queue_name": queue})
    try:
        assert "via_env.defined" in registry
    finally:
        await earnevents.close()


def test_a_bad_autodiscover_setting_is_a_config_error_naming_it():
    with pytest.raises(earnevents.ConfigError, match=r"EARNEVENTS_AUTODISCOVER.*'my-app'"):
        earnevents.Settings.resolve(environ={"EARNEVENTS_AUTODISCOVER": "ok,my-app"})
    with pytest.raises(earnevents.ConfigError, match="list of package names"):
        earnevents.Settings.resolve(autodiscover="myapp")


# --- earnevents events ----------------------------------------------------------------


def test_earnevents_events_prints_the_registry_importing_the_apps_from_the_current_directory():
    exe = Path(sys.executable).parent / "earnevents"
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "EARNEVENTS_AUTODISCOVER": "discover_apps.shop,discover_apps.typo",
        "EARNEVENTS_HANDLER_MODULES": "",
    }
    out = subprocess.run([str(exe), "events"], cwd=TESTS_DIR, env=env, capture_output=True, text=True, timeout=60)

    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("2 event(s) defined, 1 subscribed to without a definition, 0 pattern subscription(s)")
    paid = text[text.index("shop.order_paid  An order was paid in full") :].split("\n\n")[0]
    assert "  schema    discover_apps.shop.events.OrderPaidData (token, order_id, total, paid_at)" in paid
    assert "  code      PAID  type=outcome  level=high  order=10  selectable_by=[]: Paid" in paid
    assert "  metadata  team=billing" in paid
    assert "  handler   discover_apps.shop.handlers.record_paid" in paid
    assert "shop.order_piad  (not defined)\n  handler   discover_apps.typo.handlers.on_paid_typo" in text


def test_earnevents_events_json_is_one_document(monkeypatch, capsys):
    monkeypatch.setenv("EARNEVENTS_AUTODISCOVER", "discover_apps.shop")
    monkeypatch.setenv("EARNEVENTS_HANDLER_MODULES", "")

    assert cli_module.main(["events", "--json"]) == 0

    document = json.loads(capsys.readouterr().out)
    paid = next(e for e in document["events"] if e["name"] == "shop.order_paid")
    assert paid["defined"] is True and paid["metadata"] == {"team": "billing"}
    assert paid["codes"]["PAID_LATE"] == {
        "type": "outcome",
        "level": "low",
        "description": "Paid after the reminder",
        "order": 20,
    }
    assert [h["name"] for h in paid["handlers"]] == ["discover_apps.shop.handlers.record_paid"]
    assert document["patterns"] == []


def test_earnevents_events_reports_a_module_that_fails_to_import_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("EARNEVENTS_AUTODISCOVER", "discover_apps.broken")

    assert cli_module.main(["events"]) == 1

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: could not import the application's modules")
    assert "RuntimeError: broken.events cannot be imported" in err


def test_the_registry_table_shows_patterns_receivers_and_senders(monkeypatch):
    @dataclasses.dataclass
    class Sub:  # a subscription as the handler registry lists it (wildcards and @on receivers)
        name: str
        event_name: str
        sender: str | None = None
        receiver: bool = False

    subs = [
        Sub("app.handlers.audit", "user.*"),
        Sub("app.receivers.notify", "user.created", sender="User", receiver=True),
    ]
    reg = EventRegistry(handlers=lambda: subs)
    reg.add(DefinedEvent("user.created", None, "A user\nsigned up", {}, {}))
    monkeypatch.setattr(cli_module, "event_registry", reg)

    text = cli_module.registry_text()

    assert text.split("\n\n") == [
        "1 event(s) defined, 0 subscribed to without a definition, 1 pattern subscription(s)",
        "user.created  A user\\nsigned up\n"  # control characters escaped: one line per fact
        "  handler   app.handlers.audit (via user.*)\n"
        "  receiver  app.receivers.notify (sender User)",
        "user.*  (pattern; matches user.created)\n  handler   app.handlers.audit",
    ]
