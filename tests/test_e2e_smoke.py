"""Given a real worker, when events are published, then every handler runs."""

from __future__ import annotations

import datetime as dt

from conftest import token, wait_results

from earnevents import Event


async def test_async_and_sync_handlers_both_run(bus, start_worker, rclient):
    start_worker()
    tok = token()
    event_id = await bus.publish(Event(name="t.record", data={"token": tok, "n": 1}))
    recs = wait_results(rclient, tok, 2)
    assert {r["handler"] for r in recs} == {"record_async", "record_sync"}
    assert all(r["id"] == event_id for r in recs)
    assert dt.datetime.fromisoformat(recs[0]["timestamp"]).tzinfo is not None
