"""The web dashboard (issue 14): overview counts, token, CSRF, read-only, mounting, secrets, headers."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

import earnevents
from earnevents import Event, FailedJob, queuestatus, runtime
from earnevents.dashboard import chart, create_app, pages
from earnevents.dashboard.pages import overview as overview_page
from earnevents.dashboard.render import render
from earnevents.deadletters import ADD_SCRIPT, DeadItem, add_args
from earnevents.stats import MinuteStats
from earnevents.testing import wait_for
from earnevents.worker import stats as worker_stats
from earnevents.worker.jobs import Job, Outcome

BASE = "http://dash.test"
ORIGIN = {"origin": BASE}


def client(app: Any, base: str = BASE) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


def counts(html: str) -> dict[str, int]:
    """The overview's cells: field -> number."""
    return {field: int(n) for field, n in re.findall(r'data-field="(\w+)">(\d+)<', html)}


def csrf_field(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert match is not None, html
    return match.group(1)


async def fill(queue: str, rclient: Any) -> None:
    """Through the real APIs: 2 waiting, 1 scheduled, 3 failed, 1 dead-lettered."""
    bus = earnevents.event_bus
    await bus.publish(Event("nobody.listens", {}))
    await bus.publish(Event("nobody.listens", {}))
    await bus.publish(Event("user.created", {}), delay=3600)
    failures = runtime.current().failures
    now = dt.datetime.now(dt.timezone.utc)
    for n in range(3):
        await failures.add(FailedJob(Event("user.created", {"n": n}), "app.h", "RuntimeError: x", "tb", 4, queue, now))
    item = DeadItem("d" * 32, queue, "not a message", now, 3, "abc", False)
    script_keys, argv = add_args(item, 100)
    rclient.eval(ADD_SCRIPT, len(script_keys), *script_keys, *argv)


EXPECTED = {"waiting": 2, "in_flight": 0, "scheduled": 1, "failed": 3, "dead": 1, "workers": 0}


async def test_overview_shows_the_counts_earnevents_status_prints(bus, queue, rclient):
    # Given messages, a delayed event, failed jobs and a dead letter put in with the real APIs
    await fill(queue, rclient)
    # When the overview is read
    async with client(create_app(token="")) as http:
        page = await http.get("/")
        metrics = await http.get("/metrics")
    # Then it shows the queue's counts, the ones `earnevents status` reads
    assert page.status_code == 200
    assert counts(page.text) == EXPECTED
    assert f'<td class="queue">{queue}</td>' in page.text
    # And /metrics serves them as earnevents' queue gauges
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name, value in (("waiting", 2), ("scheduled", 1), ("failed", 3), ("dead_lettered", 1), ("workers", 0)):
        assert f'earnevents_queue_{name}{{queue="{queue}"}} {float(value)}' in metrics.text, metrics.text


async def test_overview_charts_the_last_hours_outcomes_per_minute_and_reloads_itself(bus, queue):
    # Given outcomes counted by workers this minute and twenty minutes ago
    now = time.time()
    job = Job(event=Event("a.b", {}), handler=None, attempt=0, retry_policy=None, queue=queue)
    worker_stats.finished(job, [Outcome("m.h", at=now)] * 4)
    worker_stats.settled(job, Outcome("m.h", ValueError(), at=now), retrying=True)
    worker_stats.settled(job, Outcome("m.h", ValueError(), at=now - 1200), retrying=False)
    await worker_stats.flush(lambda: earnevents.runtime.current().redis)
    # When the overview is read
    async with client(create_app(token="")) as http:
        page = (await http.get("/")).text
    # Then its chart has one bar segment per minute and outcome, heights in proportion
    bars = re.findall(
        r'<rect class="bar (\w+)" data-field="\w+" x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)">', page
    )
    assert sorted(field for field, _, _ in bars) == ["failed", "retried", "succeeded"]
    heights = {field: float(h) for field, _, h in bars}
    assert heights["succeeded"] == pytest.approx(4 * heights["failed"]) == pytest.approx(4 * heights["retried"])
    assert re.findall(r'data-total="(\w+)">\w+: (\d+)', page) == [("succeeded", "4"), ("retried", "1"), ("failed", "1")]
    assert "<script" not in page
    # And it reloads itself without a script
    assert re.search(r'<meta http-equiv="refresh" content="\d+">', page)


@pytest.mark.worker
async def test_overview_lists_the_live_workers(bus, start_worker):
    async with client(create_app(token="")) as http:
        assert "No live worker consumes this queue" in (await http.get("/")).text
        start_worker()

        deadline = time.monotonic() + 20
        while '<table class="workers">' not in (page := (await http.get("/")).text):
            assert time.monotonic() < deadline, "the worker never showed"
            await asyncio.sleep(0.1)
    rows = re.findall(r"<tr><td class=\"queue\">([^<]*)</td><td>(\d+)</td>", page)
    assert [host for host, _ in rows] == [socket.gethostname()]
    assert counts(page)["workers"] == 1


async def test_the_overviews_worker_count_and_list_are_one_reading(bus, monkeypatch):
    # Given a worker whose keep-alive turns fresh between two readings (it is starting)
    readings = iter([False, True, True])

    async def flipping(client: Any, queue: str) -> list[queuestatus.Consumer]:
        return [queuestatus.Consumer("host-a:42:cafe", next(readings), 0)]

    monkeypatch.setattr(queuestatus, "consumers", flipping)
    monkeypatch.setattr(overview_page, "consumers", flipping)
    async with client(create_app(token="")) as http:
        page = (await http.get("/")).text
    # Then the count and the list agree (CI once saw 0 counted beside one listed)
    listed = re.findall(r"<tr><td class=\"queue\">([^<]*)</td>", page)
    assert counts(page)["workers"] == len(listed)


def test_chart_scale_is_a_round_number_at_or_above_the_busiest_minute():
    assert [chart.nice_max(n) for n in (0, 1, 3, 7, 10, 11, 260, 1001)] == [1, 1, 5, 10, 10, 20, 500, 2000]
    minutes = [MinuteStats(100 + i, succeeded=i) for i in range(60)]
    built = chart.build(minutes)
    assert [t.label for t in built.y_ticks] == ["0", "50", "100"]
    assert len(built.bars) == 59 and len(built.x_ticks) == 6  # every ten minutes


async def test_every_response_carries_the_security_headers(bus):
    async with client(create_app(token="")) as http:
        for path in ("/", "/metrics", "/static/dashboard.css", "/login"):
            response = await http.get(path)
            assert response.status_code == 200, path
            assert "default-src 'self'" in response.headers["content-security-policy"]
            assert "unsafe-inline" not in response.headers["content-security-policy"]
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "same-origin"
    # And the page loads nothing from elsewhere: its one stylesheet is the app's own
    app = create_app(token="")
    page = (await client(app).get("/")).text
    nav = [str(app.url_path_for(entry.route)) for entry in pages.NAV]
    assert nav == ["/", "/failed", "/scheduled", "/events", "/workflows"]
    assert re.findall(r'(?:href|src)="([^"]+)"', page) == ["/static/dashboard.css", *nav]
    assert "<script" not in page


async def test_hostile_text_renders_as_text(bus):
    # Given a page rendering text that holds markup (as event data, names and errors will)
    hostile = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>"

    async def shows(request: Request) -> Response:
        return render(request, "error.html", {"message": hostile})

    app = create_app(token="")
    app.router.routes.insert(0, Route("/hostile", shows))
    async with client(app) as http:
        page = (await http.get("/hostile")).text
    # Then it is escaped
    assert "<script>alert" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page


async def test_a_token_is_required_when_set(bus):
    app = create_app(token="s3cret-token")
    async with client(app) as http:
        # Without it: 401 with the login form, and no counts
        denied = await http.get("/")
        assert denied.status_code == 401 and 'name="token"' in denied.text and "data-field" not in denied.text
        assert (await http.get("/metrics")).status_code == 401
        # A wrong token is refused
        form = csrf_field(denied.text)
        wrong = await http.post("/login", data={"csrf_token": form, "token": "guess"}, headers=ORIGIN)
        assert wrong.status_code == 401 and "wrong token" in wrong.text
        assert (await http.get("/")).status_code == 401
        # The right one signs in: an HttpOnly, SameSite=Strict cookie that is not the token
        good = await http.post("/login", data={"csrf_token": form, "token": "s3cret-token"}, headers=ORIGIN)
        assert good.status_code == 303 and good.headers["location"] == "/"
        cookie = good.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret-token" not in cookie
        page = await http.get("/")
        assert page.status_code == 200 and "data-field" in page.text and "Log out" in page.text
        # Logging out ends it
        out = await http.post("/logout", data={"csrf_token": csrf_field(page.text)}, headers=ORIGIN)
        assert out.status_code == 303
        assert (await http.get("/")).status_code == 401
    # A script passes with Authorization: Bearer, and only with the right token
    async with client(app) as http:
        assert (await http.get("/metrics", headers={"authorization": "Bearer s3cret-token"})).status_code == 200
        assert (await http.get("/metrics", headers={"authorization": "Bearer s3cret-tokeN"})).status_code == 401


async def test_a_post_needs_its_csrf_token_and_this_origin(bus):
    async with client(create_app(token="")) as http:
        form = csrf_field((await http.get("/login")).text)
        # No token, a wrong one, another browser's (no cookie), another origin, no origin at all: refused
        assert (await http.post("/logout", data={}, headers=ORIGIN)).status_code == 403
        assert (await http.post("/logout", data={"csrf_token": "0" * 64}, headers=ORIGIN)).status_code == 403
        other = {"origin": "http://evil.test"}
        assert (await http.post("/logout", data={"csrf_token": form}, headers=other)).status_code == 403
        assert (await http.post("/logout", data={"csrf_token": form})).status_code == 403
        async with client(create_app(token="")) as stranger:
            assert (await stranger.post("/logout", data={"csrf_token": form}, headers=ORIGIN)).status_code == 403
        # The form's token from this origin (or its Referer) passes
        assert (await http.post("/logout", data={"csrf_token": form}, headers=ORIGIN)).status_code == 303
        referer = {"referer": BASE + "/"}
        assert (await http.post("/logout", data={"csrf_token": form}, headers=referer)).status_code == 303


async def test_read_only_refuses_posts_and_shows_no_buttons(bus):
    async with client(create_app(token="", read_only=True)) as http:
        page = await http.get("/")
        assert page.status_code == 200 and "read-only" in page.text
        assert "<form" not in page.text
        form = csrf_field((await http.get("/login")).text)
        # A POST with a good CSRF token is still refused (here at a page's path: no action exists yet)
        refused = await http.post("/", data={"csrf_token": form}, headers=ORIGIN)
        assert refused.status_code == 403 and "read-only" in refused.text
    async with client(create_app(token="")) as http:
        form = csrf_field((await http.get("/login")).text)
        assert (await http.post("/", data={"csrf_token": form}, headers=ORIGIN)).status_code == 405  # not read-only


async def test_mounted_under_a_prefix_links_carry_it(bus, queue, rclient):
    # Given the dashboard mounted at /ops inside a host application with a token
    await fill(queue, rclient)
    host = Starlette(routes=[Mount("/ops", app=create_app(token="tok"))])
    async with client(host) as http:
        # Then its login form, links and stylesheet carry the prefix
        login = await http.get("/ops/")
        assert login.status_code == 401 and 'action="/ops/login"' in login.text
        assert 'href="/ops/static/dashboard.css"' in login.text
        assert (await http.get("/ops/static/dashboard.css")).status_code == 200
        signed = await http.post(
            "/ops/login", data={"csrf_token": csrf_field(login.text), "token": "tok"}, headers=ORIGIN
        )
        assert signed.status_code == 303 and signed.headers["location"] == "/ops/"
        assert "Path=/ops" in signed.headers["set-cookie"]
        page = await http.get("/ops/")
        assert page.status_code == 200 and counts(page.text) == EXPECTED
        assert 'href="/ops/"' in page.text and 'action="/ops/logout"' in page.text
        assert (await http.get("/")).status_code == 404  # the host's own routes are its own


async def test_no_password_of_the_redis_uri_shows(redis_url, queue, rclient):
    # Given earnevents connected with a Redis user's password
    user, password = "dash" + uuid.uuid4().hex[:6], "pw-" + uuid.uuid4().hex
    rclient.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
    try:
        secret_url = redis_url.replace("redis://", f"redis://{user}:{password}@")
        await earnevents.init(redis_uri=secret_url, event_config={"queue_name": queue})
        try:
            async with client(create_app(token="")) as http:
                page = await http.get("/")
                metrics = await http.get("/metrics")
        finally:
            await earnevents.close()
    finally:
        rclient.execute_command("ACL", "DELUSER", user)
    # Then the page shows the connection with the password masked, and /metrics not at all
    assert page.status_code == 200 and metrics.status_code == 200
    assert f"redis://{user}:***@" in page.text
    assert password not in page.text and password not in metrics.text


async def test_not_initialized_answers_503_saying_so():
    async with client(create_app(token="")) as http:
        page = await http.get("/")
    assert page.status_code == 503 and "earnevents.init()" in page.text


async def test_redis_unreachable_answers_503_without_the_uri():
    # Given earnevents configured for a Redis nobody listens on, with a password in its URI
    await earnevents.init(redis_uri=f"redis://u:pw-hidden@127.0.0.1:{free_port()}/0", event_config={"queue_name": "q"})
    try:
        async with client(create_app(token="")) as http:
            page = await http.get("/")
            metrics = await http.get("/metrics")
    finally:
        await earnevents.close()
    # Then the pages say Redis failed, and nothing of the URI's secret
    assert page.status_code == 503 and "Redis is unreachable" in page.text
    assert metrics.status_code == 503
    assert "pw-hidden" not in page.text + metrics.text


# --- earnevents dashboard --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dashboard_env(redis_url: str, queue: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EARNEVENTS_DASHBOARD_TOKEN"}
    return {**env, "EARNEVENTS_REDIS_URI": redis_url, "EARNEVENTS_QUEUE": queue, "EARNEVENTS_MONGO_URI": "", **extra}


EXE = Path(sys.executable).parent / "earnevents"


@pytest.fixture
async def served(redis_url: str, queue: str) -> AsyncIterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(EXE), "dashboard", "--port", str(port)],
        env=dashboard_env(redis_url, queue),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)  # as Ctrl-C: uvicorn shuts down, then the command says so
        output, _ = proc.communicate(timeout=15)
        assert proc.returncode == 130, output
        assert "earnevents dashboard on http://127.0.0.1" in output and "Application shutdown complete" in output


