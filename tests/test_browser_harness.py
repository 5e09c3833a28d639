"""The browser-test harness itself: a tiny Starlette app under uvicorn, driven in headless Chromium."""

from __future__ import annotations

import html
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs

import browser_harness
import pytest
from browser_harness import AsgiServer, png_size, screenshooter, wait_for_text, wait_http, wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

TESTS_DIR = Path(__file__).parent


def greeter_app() -> Starlette:
    """A page with a form (POST, then redirect back) and a button that changes text in place."""
    names: list[str] = []

    async def page(request: Request) -> Response:
        greeting = f"Hello, {html.escape(names[-1])}!" if names else "Nobody yet"
        return HTMLResponse(
            f"""<!doctype html><html><head><title>Greeter</title></head><body>
            <h1 id="greeting">{greeting}</h1>
            <form method="post" action="/greet">
              <input id="name" name="name"><button id="send" type="submit">Greet</button>
            </form>
            <p id="count">0</p><button id="more" type="button">More</button>
            <script>
              document.getElementById("more").addEventListener("click", () => {{
                const count = document.getElementById("count");
                count.textContent = String(Number(count.textContent) + 1);
              }});
            </script></body></html>"""
        )

    async def greet(request: Request) -> Response:
        # The body is parsed by hand: request.form() would need python-multipart.
        form = parse_qs((await request.body()).decode())
        names.append(form.get("name", [""])[0])
        return RedirectResponse("/", status_code=303)

    return Starlette(routes=[Route("/", page), Route("/greet", greet, methods=["POST"])])


def test_serve_asgi_serves_the_app_over_real_http_and_frees_the_port_when_stopped():
    # Given the app under uvicorn
    server = AsgiServer(greeter_app())
    base_url = server.start()
    # Then a plain HTTP client gets its page
    assert "Nobody yet" in wait_http(base_url + "/", timeout=5)
    # When it is stopped
    server.stop()
    # Then nothing listens there any more
    with pytest.raises(OSError):
        urllib.request.urlopen(base_url + "/", timeout=2)
    with pytest.raises(TimeoutError, match=f"HTTP 200 from {base_url}/"):
        wait_http(base_url + "/", timeout=0.3)


def test_serve_asgi_reports_an_app_that_cannot_start():
    # Given an app whose lifespan startup fails
    async def app(scope, receive, send):
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    # Then starting it raises instead of handing out a URL nothing serves
    with pytest.raises(RuntimeError, match="did not start"):
        AsgiServer(app).start()


def test_a_form_post_and_a_button_change_the_page_in_chromium(serve_asgi, browser, screenshot, monkeypatch):
    monkeypatch.delenv("EARNEVENTS_SCREENSHOTS", raising=False)  # the harness' page is no picture for docs/
    # Given the greeter served and opened in Chromium
    base_url = serve_asgi(greeter_app())
    browser.get(base_url + "/")
    assert browser.title == "Greeter"
    assert browser.find_element("id", "greeting").text == "Nobody yet"
    # When a name with markup in it is sent through the form
    browser.find_element("id", "name").send_keys('<b>Ann</b> & "Bo"')
    browser.find_element("id", "send").click()
    # Then the page after the redirect greets it as text, not as markup
    assert wait_for_text(browser, "#greeting", "Hello") == 'Hello, <b>Ann</b> & "Bo"!'
    assert browser.find_elements("css selector", "#greeting b") == []
    # When the button is clicked twice
    browser.find_element("id", "more").click()
    browser.find_element("id", "more").click()
    # Then its script changed the count in place
    wait_for_text(browser, "#count", "2")
    # And a screenshot of the window is a PNG of the fixed window size
    path = screenshot("harness-greeter")
    assert path.parent != browser_harness.SCREENSHOTS_DIR
    assert png_size(path.read_bytes()) == browser_harness.WINDOW


def test_wait_until_fails_naming_what_it_waited_for(browser):
    # Given a page where nothing changes
    browser.get("data:text/html,<p id=x>still</p>")
    # Then waiting for a change fails after the deadline, saying what it waited for
    with pytest.raises(AssertionError, match="'#x' showing 'moved'"):
        wait_for_text(browser, "#x", "moved", timeout=0.3)
    assert wait_until(browser, lambda d: d.find_element("id", "x").text, "text of #x") == "still"


