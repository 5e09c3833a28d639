"""The dashboard's Failed jobs pages (issue 14) over HTTP: list, filters, pages, detail,
retry/remove one, bulk with confirmation and progress, CSRF, read-only, bad input.

Tests taking ``env`` run once with each failure store (Redis, MongoDB); the others with Redis's."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import re
import time
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from earnevents import Event, FailedJob, bulk, runtime
from earnevents.dashboard import create_app
from earnevents.dashboard.pages import failed as failed_page
from earnevents.queuestatus import queue_status
from earnevents.testing import wait_for

BASE = "http://dash.test"
ORIGIN = {"origin": BASE}


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


def csrf_field(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert match is not None, page
    return match.group(1)


def rows(page: str) -> list[str]:
    """The ids of the jobs the list shows, in order."""
    return re.findall(r'<tr data-job="([0-9a-f]{32})">', page)


def total(page: str) -> int:
    match = re.search(r'<span id="total">(\d+)</span>', page)
    assert match is not None, page
    return int(match.group(1))


def ago(**delta: float) -> str:
    """The ISO time that long ago."""
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(**delta)).isoformat()


def job(event: str = "order.paid", handler: str = "app.h", error: str = "RuntimeError: x", **kw: Any) -> FailedJob:
    data = kw.pop("data", {"n": 1})
    ago = kw.pop("ago", 0.0)
    queue = runtime.current().settings.queue_name
    failed_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=ago)
    return FailedJob(Event(event, data), handler, error, kw.pop("traceback", "Traceback..."), 4, queue, failed_at)


async def add(*jobs: FailedJob) -> list[FailedJob]:
    store = runtime.current().failures
    for one in jobs:
        await store.add(one)
    return list(jobs)


async def test_the_list_filters_and_pages_with_the_count(env):
    # Given 60 jobs of one event and handler (a minute apart from 30 s ago, newest first), 5 of another
    paid = await add(*(job("order.paid", "app.bill", "ConnectionError: db down", ago=60 * n + 30) for n in range(60)))
    await add(*(job("user.created", "app.mail", "ValueError: bad address", ago=3 * 3600 + n) for n in range(5)))
    async with client(create_app(token="")) as http:
        # The first page: 50 newest, the total, a link to the older ones
        first = await http.get("/failed")
        assert first.status_code == 200 and total(first.text) == 65
        assert rows(first.text) == [j.id for j in paid[:50]]
        assert "showing 1\u201350 (page 1 of 2)" in first.text
        older = re.search(r'href="([^"]+)" rel="next"', first.text)
        assert older is not None and 'rel="prev"' not in first.text
        # The second page: the 15 others
        second = await http.get(html.unescape(older.group(1)))
        assert len(rows(second.text)) == 15 and "showing 51\u201365 (page 2 of 2)" in second.text
        assert rows(second.text)[:10] == [j.id for j in paid[50:]]
        assert (await http.get("/failed?page=2")).text.count("<tr data-job") == 15
        # Each filter, and all of them together, counts and lists what it matches
        for query, expected in (
            ("event=user.created", 5),
            ("handler=app.bill", 60),
            ("error=bad+address", 5),
            ("error=ConnectionError&since=30m", 30),  # 0.5 to 29.5 minutes ago
            ("until=2h", 5),
            ("event=order.paid&handler=app.bill&error=db&since=" + quote(ago(minutes=9.75)), 10),
            ("event=nobody", 0),
        ):
            page = await http.get("/failed?" + query)
            assert page.status_code == 200, query
            assert total(page.text) == expected, query
            assert len(rows(page.text)) == min(50, total(page.text)), query
        # The filter form keeps what was typed, and the detail links keep the filter
        page = await http.get("/failed?event=user.created&handler=app.mail")
        assert 'name="event" value="user.created"' in page.text
        assert "matching event &#39;user.created&#39;, handler &#39;app.mail&#39;" in page.text
        assert re.search(r'href="/failed/[0-9a-f]{32}\?event=user.created&amp;handler=app.mail"', page.text)
        # A page past the end shows none, saying so
        past = await http.get("/failed?page=9")
        assert past.status_code == 200 and rows(past.text) == [] and "none on this page" in past.text


@pytest.mark.parametrize(
    "query, message",
    [
        ("since=yesterday", "since: &#39;yesterday&#39; is neither a duration ago"),
        ("until=2026-13-45", "until: &#39;2026-13-45&#39; is neither a duration ago"),
        ("since=99999999999w", "reaches before the year 1"),
        ("since=1h&until=2h", "is after until"),
        ("page=" + "9" * 30, "page must be a whole number"),
        ("page=0", "page must be a whole number from 1"),
        ("page=20000002", "page must be at most"),
        ("offset=-5", "offset must be a whole number"),
        ("offset=1e9", "offset must be a whole number"),
        ("event=a&event=b", "event is given 2 times"),
        ("handler=" + "h" * 1001, "handler is too long"),
    ],
)
async def test_bad_filter_input_answers_400_saying_why(bus, query, message):
    async with client(create_app(token="")) as http:
        paths = ["/failed", "/failed/" + "0" * 32]
        if not query.startswith(("page=", "offset=")):
            paths.append("/failed/bulk?action=retry&")  # (the confirmation has no pages)
        for path in paths:
            page = await http.get(path + ("?" if "?" not in path else "") + query)
            assert page.status_code == 400, (path, query)
            assert message in page.text, page.text
            assert 'id="filter"' in page.text  # the form, to fix it


async def test_a_bulk_needs_a_known_action(bus):
    async with client(create_app(token="")) as http:
        page = await http.get("/failed/bulk?action=explode")
        assert page.status_code == 400 and "action must be retry or remove" in page.text
        form = csrf_field((await http.get("/login")).text)
        started = await http.post("/failed/bulk", data={"csrf_token": form, "action": "drop"}, headers=ORIGIN)
        assert started.status_code == 400 and "action must be retry or remove" in started.text
        assert (await http.get("/failed/bulk/" + "f" * 32)).status_code == 404


async def test_detail_shows_everything_as_text(env):
    # Given a job whose event data, handler, error and traceback hold markup
    hostile = await add(
        job(
            "order.paid",
            "app.<script>alert('h')</script>",
            "ValueError: <script>alert('e')</script>",
            data={"note": "<script>alert('d')</script>", "n": [1, 2]},
            traceback='Traceback:\n  File "<img src=x onerror=alert(1)>"',
        )
    )
    the_job = hostile[0]
    async with client(create_app(token="")) as http:
        listed = await http.get("/failed")
        detail = await http.get(f"/failed/{the_job.id}")
    # Then the list and the detail show it as text, never as markup
    for page in (listed.text, detail.text):
        assert "<script>alert" not in page and "<img" not in page
        assert "app.&lt;script&gt;alert(&#39;h&#39;)&lt;/script&gt;" in page
        assert "ValueError: &lt;script&gt;alert(&#39;e&#39;)&lt;/script&gt;" in page
    # And the detail has all of it: data pretty-printed, metadata, attempts, failure time, traceback
    assert detail.status_code == 200
    text = detail.text
    assert "&#34;note&#34;: &#34;&lt;script&gt;alert(&#39;d&#39;)&lt;/script&gt;&#34;" in text
    assert '<pre class="data" id="data">{\n  &#34;n&#34;: [\n    1,\n    2\n  ],' in text
    assert '<pre class="metadata" id="metadata">{}</pre>' in text
    assert the_job.event.id in text and "order.paid" in text
    assert '<dd class="attempts">4</dd>' in text
    assert f"{the_job.failed_at:%Y-%m-%d %H:%M:%S} UTC" in text
    assert "File &#34;&lt;img src=x onerror=alert(1)&gt;&#34;" in text
    # An unknown id is a 404 page saying so
    async with client(create_app(token="")) as http:
        missing = await http.get("/failed/" + "a" * 32)
        odd = await http.get("/failed/not-an-id")
    assert missing.status_code == 404 and "already retried or removed" in missing.text
    assert odd.status_code == 404


async def test_a_job_links_to_its_event_its_event_names_jobs_and_its_documents_runs(bus):
    # Given a failed job of an event about a document
    event = Event("order.paid", {"n": 1}, metadata={"entity": {"model": "Order", "id": "ab" * 12}})
    [one] = await add(FailedJob(event, "app.h", "RuntimeError: x", "tb", 2, runtime.current().settings.queue_name))
    async with client(create_app(token="")) as http:
        page = (await http.get(f"/failed/{one.id}")).text
    related = re.search(r'<p class="related" id="related">(.*?)</p>', page, re.S)
    assert related is not None
    links = re.findall(r'<a href="([^"]+)">([^<]+)</a>', related.group(1))
    assert links == [
        ("/failed?event=order.paid", "failed jobs of this event name"),
        (f"/workflows?model=Order&amp;entity_id={'ab' * 12}", f"workflow runs of Order {'ab' * 12}"),
    ]  # no event log here: no link to a record that cannot exist


async def test_retry_one_sends_its_message_and_takes_it_off_the_list(env):
    # Given two failed jobs, the list filtered to one event
    kept, retried = await add(job("user.created", "app.mail"), job("order.paid", "app.bill"))
    async with client(create_app(token="")) as http:
        page = await http.get("/failed?event=order.paid")
        assert rows(page.text) == [retried.id]
        assert (await queue_status()).waiting == 0
        # When its retry button is pressed (the form carries the filter)
        form = {"csrf_token": csrf_field(page.text), "event": "order.paid"}
        answer = await http.post(f"/failed/{retried.id}/retry", data=form, headers=ORIGIN)
        # Then the browser goes back to the list with its filter, which says what happened
        assert answer.status_code == 303
        target = urlsplit(answer.headers["location"])
        assert target.path == "/failed"
        assert parse_qs(target.query) == {"event": ["order.paid"], "notice": ["retried"], "job": [retried.id]}
        after = await http.get(answer.headers["location"])
        assert f"Retried failed job {retried.id}" in after.text and rows(after.text) == []
        # And the handler's message is on the queue, the job off the list, the other one kept
        assert (await queue_status()).waiting == 1
        assert await runtime.current().failures.get(retried.id) is None
        assert await runtime.current().failures.get(kept.id) is not None
        # Retrying it again finds nothing, and says so
        again = await http.post(f"/failed/{retried.id}/retry", data=form, headers=ORIGIN)
        assert parse_qs(urlsplit(again.headers["location"]).query)["notice"] == ["gone"]
        gone = await http.get(again.headers["location"])
        assert "was not found: already retried or removed?" in gone.text
        assert (await queue_status()).waiting == 1


async def test_remove_one_deletes_it_without_sending_anything(bus):
    (removed,) = await add(job())
    async with client(create_app(token="")) as http:
        detail = await http.get(f"/failed/{removed.id}?page=1")
        form = {"csrf_token": csrf_field(detail.text)}
        answer = await http.post(f"/failed/{removed.id}/remove", data=form, headers=ORIGIN)
        assert answer.status_code == 303
        assert parse_qs(urlsplit(answer.headers["location"]).query) == {"notice": ["removed"], "job": [removed.id]}
        after = await http.get(answer.headers["location"])
        assert f"Removed failed job {removed.id}." in after.text and total(after.text) == 0
    assert await runtime.current().failures.get(removed.id) is None
    assert (await queue_status()).waiting == 0


async def test_a_notice_is_never_text_from_the_url(bus):
    async with client(create_app(token="")) as http:
        forged = await http.get("/failed?notice=<b>pay+here</b>&job=" + "a" * 32)
        odd_job = await http.get("/failed?notice=retried&job=<b>x</b>")
    assert "pay here" not in forged.text and 'id="notice"' not in forged.text
    assert 'id="notice"' not in odd_job.text


async def test_every_post_needs_its_csrf_token(bus):
    (the_job,) = await add(job())
    async with client(create_app(token="")) as http:
        form = csrf_field((await http.get("/failed")).text)
        for path, data in (
            (f"/failed/{the_job.id}/retry", {}),
            (f"/failed/{the_job.id}/remove", {}),
            ("/failed/bulk", {"action": "remove"}),
        ):
            assert (await http.post(path, data=data, headers=ORIGIN)).status_code == 403, path
            wrong = {**data, "csrf_token": "0" * 64}
            assert (await http.post(path, data=wrong, headers=ORIGIN)).status_code == 403, path
            cross = {**data, "csrf_token": form}
            assert (await http.post(path, data=cross, headers={"origin": "http://evil.test"})).status_code == 403
    # Nothing happened
    assert await runtime.current().failures.get(the_job.id) is not None
    assert (await queue_status()).waiting == 0


async def test_read_only_shows_no_action_and_refuses_them(bus):
    (the_job,) = await add(job())
    async with client(create_app(token="", read_only=True)) as http:
        listed = await http.get("/failed")
        detail = await http.get(f"/failed/{the_job.id}")
        confirm = await http.get("/failed/bulk?action=remove")
        for page in (listed, detail, confirm):
            assert page.status_code == 200
            assert 'method="post"' not in page.text and 'class="retry"' not in page.text
        assert rows(listed.text) == [the_job.id] and 'id="bulk-retry"' not in listed.text
        assert '<strong id="count">1</strong>' in confirm.text and "read-only" in confirm.text
        form = csrf_field((await http.get("/login")).text)
        for path in (f"/failed/{the_job.id}/retry", f"/failed/{the_job.id}/remove", "/failed/bulk"):
            refused = await http.post(path, data={"csrf_token": form, "action": "remove"}, headers=ORIGIN)
            assert refused.status_code == 403 and "read-only" in refused.text
    assert await runtime.current().failures.get(the_job.id) is not None
    # The same pages with actions allowed do show the buttons (what the checks above look for)
    async with client(create_app(token="")) as http:
        assert 'method="post"' in (await http.get("/failed")).text
        assert 'method="post"' in (await http.get(f"/failed/{the_job.id}")).text
        assert 'method="post"' in (await http.get("/failed/bulk?action=remove")).text


def progress_of(page: str) -> tuple[int, int, bool, bool]:
    """(value, max, finished, refreshing) of a progress page."""
    match = re.search(r'<progress id="progress" value="(\d+)" max="(\d+)"', page)
    value, top = (int(match.group(1)), int(match.group(2))) if match else (-1, -1)
    return value, top, 'data-finished="yes"' in page, '<meta http-equiv="refresh" content="1">' in page


async def test_bulk_retry_confirms_the_count_then_shows_progress_to_the_end(bus, monkeypatch):
    monkeypatch.setattr(bulk, "BATCH", 50)  # 8 batches: the page sees it half-way
    # Given 400 failed jobs of one event and 3 of another
    store = runtime.current().failures
    targets = [job("order.paid", "app.bill", ago=n * 0.001) for n in range(400)]
    for start in range(0, len(targets), 100):
        await asyncio.gather(*(store.add(one) for one in targets[start : start + 100]))
    others = await add(*(job("user.created", "app.mail") for _ in range(3)))
    async with client(create_app(token="")) as http:
        # The list links to the bulk retry of its filter
        listed = await http.get("/failed?event=order.paid")
        link = re.search(r'href="([^"]+)" id="bulk-retry"', listed.text)
        assert link is not None and total(listed.text) == 400
        # Its confirmation shows the count and what will happen
        confirm = await http.get(html.unescape(link.group(1)))
        assert confirm.status_code == 200
        assert '<strong id="count">400</strong> failed job(s) match event &#39;order.paid&#39;' in confirm.text
        assert "run their handlers again" in confirm.text and "Retry 400 job(s)" in confirm.text
        # When confirmed
        form = {"csrf_token": csrf_field(confirm.text), "action": "retry", "event": "order.paid"}
        started = await http.post("/failed/bulk", data=form, headers=ORIGIN)
        assert started.status_code == 303
        progress_url = started.headers["location"]
        assert re.fullmatch(r"/failed/bulk/[0-9a-f]{32}", progress_url)
        # Then its progress page refreshes itself while it runs, and stops when finished
        seen: list[tuple[int, int, bool, bool]] = []
        deadline = time.monotonic() + 30
        while not (seen and seen[-1][2]):
            assert time.monotonic() < deadline, seen[-5:]
            page = await http.get(progress_url)
            assert page.status_code == 200
            seen.append(progress_of(page.text))
            await asyncio.sleep(0.005)
        running = [s for s in seen if not s[2]]
        assert all(refresh for *_, refresh in running) and not seen[-1][3]
        assert any(0 < value < top == 400 for value, top, _, _ in running), seen
        assert [value for value, *_ in seen if value >= 0] == sorted(value for value, *_ in seen if value >= 0)
        final = await http.get(progress_url)
        assert seen[-1][:2] == (400, 400)
        assert "Finished: 400 of 400" in final.text and '<span id="done">400</span> retried' in final.text
        # And the filter's list is empty, the other event's jobs kept, 400 messages sent
        assert total((await http.get("/failed?event=order.paid")).text) == 0
        assert sorted(rows((await http.get("/failed")).text)) == sorted(j.id for j in others)
    assert (await queue_status()).waiting == 400


async def test_bulk_remove_by_error_text_counts_the_ones_gone_meanwhile(env):
    # Given jobs failing with two errors
    timeouts = await add(*(job(error=f"TimeoutError: call {n}") for n in range(7)))
    await add(*(job(error="KeyError: 'x'") for _ in range(2)))
    async with client(create_app(token="")) as http:
        confirm = await http.get("/failed/bulk?action=remove&error=TimeoutError")
        assert '<strong id="count">7</strong>' in confirm.text and "delete them for good" in confirm.text
        # (A duration ago is fixed in the form to the moment it meant: the bulk acts on the jobs counted)
        windowed = (await http.get("/failed/bulk?action=remove&since=2h&until=0s")).text
        since = re.search(r'name="since" value="([^"]+)"', windowed)
        until = re.search(r'name="until" value="([^"]+)"', windowed)
        assert since is not None and until is not None, windowed
        span = dt.datetime.fromisoformat(until.group(1)) - dt.datetime.fromisoformat(since.group(1))
        assert span == dt.timedelta(hours=2) or abs(span.total_seconds() - 7200) < 1
        # One is removed by someone else before the bulk reads the ids... it is simply not matched;
        # and a read that races a removal counts it as gone (run() on an id no longer there):
        await runtime.current().failures.remove(timeouts[0].id)
        form = {"csrf_token": csrf_field(confirm.text), "action": "remove", "error": "TimeoutError"}
        started = await http.post("/failed/bulk", data=form, headers=ORIGIN)
        url = started.headers["location"]
        page = await http.get(url)
        deadline = time.monotonic() + 10
        while 'data-finished="yes"' not in page.text:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
            page = await http.get(url)
        assert '<span id="done">6</span> removed' in page.text and "Finished: 6 of 6" in page.text
        left = await http.get("/failed")
        assert total(left.text) == 2
    assert (await queue_status()).waiting == 0
    # A job gone between reading the ids and acting on it is counted as gone, not as an error
    progress = bulk.Progress("remove")
    await bulk.run([timeouts[1].id, "b" * 32], bulk.act_for("remove"), progress)
    assert (progress.done, progress.gone, progress.errors, progress.finished) == (0, 2, 0, True)


async def test_a_bulk_stops_after_the_batch_where_an_error_happened(bus):
    calls: list[str] = []

    async def flaky(job_id: str) -> None:
        calls.append(job_id)
        if job_id == "id-3":
            raise ConnectionError("redis://u:secret@host down")

    progress = bulk.Progress("retry")
    await bulk.run([f"id-{n}" for n in range(10)], flaky, progress, batch=4)
    assert (progress.done, progress.errors, progress.total, progress.finished) == (3, 1, 10, True)
    assert progress.error == "ConnectionError" and len(calls) == 4  # the first batch only; no secret shown


async def test_links_carry_the_mount_prefix(bus):
    from starlette.applications import Starlette
    from starlette.routing import Mount

    (the_job,) = await add(job())
    host = Starlette(routes=[Mount("/ops", app=create_app(token=""))])
    async with client(host) as http:
        page = await http.get("/ops/failed")
        assert page.status_code == 200 and f'href="/ops/failed/{the_job.id}"' in page.text
        assert f'action="/ops/failed/{the_job.id}/retry"' in page.text
        answer = await http.post(
            f"/ops/failed/{the_job.id}/remove", data={"csrf_token": csrf_field(page.text)}, headers=ORIGIN
        )
        assert answer.status_code == 303 and answer.headers["location"].startswith("/ops/failed?")


def test_the_filters_read_like_the_cli():
    where = failed_page.read_filter({"event": " user.created ", "since": "2h", "until": "2099-11-27T09:00:00"})
    assert where.texts == {"event": "user.created", "since": "2h", "until": "2099-11-27T09:00:00"}
    assert where.selection.until == dt.datetime(2099, 11, 27, 9, tzinfo=dt.timezone.utc)
    assert where.selection.since is not None
    assert abs((dt.datetime.now(dt.timezone.utc) - where.selection.since).total_seconds() - 7200) < 5
    # A form field that is not text (as a caller other than the browser might give) is a bad request
    with pytest.raises(failed_page.BadRequest, match="event must be text, got int"):
        failed_page.read_filter({"event": 5})  # type: ignore[dict-item]


def test_shutdown_cancels_a_running_bulk_before_closing_earnevents(redis_url, queue, monkeypatch):
    from browser_harness import AsgiServer

    from earnevents.errors import NotInitializedError

    # Given a served dashboard (its lifespan initializes earnevents) running a bulk that takes long
    monkeypatch.setenv("EARNEVENTS_REDIS_URI", redis_url)
    monkeypatch.setenv("EARNEVENTS_QUEUE", queue)
    monkeypatch.setenv("EARNEVENTS_MONGO_URI", "")
    started: list[str] = []
    cancelled: list[str] = []

    async def ids(selection: Any) -> list[str]:
        return ["a" * 32]

    async def slow(job_id: str) -> None:
        started.append(job_id)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            try:
                runtime.current()
                cancelled.append("earnevents still open")
            except NotInitializedError:
                cancelled.append("earnevents closed already")
            raise

    monkeypatch.setattr(bulk, "matching_ids", ids)
    monkeypatch.setattr(bulk, "act_for", lambda action: slow)
    app = create_app(token="")
    server = AsgiServer(app)
    base_url = server.start()
    try:
        with httpx.Client(base_url=base_url) as http:
            form = csrf_field(http.get("/login").text)
            answer = http.post(
                "/failed/bulk", data={"csrf_token": form, "action": "retry"}, headers={"origin": base_url}
            )
            assert answer.status_code == 303
        wait_for(lambda: started, 5, "the bulk acting on its job")
    finally:
        began = time.monotonic()
        server.stop()
    # When the server stops, the bulk is cancelled at once, while earnevents is still open
    assert time.monotonic() - began < 5
    assert cancelled == ["earnevents still open"]
    (running,) = app.state.earnevents_bulks.bulks.values()
    assert running.progress.finished and running.task.cancelled()
