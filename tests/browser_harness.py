"""Browser tests: web pages served by a real uvicorn and driven in Debian's headless Chromium.

Fixtures (tests/conftest.py imports them):

- ``serve_asgi(app) -> base_url``: runs an ASGI app under uvicorn on a free port of 127.0.0.1,
  in a thread of this process, until the test ends.
- ``browser``: a Selenium WebDriver on ``/usr/bin/chromium`` through ``/usr/bin/chromedriver``
  (Debian's ``chromium`` and ``chromium-driver`` packages), one Chromium per pytest process,
  its cookies cleared and parked on ``about:blank`` before each test. Selenium Manager is never
  asked for a driver or a browser, so nothing is downloaded. Where either program is missing the
  test is skipped with the reason (``-ra`` prints it in the summary); with
  ``EARNEVENTS_REQUIRE_BROWSER=1`` (``.ci/run`` sets it) it fails instead.
- ``screenshot(name) -> Path``: a PNG of the browser's window in the test's tmp dir; with
  ``EARNEVENTS_SCREENSHOTS=1`` it is also written to ``docs/screenshots/<name>.png``, the copies
  kept in the repository (so ``make test`` alone never rewrites them).

``wait_until`` and ``wait_for_text`` poll the page with a deadline (WebDriverWait); ``wait_http``
polls a URL until it answers (a server started as a subprocess).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from selenium.webdriver import ChromeOptions
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.remote.webdriver import WebDriver

ROOT = Path(__file__).parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS_DIR = ROOT / "docs" / "screenshots"
MISSING_REASON = "Chromium not installed: apt-get install chromium chromium-driver"
# Screenshots are this size, wherever they are taken.
WINDOW = (1280, 800)
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-breakpad",
    "--disable-client-side-phishing-detection",
    "--disable-domain-reliability",
    "--metrics-recording-only",
    "--no-pings",
    "--password-store=basic",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    # Pages under test are on this machine: every other host name fails to resolve at once, so
    # Chromium's own services (sign-in, updates, variations) ask no DNS server and reach nobody.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)

T = TypeVar("T")


def require_chromium() -> tuple[str, str]:
    """The Chromium and chromedriver programs, or skip the test saying how to install them
    (fail instead when ``EARNEVENTS_REQUIRE_BROWSER=1``: CI must not skip browser tests)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        reason = f"{MISSING_REASON} (missing {', '.join(missing)})"
        if os.environ.get("EARNEVENTS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"EARNEVENTS_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return CHROMIUM, CHROMEDRIVER


def chromium_setup(user_data_dir: str) -> tuple[Service, ChromeOptions]:
    """chromedriver's service and Chromium's options, both programs named by path: Selenium
    Manager (which would look for, and may download, a driver or a browser) is never asked,
    and is told to stay offline should a later Selenium ask it anyway."""
    from selenium.webdriver import ChromeOptions
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = require_chromium()
    os.environ["SE_OFFLINE"] = "true"
    options = ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    return Service(executable_path=chromedriver), options


def start_chromium(user_data_dir: str) -> WebDriver:
    """Headless Chromium under chromedriver (:func:`chromium_setup`), its viewport fixed."""
    from selenium import webdriver

    service, options = chromium_setup(user_data_dir)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(15)
    driver.set_script_timeout(15)
    fix_viewport(driver)
    return driver


def fix_viewport(driver: WebDriver) -> None:
    """Make the page's viewport, and so every screenshot, exactly :data:`WINDOW` in CSS pixels
    (``--window-size`` sizes the outer window, whose viewport is smaller)."""
    width, height = WINDOW
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


@pytest.fixture(scope="session")
def _chromium() -> Iterator[WebDriver]:
    user_data_dir = tempfile.mkdtemp(prefix="earnevents-chromium-")
    try:
        driver = start_chromium(user_data_dir)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(user_data_dir, ignore_errors=True)


@pytest.fixture
def browser(_chromium: WebDriver) -> WebDriver:
    """The pytest process's Chromium, on a blank page with no cookies."""
    _chromium.get("about:blank")
    _chromium.delete_all_cookies()
    fix_viewport(_chromium)
    return _chromium


def wait_until(driver: WebDriver, condition: Callable[[WebDriver], T | None], what: str, timeout: float = 5.0) -> T:
    """Poll ``condition(driver)`` until it returns something truthy, and return that; after
    ``timeout`` seconds fail with ``what`` was awaited and the page's URL."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # until() returns only a truthy value of condition's, never its None
        result = cast(T, WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition))
    except TimeoutException:
        raise AssertionError(f"not within {timeout}s on {driver.current_url}: {what}") from None
    return result


def wait_for_text(driver: WebDriver, css: str, text: str, timeout: float = 5.0) -> str:
    """Wait until the element at ``css`` shows ``text`` (as a person reads it); return its text."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By

    def shown(d: WebDriver) -> str | None:
        try:
            found: str = d.find_element(By.CSS_SELECTOR, css).text
        except (NoSuchElementException, StaleElementReferenceException):
            return None
        except WebDriverException as exc:
            # A page refreshing itself between the find and the read: newer ChromeDrivers say
            # so in a generic error rather than as a stale element.
            if "does not belong to the document" in str(exc):
                return None
            raise
        return found if text in found else None

    return wait_until(driver, shown, f"{css!r} showing {text!r}", timeout)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG image; ValueError if ``data`` is not one."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def screenshooter(driver: WebDriver, directory: Path) -> Callable[[str], Path]:
    """``take(name)``: the driver's window as ``<directory>/<name>.png`` (returned); with
    ``EARNEVENTS_SCREENSHOTS=1`` copied to ``docs/screenshots/<name>.png`` as well."""

    def take(name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"screenshot name must be a plain file name, not {name!r}")
        data = driver.get_screenshot_as_png()
        png_size(data)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.png"
        path.write_bytes(data)
        if os.environ.get("EARNEVENTS_SCREENSHOTS") == "1":
            SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, SCREENSHOTS_DIR / f"{name}.png")
        return path

    return take


