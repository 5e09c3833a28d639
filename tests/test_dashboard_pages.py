"""The dashboard's Scheduled, Events and Workflows pages (issue 14), over HTTP against the real
Redis and MongoDB stand-in: lists, filters, pages, details, actions, CSRF, read-only, escaping."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import workflow_ops_defs  # noqa: F401  (declares the ops_* workflows in this process: resume and signal need them)
from markupsafe import escape
from starlette.applications import Starlette
from starlette.routing import Mount
from test_dashboard import ORIGIN, client, csrf_field

import earnevents
from earnevents import Event, FailedJob, keys, message, runtime
from earnevents.dashboard import create_app, listing
from earnevents.eventlog.record import FAILED, SUCCEEDED, HandlerChange
from earnevents.workflows import engine

pytest_plugins = ["model_fixtures"]

HOSTILE = "<script>alert('x')</script>"


def rows(page: str, table: str) -> list[str]:
    """The data-id of each row of the table with that id, in order."""
    body = page.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr data-id="([^"]+)"', body)


async def post(http: Any, path: str, page_path: str, **fields: str) -> Any:
    """A form POST as a browser sends it, after reading ``page_path``: with the CSRF field
    of this browser (the login form carries it on any dashboard), from this origin."""
    await http.get(page_path)
    form = csrf_field((await http.get("/login")).text)
    return await http.post(path, data={"csrf_token": form, **fields}, headers=ORIGIN)


@pytest.fixture
async def logged(redis_url: str, queue: str) -> AsyncIterator[runtime.Environment]:
    """earnevents with the event log on (Redis store)."""
    env = await earnevents.init(
        redis_uri=redis_url, mongo_uri="", event_config={"queue_name": queue, "event_log": True}
    )
    yield env
    await earnevents.close()


@pytest.fixture
def two_per_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "PAGE_SIZE", 2)


# --- Scheduled ------------------------------------------------------------------------


async def test_scheduled_lists_soonest_first_filters_and_pages(bus, two_per_page):
    # Given three delayed events of two names, due at different times
    late = await bus.publish(Event("user.created", {}), delay=3000)
    soon = await bus.publish(Event("user.created", {}), delay=1000)
    middle = await bus.publish(Event("order.paid", {}), delay=2000)
    last = await bus.publish(Event("user.created", {}), delay=4000)
    async with client(create_app(token="")) as http:
        # When the first page is read: the two soonest, with a link to the next
        first = await http.get("/scheduled")
        assert first.status_code == 200
        assert rows(first.text, "scheduled") == [soon, middle]
        assert "1-2 of 4" in first.text and 'href="/scheduled?offset=2"' in first.text
        assert "delayed event" in first.text
        # And the next page has the last one, with a link back
        second = await http.get("/scheduled?offset=2")
        assert rows(second.text, "scheduled") == [late, last]
        assert 'rel="prev"' in second.text and 'rel="next"' not in second.text
        # And the filter keeps one name's, kept in the paging links
        only = await http.get("/scheduled?name=user.created")
        assert rows(only.text, "scheduled") == [soon, late]
        assert "1-2 of 3" in only.text and 'href="/scheduled?name=user.created&amp;offset=2"' in only.text
        assert rows((await http.get("/scheduled?name=user.created&offset=2")).text, "scheduled") == [last]
        # And bad paging input is a 400 saying why, not a 500
        for bad in ("-1", "x", "1e3"):
            answer = await http.get(f"/scheduled?offset={bad}")
            assert answer.status_code == 400 and "offset must be a whole number" in answer.text


async def test_scheduled_cancel_withdraws_with_csrf_only(bus):
    event_id = await bus.publish(Event("user.created", {"who": HOSTILE}), delay=3600)
    async with client(create_app(token="")) as http:
        # Without the CSRF field the cancel is refused and the event stays
        refused = await http.post("/scheduled/cancel", data={"id": event_id}, headers=ORIGIN)
        assert refused.status_code == 403
        assert [item.id for item in await bus.get_scheduled()] == [event_id]
        # With it, the event is withdrawn and the page says so
        done = await post(http, "/scheduled/cancel", "/scheduled", id=event_id)
        assert done.status_code == 303 and done.headers["location"].startswith("/scheduled?")
        assert await bus.get_scheduled() == []
        page = await http.get(done.headers["location"])
        assert f"Cancelled {event_id}." in page.text and rows(page.text, "scheduled") == []
        # Cancelling again says it was no longer scheduled; an id of no possible form is a 404
        again = await post(http, "/scheduled/cancel", "/scheduled", id=event_id)
        assert "no longer scheduled" in (await http.get(again.headers["location"])).text
        assert (await post(http, "/scheduled/cancel", "/scheduled", id="not an id")).status_code == 404


async def test_mounted_under_a_prefix_the_actions_redirect_under_it(bus):
    # Given the dashboard mounted at /ops in a host application (which initialized earnevents)
    event_id = await bus.publish(Event("user.created", {}), delay=3600)
    host = Starlette(routes=[Mount("/ops", app=create_app(token=""))])
    async with client(host) as http:
        page = (await http.get("/ops/scheduled")).text
        assert 'action="/ops/scheduled/cancel"' in page and 'href="/ops/events"' in page
        # When a cancel is posted, the redirect stays under the mount
        form = csrf_field((await http.get("/ops/login")).text)
        done = await http.post("/ops/scheduled/cancel", data={"csrf_token": form, "id": event_id}, headers=ORIGIN)
    assert done.status_code == 303 and done.headers["location"].startswith("/ops/scheduled?notice=cancelled")
    assert await bus.get_scheduled() == []


async def test_scheduled_shows_a_handler_retry_and_a_models_occurrence(bus, queue):
    # Given a handler retry and a model's occurrence put in the schedule as earnevents does
    retry = Event("user.created", {})
    occurrence = Event("trial.ending", {}, metadata={"entity": {"model": "Account", "id": "a" * 24}})
    handler = "app.handlers.welcome"
    triples = [
        (
            f"r-{retry.id}",
            retry.name,
            message.build(retry.to_wire(), queue=queue, task_id="r", handler=handler, attempt=2),
        ),
        (occurrence.id, occurrence.name, message.build(occurrence.to_wire(), queue=queue, task_id=occurrence.id)),
    ]
    await bus.enqueue(triples, queue=queue, at=time.time() + 600)
    async with client(create_app(token="")) as http:
        page = (await http.get("/scheduled")).text
    # Then each shows its kind and what it is for
    assert "handler retry" in page and "app.handlers.welcome" in page and "attempt 2" in page
    assert "model occurrence" in page and "Account <code>" + "a" * 24 in page


# --- Events ---------------------------------------------------------------------------


async def test_events_list_filters_pages_and_shows_markup_as_text(logged, queue, two_per_page):
    bus = earnevents.event_bus
    ids = [await bus.publish(Event("user.created", {"n": n}), sender="Signup") for n in range(3)]
    other = await bus.publish(Event("order.paid", {"note": HOSTILE}))
    await bus.flush_event_log()
    async with client(create_app(token="")) as http:
        # Newest first, two a page
        first = await http.get("/events")
        assert first.status_code == 200
        assert rows(first.text, "events") == [other, ids[2]]
        second = await http.get(
            first.text.split('rel="next" class="next" href="')[1].split('"')[0].replace("&amp;", "&")
        )
        assert rows(second.text, "events") == [ids[1], ids[0]]
        # Filtered by name, sender, status and time
        assert rows((await http.get("/events?name=order.paid")).text, "events") == [other]
        assert rows((await http.get("/events?sender=Signup&offset=2")).text, "events") == [ids[0]]
        assert rows((await http.get("/events?status=succeeded")).text, "events") == []
        assert rows((await http.get("/events?until=2000-01-01T00:00")).text, "events") == []
        assert len(rows((await http.get("/events?since=2000-01-01T00:00%2B02:00")).text, "events")) == 2
        assert (
            len(rows((await http.get("/events?since=1h")).text, "events")) == 2
        )  # a duration ago, as the CLI reads it
        assert rows((await http.get("/events?until=1h")).text, "events") == []
        # Bad filters are 400s saying why
        bad = await http.get("/events?status=weird")
        assert bad.status_code == 400 and "status must be one of" in bad.text
        bad = await http.get("/events?since=yesterday")
        assert bad.status_code == 400 and "neither a duration ago" in bad.text
        # The event's page shows its data as text, never as markup
        page = (await http.get(f"/events/{other}")).text
        assert "<script>alert" not in page and str(escape(HOSTILE)) in page


async def test_event_page_shows_each_handler_and_replays(logged, queue):
    bus = earnevents.event_bus
    event = Event("user.created", {"email": "a@example.com"}, metadata={"entity": {"model": "User", "id": "ef" * 12}})
    await bus.publish(event)
    await bus.flush_event_log()
    failed = {"status": FAILED, "attempts": 3, "error": f"RuntimeError: {HOSTILE}", "traceback": "Traceback: boom"}
    done = {
        "status": SUCCEEDED,
        "attempts": 1,
        "started_at": time.time() - 1,
        "finished_at": time.time(),
        "duration": 0.25,
    }
    await logged.eventlog.write(
        [
            HandlerChange(event.id, queue, "app.h.mail", failed, event),
            HandlerChange(event.id, queue, "app.h.audit", done, event),
        ]
    )
    async with client(create_app(token="")) as http:
        page = await http.get(f"/events/{event.id}")
        assert page.status_code == 200
        text = page.text
        # The failed handler links to its failed job, and the page to the event name's failed jobs
        job_id = message.derived_id("failed", event.id, "app.h.mail", 3)
        assert f'<a class="failed-job" href="/failed/{job_id}">failed job</a>' in text
        assert '<a id="failed-of-name" href="/failed?event=user.created">' in text
        # And that failed job's page links back to the event's record
        await logged.failures.add(FailedJob(event, "app.h.mail", "RuntimeError: x", "tb", 3, queue, id=job_id))
        assert (
            f'<a href="/events/{event.id}">its event in the event log</a>' in (await http.get(f"/failed/{job_id}")).text
        )
        # Each handler: status, attempts, error (as text), traceback
        assert 'data-handler="app.h.mail"' in text and 'data-handler="app.h.audit"' in text
        assert "RuntimeError: " + str(escape(HOSTILE)) in text and "<script>alert" not in text
        assert "Traceback: boom" in text and "0.250" in text and "partially_failed" in text
        assert "a@example.com" in text
        # Unknown ids and ids of no possible form: 404
        assert (await http.get(f"/events/{'f' * 32}")).status_code == 404
        assert (await http.get("/events/%20x")).status_code == 404
        # A replay without the CSRF field is refused
        assert (await http.post(f"/events/{event.id}/replay", data={}, headers=ORIGIN)).status_code == 403
        # A replay to one handler: a new event, for that handler only, and its page opens
        replayed = await post(http, f"/events/{event.id}/replay", f"/events/{event.id}", handler="app.h.mail")
        assert replayed.status_code == 303
        new_id = replayed.headers["location"].split("/events/")[1].split("?")[0]
        assert new_id != event.id
        record = await bus.get_event(new_id)
        assert record.replay_of == event.id and list(record.handlers) == ["app.h.mail"]
        new_page = (await http.get(replayed.headers["location"])).text
        assert f"Published as a replay of {event.id}." in new_page and new_id in new_page
        # The replay links to the event it replays; both link to their document's workflow runs
        assert f'<a href="/events/{event.id}"><code id="replay-of">' in new_page
        runs = f'id="entity-runs" href="/workflows?model=User&amp;entity_id={"ef" * 12}"'
        assert runs in new_page and runs in text
        # A replay to every handler; one to a handler the event never had is a 400
        everyone = await post(http, f"/events/{event.id}/replay", f"/events/{event.id}", handler="")
        assert (
            await bus.get_event(everyone.headers["location"].split("/events/")[1].split("?")[0])
        ).replay_of == event.id
        bad = await post(http, f"/events/{event.id}/replay", f"/events/{event.id}", handler="app.h.other")
        assert bad.status_code == 400 and "has no handler" in bad.text


async def test_an_event_id_with_slashes_and_markup_links_to_its_page(logged):
    # Given an event whose id holds characters a path would mangle (all allowed in event ids)
    bus = earnevents.event_bus
    odd = "order/1?x=<b>#&%2F"
    await bus.publish(Event("order.paid", {}, id=odd))
    await bus.flush_event_log()
    async with client(create_app(token="")) as http:
        # Then the list links to its page with the id percent-encoded, and that page shows it
        listed = (await http.get("/events")).text
        link = re.search(r'<td class="id"><a href="([^"]+)">', listed)
        assert link is not None and link.group(1) == "/events/order%2F1%3Fx%3D%3Cb%3E%23%26%252F"
        page = await http.get(link.group(1))
        assert page.status_code == 200 and str(escape(odd)) in page.text
        # And its replay form posts to it
        replayed = await post(http, link.group(1) + "/replay", link.group(1), handler="")
        assert replayed.status_code == 303
        new_id = replayed.headers["location"].split("/events/")[1].split("?")[0]
        assert (await bus.get_event(new_id)).replay_of == odd


async def test_with_the_event_log_off_the_events_pages_say_how_to_turn_it_on(bus):
    event_id = await bus.publish(Event("user.created", {}))
    async with client(create_app(token="")) as http:
        for path in ("/events", f"/events/{event_id}"):
            page = await http.get(path)
            assert page.status_code == 200 and "EARNEVENTS_EVENT_LOG=1" in page.text, path


# --- Workflows ------------------------------------------------------------------------


async def test_workflows_list_filters_pages_and_shows_a_run(models_env, two_per_page):
    nap = await engine.start("ops_nap", seconds=1.0)
    waits = await engine.start("ops_signalled")
    third = await engine.start("ops_nap", seconds=2.0)
    await models_env.db[keys.MONGO_WORKFLOW_RUNS].update_one(
        {"_id": waits},
        {"$set": {"error": HOSTILE, "context": {"note": HOSTILE}, "entity": {"model": "Account", "id": "ab" * 12}}},
    )
    async with client(create_app(token="")) as http:
        # Newest first, two a page
        first = await http.get("/workflows")
        assert first.status_code == 200 and rows(first.text, "runs") == [third, waits]
        assert rows((await http.get("/workflows?offset=2")).text, "runs") == [nap]
        # Filtered by workflow and status
        assert rows((await http.get("/workflows?workflow=ops_nap")).text, "runs") == [third, nap]
        assert rows((await http.get("/workflows?status=completed")).text, "runs") == []
        bad = await http.get("/workflows?status=sleepy")
        assert bad.status_code == 400 and "status must be one of" in bad.text
        # A run's page: status, step, Context, history; markup as text
        page = await http.get(f"/workflows/{waits}")
        assert page.status_code == 200
        assert 'id="run-status">running<' in page.text and 'id="run-step">await_ready<' in page.text
        assert "<script>alert" not in page.text and str(escape(HOSTILE)) in page.text
        assert '<td class="what">started</td>' in page.text and f"Account <code>{'ab' * 12}</code>" in page.text
        # Its document links to that document's runs, which the list filters by
        link = re.search(r'<a class="related" href="([^"]+)">its runs</a>', page.text)
        assert link is not None and link.group(1) == f"/workflows?model=Account&amp;entity_id={'ab' * 12}"
        assert rows((await http.get(f"/workflows?model=Account&entity_id={'ab' * 12}")).text, "runs") == [waits]
        assert rows((await http.get(f"/workflows?model=Account&entity_id={'cd' * 12}")).text, "runs") == []
        half = await http.get("/workflows?model=Account")
        assert half.status_code == 400 and "give both or neither" in half.text
        # Unknown runs and ids of no possible form: 404
        assert (await http.get(f"/workflows/{'0' * 32}")).status_code == 404
        assert (await http.get("/workflows/nosuchrun")).status_code == 404


async def test_workflow_cancel_resume_and_signal(models_env):
    run_id = await engine.start("ops_signalled")
    page = f"/workflows/{run_id}"
    async with client(create_app(token="")) as http:
        # Without the CSRF field every action is refused
        for action in ("cancel", "resume", "signal"):
            assert (await http.post(f"{page}/{action}", data={}, headers=ORIGIN)).status_code == 403
        assert (await engine.get_run(run_id)).status == "running"
        # A signal with a payload that is not JSON, or not an object, or a bad name: a 400 saying why
        bad = await post(http, f"{page}/signal", page, name="ops:ready", payload="{not json")
        assert bad.status_code == 400 and "the payload is not JSON" in bad.text
        bad = await post(http, f"{page}/signal", page, name="ops:ready", payload="[1]")
        assert bad.status_code == 400 and "must be a JSON object" in bad.text
        bad = await post(http, f"{page}/signal", page, name="ops:ready", payload='{"a": ' + "[" * 200 + "]" * 200 + "}")
        assert bad.status_code == 400 and "the signal was not sent" in bad.text
        bad = await post(http, f"{page}/signal", page, name="ops:ready", payload="[" * 5000 + "]" * 5000)
        assert bad.status_code == 400 and "nests too deep" in bad.text
        bad = await post(http, f"{page}/signal", page, name="no spaces", payload="{}")
        assert bad.status_code == 400 and "signal name" in bad.text
        # Signalled while its step is still running (no worker): kept for its wait, nothing woke now
        sent = await post(http, f"{page}/signal", page, name="ops:ready", payload='{"note": "hi"}')
        assert sent.status_code == 303
        assert "Signal sent: 0 run(s) woke." in (await http.get(sent.headers["location"])).text
        # Resuming a run that has not ended is a 409 saying why
        refused = await post(http, f"{page}/resume", page, at_step="")
        assert refused.status_code == 409 and "only failed or cancelled runs resume" in refused.text
        # Cancelled
        done = await post(http, f"{page}/cancel", page)
        assert done.status_code == 303 and (await engine.get_run(run_id)).status == "cancelled"
        shown = (await http.get(done.headers["location"])).text
        assert "Run cancelled." in shown and 'id="cancel-run"' not in shown and 'id="resume-run"' in shown
        again = await post(http, f"{page}/cancel", page)
        assert "the run had ended" in (await http.get(again.headers["location"])).text
        # Resumed at a step it does not have: 409; at its own step: running again
        bad = await post(http, f"{page}/resume", page, at_step="nowhere")
        assert bad.status_code == 409 and "has no step" in bad.text
        resumed = await post(http, f"{page}/resume", page, at_step="done")
        assert resumed.status_code == 303
        run = await engine.get_run(run_id)
        assert run.status == "running" and run.step == "done"


async def test_a_run_waiting_for_its_start_says_when_it_starts_and_offers_no_signal(models_env):
    import workflow_event_defs  # noqa: F401  (declares FeedbackRequest: 1.8 s after guest_checked_out)

    from earnevents.worker import workflow_events

    # Given FeedbackRequest's run, created by the bridge (no worker: it keeps waiting for its start)
    await workflow_events.bridge(Event(name="guest_checked_out", data={"guest": "ada"}))
    [run] = await engine.find_runs(workflow="FeedbackRequest")
    starts = listing.when(run.wake_at)
    async with client(create_app(token="")) as http:
        # Listed among the waiting runs, with when it starts
        listed = await http.get("/workflows?status=waiting")
        assert rows(listed.text, "runs") == [run.id] and f"<td>starts {starts}</td>" in listed.text
        # Its page says when it starts and at which step; it can be cancelled, not signalled
        page = (await http.get(f"/workflows/{run.id}")).text
        assert 'id="run-status">waiting<' in page and "<th>starts</th>" in page
        assert f'id="run-wakes">{starts} (its start step, ask;' in page
        assert 'id="cancel-run"' in page and 'id="signal-run"' not in page
        done = await post(http, f"/workflows/{run.id}/cancel", f"/workflows/{run.id}")
        assert done.status_code == 303 and (await engine.get_run(run.id)).status == "cancelled"
        assert "<th>starts</th>" not in (await http.get(f"/workflows/{run.id}")).text


async def test_resume_of_a_workflow_this_process_does_not_declare_says_so(models_env):
    run_id = await engine.start("ops_nap", seconds=1.0)
    await engine.cancel(run_id)
    await models_env.db[keys.MONGO_WORKFLOW_RUNS].update_one({"_id": run_id}, {"$set": {"workflow": "elsewhere"}})
    async with client(create_app(token="")) as http:
        answer = await post(http, f"/workflows/{run_id}/resume", f"/workflows/{run_id}")
    assert answer.status_code == 409 and "is not declared in the dashboard" in answer.text


async def test_without_mongodb_the_workflows_pages_say_they_need_it(bus):
    async with client(create_app(token="")) as http:
        for path in ("/workflows", f"/workflows/{'0' * 32}"):
            page = await http.get(path)
            assert page.status_code == 200 and "Workflows need MongoDB" in page.text, path
        refused = await post(http, f"/workflows/{'0' * 32}/cancel", "/workflows")
        assert refused.status_code == 409 and "Workflows need MongoDB" in refused.text


# --- read-only ------------------------------------------------------------------------


async def test_read_only_shows_no_action_buttons_and_refuses_the_actions(models_env):
    bus = earnevents.event_bus
    scheduled = await bus.publish(Event("user.created", {}), delay=3600)
    run_id = await engine.start("ops_signalled")
    async with client(create_app(token="", read_only=True)) as http:
        pages = [(await http.get(path)).text for path in ("/scheduled", f"/workflows/{run_id}")]
        assert scheduled in pages[0] and run_id in pages[1]
        for page in pages:
            assert 'class="cancel"' not in page and 'id="cancel-run"' not in page
            assert 'method="post"' not in page
        for path, page_path in (("/scheduled/cancel", "/scheduled"), (f"/workflows/{run_id}/cancel", "/workflows")):
            refused = await post(http, path, page_path, id=scheduled)
            assert refused.status_code == 403 and "read-only" in refused.text
    assert len(await bus.get_scheduled()) == 1 and (await engine.get_run(run_id)).status == "running"


async def test_read_only_event_page_has_no_replay(logged):
    bus = earnevents.event_bus
    event_id = await bus.publish(Event("user.created", {}))
    await bus.flush_event_log()
    async with client(create_app(token="", read_only=True)) as http:
        page = (await http.get(f"/events/{event_id}")).text
        assert event_id in page and 'id="replay"' not in page and 'method="post"' not in page
        refused = await post(http, f"/events/{event_id}/replay", "/events")
        assert refused.status_code == 403