async def test_the_command_serves_the_dashboard_over_http(served, bus, queue, rclient):
    await fill(queue, rclient)

    def up() -> bool:
        try:
            return httpx.get(served + "/", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, 30, "the dashboard answering")
    async with httpx.AsyncClient(base_url=served) as http:
        page = await http.get("/")
        css = await http.get("/static/dashboard.css")
    assert counts(page.text) == EXPECTED and queue in page.text
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert page.headers["x-frame-options"] == "DENY" and "server" not in page.headers


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "example.com"])
def test_the_command_refuses_a_public_host_without_a_token(redis_url, queue, host):
    out = subprocess.run(
        [str(EXE), "dashboard", "--host", host, "--port", str(free_port())],
        env=dashboard_env(redis_url, queue),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: refusing to serve the dashboard on"), out.stderr
    assert "EARNEVENTS_DASHBOARD_TOKEN" in out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_the_command_imports_the_application_as_a_worker_would(redis_url, queue):
    # Workflows' resume and signal need their definitions: the command imports the handler
    # modules first, and a module that cannot be imported stops it with the reason.
    out = subprocess.run(
        [str(EXE), "dashboard", "--port", str(free_port())],
        env=dashboard_env(redis_url, queue, EARNEVENTS_HANDLER_MODULES="no_such_app_module_xyz"),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 1, out.stderr
    assert "could not import the application's modules" in out.stderr and "no_such_app_module_xyz" in out.stderr