@pytest.fixture
def screenshot(browser: WebDriver, tmp_path: Path) -> Callable[[str], Path]:
    """``screenshot(name) -> Path``: see :func:`screenshooter` (the test's tmp dir)."""
    return screenshooter(browser, tmp_path)


def wait_http(url: str, timeout: float = 10.0) -> str:
    """Poll ``url`` until it answers 200 (a server started as a subprocess, e.g. ``earnevents
    dashboard --port``, is up); return the body. TimeoutError after ``timeout`` seconds."""
    import urllib.request

    from earnevents.testing import wait_for

    def get() -> list[str] | None:  # a list: an empty body is an answer too
        with urllib.request.urlopen(url, timeout=2) as response:
            return [response.read().decode()] if response.status == 200 else None

    return wait_for(get, timeout, f"HTTP 200 from {url}")[0]


class AsgiServer:
    """An ASGI app under a real uvicorn server, in a thread of this process.

    The listening socket is bound before uvicorn starts (port 0: the system picks a free one),
    so no other process can take the port between choosing and serving it."""

    def __init__(self, app: Any, host: str = "127.0.0.1", startup_timeout: float = 10.0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        port = self.sock.getsockname()[1]
        self.base_url = f"http://{host}:{port}"
        self.startup_timeout = startup_timeout
        # A page that streams (server-sent events) would hold a graceful shutdown forever: 2 s at most.
        config = uvicorn.Config(
            app, log_level="warning", lifespan="auto", access_log=False, timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"uvicorn-{port}", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # reported by start(), which waits on this thread
            self.error = exc

    def start(self) -> str:
        """Serve; return the base URL once uvicorn accepts connections (raise if it cannot)."""
        self.thread.start()
        from earnevents.testing import wait_for

        try:
            wait_for(
                lambda: self.server.started or not self.thread.is_alive(),
                self.startup_timeout,
                f"uvicorn serving on {self.base_url}",
            )
        except BaseException:
            self.stop()
            raise
        if not self.server.started:
            self.sock.close()
            raise RuntimeError(f"uvicorn did not start on {self.base_url}: {self.error!r}")
        return self.base_url

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit (lifespan shutdown runs), wait for its thread, free the port."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.sock.close()
        if self.thread.is_alive():
            raise RuntimeError(f"uvicorn on {self.base_url} did not stop within {timeout}s")

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def serve_asgi() -> Iterator[Callable[[Any], str]]:
    """``serve_asgi(app) -> base_url``: ``app`` served by uvicorn until the test ends."""
    servers: list[AsgiServer] = []

    def serve(app: Any) -> str:
        server = AsgiServer(app)
        base_url = server.start()
        servers.append(server)
        return base_url

    yield serve
    for server in reversed(servers):
        server.stop()