def test_screenshots_are_copied_to_docs_only_when_asked(browser, tmp_path, monkeypatch):
    # Given the screenshot fixture's taker, with docs/screenshots redirected to a tmp dir
    docs = tmp_path / "docs-screenshots"
    monkeypatch.setattr(browser_harness, "SCREENSHOTS_DIR", docs)
    browser.get("data:text/html,<h1>shot</h1>")
    # When EARNEVENTS_SCREENSHOTS is not set
    monkeypatch.delenv("EARNEVENTS_SCREENSHOTS", raising=False)
    screenshooter(browser, tmp_path / "a")("page")
    # Then none is kept
    assert not docs.exists()
    # When it is set
    monkeypatch.setenv("EARNEVENTS_SCREENSHOTS", "1")
    kept = screenshooter(browser, tmp_path / "b")("page")
    # Then the same PNG is kept under docs/screenshots
    assert (docs / "page.png").read_bytes() == kept.read_bytes()
    with pytest.raises(ValueError):
        screenshooter(browser, tmp_path / "b")("../escape")


def test_the_driver_and_browser_are_debians_and_selenium_manager_is_never_asked(tmp_path, monkeypatch):
    # Given Selenium Manager (which may download a driver or a browser) made to fail if asked
    from selenium.webdriver.common.driver_finder import DriverFinder
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    def asked(*args, **kwargs):
        raise AssertionError("Selenium Manager was asked for a driver or a browser")

    monkeypatch.setattr(SeleniumManager, "binary_paths", asked)
    monkeypatch.delenv("SE_OFFLINE", raising=False)
    if not all(os.access(path, os.X_OK) for path in (browser_harness.CHROMIUM, browser_harness.CHROMEDRIVER)):
        pytest.skip(browser_harness.MISSING_REASON)
    # When the harness sets up chromedriver and Chromium
    service, options = browser_harness.chromium_setup(str(tmp_path))
    # Then Selenium finds the driver the harness named, without Selenium Manager
    assert DriverFinder(service, options).get_driver_path() == "/usr/bin/chromedriver"
    assert options.binary_location == "/usr/bin/chromium"
    assert os.environ["SE_OFFLINE"] == "true"
    assert "--headless=new" in options.arguments
    assert f"--user-data-dir={tmp_path}" in options.arguments


def test_without_chromium_a_browser_test_is_skipped_saying_how_to_install_it(tmp_path, monkeypatch):
    # Given no chromedriver where Debian's chromium-driver puts it
    monkeypatch.setattr(browser_harness, "CHROMEDRIVER", str(tmp_path / "chromedriver"))
    monkeypatch.delenv("EARNEVENTS_REQUIRE_BROWSER", raising=False)
    # Then a browser test is skipped, naming the packages and what is missing
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver") as skipped:
        browser_harness.require_chromium()
    assert str(tmp_path / "chromedriver") in str(skipped.value)
    # And where CI requires the browser tests (EARNEVENTS_REQUIRE_BROWSER=1), it fails instead
    monkeypatch.setenv("EARNEVENTS_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="EARNEVENTS_REQUIRE_BROWSER=1 but Chromium not installed"):
        browser_harness.require_chromium()


def test_without_chromium_the_summary_of_a_run_prints_the_skip_reason(tmp_path):
    # Given a test using the browser fixture, on a machine where /usr/bin/chromium is missing
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(TESTS_DIR)!r})
            import browser_harness
            from browser_harness import _chromium, browser
            browser_harness.CHROMIUM = {str(tmp_path / "no-chromium")!r}
            """
        )
    )
    (tmp_path / "test_page.py").write_text("def test_page(browser):\n    browser.get('about:blank')\n")
    env = {k: v for k, v in os.environ.items() if k != "EARNEVENTS_REQUIRE_BROWSER"}
    # When pytest runs it with -ra, as `make test` does (pyproject's addopts)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-ra", *("-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:anyio")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it is skipped and the summary line says why and how to install Chromium
    assert result.returncode == 0, result.stdout + result.stderr
    summary = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(summary) == 1, result.stdout
    assert "Chromium not installed: apt-get install chromium chromium-driver" in summary[0]
    assert "1 skipped" in result.stdout
