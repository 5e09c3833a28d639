"""Given a worker serving Prometheus metrics, its counts add up across prefork children."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import urllib.request
from collections import defaultdict

import psutil
import pytest
from conftest import results, token
from prometheus_client.parser import text_string_to_metric_families

from earnevents import Event, message, runtime, stats
from earnevents.testing import free_port, wait_for
from earnevents.worker import metrics

pytestmark = pytest.mark.worker

RETRY_ONCE = json.dumps({"max_retries": 1, "interval_start": 0.1, "interval_step": 0, "interval_max": 0.1})


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> labels -> value, from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return found


def by_handler(samples: dict[tuple[tuple[str, str], ...], float], queue: str) -> dict[tuple[str, str], float]:
    """(event, handler) -> value of one counter's samples for ``queue``."""
    out: dict[tuple[str, str], float] = {}
    for labels, value in samples.items():
        d = dict(labels)
        if d.get("queue") == queue and "le" not in d:
            out[(d["event"], d["handler"].removeprefix("e2e_handlers."))] = value
    return out


async def test_job_counts_add_up_across_two_children_and_queue_gauges_are_served(bus, start_worker, rclient, queue):
    # Given a worker with two pool processes serving metrics, whose retry policy retries once
    port = free_port()
    start_worker(concurrency=2, env={"EARNEVENTS_METRICS_PORT": str(port), "EARNEVENTS_RETRY_POLICY": RETRY_ONCE})

    # When events whose handlers succeed, fail once, or always fail are published
    tok = token()
    records, flaky, failing = 30, 6, 4
    await bus.publish_batch([Event(name="t.record", data={"token": tok, "n": i}) for i in range(records)])
    for i in range(flaky):
        await bus.publish(Event(name="t.flaky", data={"token": tok, "fail_times": 1, "n": i}))
    for i in range(failing):
        await bus.publish(Event(name="t.always_fails", data={"token": tok, "n": i}))
    chains = 3
    for _ in range(chains):
        await bus.publish(Event(name="t.chain", data={"token": tok}))  # each publishes t.chained
    await bus.publish(Event(name="t.record", data={"token": "later"}), delay=60)
    rclient.lpush(queue, b"not a celery message")  # refused: dead-lettered

    expected_succeeded = {
        ("t.record", "record_async"): records,
        ("t.record", "record_sync"): records,
        ("t.flaky", "flaky"): flaky,
        ("t.always_fails", "steady_sibling"): failing,
        ("t.chain", "chain"): chains,
    }

    def settled() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
        found = scrape(port)
        succeeded = by_handler(found["earnevents_jobs_succeeded_total"], queue)
        failed = by_handler(found["earnevents_jobs_failed_total"], queue)
        gauges = found["earnevents_queue_failed"]
        done = (
            succeeded == expected_succeeded
            and failed.get(("t.always_fails", "always_fails")) == failing
            and gauges.get((("queue", queue),)) == failing
            and found["earnevents_queue_dead_lettered"].get((("queue", queue),)) == 1
        )
        return found if done else None

    found = wait_for(settled, 20, "the metrics of every job")

    # Then both children ran handlers, and the counts are the sums over both
    pids = {r["pid"] for r in results(rclient, tok)}
    assert len(pids) == 2, f"one pool process ran every handler ({pids}): the test proves nothing"
    assert by_handler(found["earnevents_jobs_retried_total"], queue) == {
        ("t.flaky", "flaky"): flaky,
        ("t.always_fails", "always_fails"): failing,
    }
    started = by_handler(found["earnevents_jobs_started_total"], queue)
    assert started == {
        ("t.record", "record_async"): records,
        ("t.record", "record_sync"): records,
        ("t.flaky", "flaky"): 2 * flaky,
        ("t.always_fails", "always_fails"): 2 * failing,
        ("t.always_fails", "steady_sibling"): failing,
        ("t.chain", "chain"): chains,
    }
    assert by_handler(found["earnevents_handler_duration_seconds_count"], queue) == started
    assert all(v > 0 for v in by_handler(found["earnevents_handler_duration_seconds_sum"], queue).values())

    # And the events handlers published in the children are counted
    assert found["earnevents_events_published_total"] == {(("event", "t.chained"), ("queue", queue)): chains}

    # And the per-minute counts the dashboard charts add up across both children too
    async def minutes() -> tuple[int, int, int]:
        recent = await stats.per_minute(runtime.current().redis, queue, minutes=5)
        return tuple(sum(getattr(m, f) for m in recent) for f in stats.FIELDS)  # type: ignore[return-value]

    deadline = time.monotonic() + 10
    while (counted := await minutes()) != (sum(expected_succeeded.values()), flaky + failing, failing):
        assert time.monotonic() < deadline, f"per-minute counts {counted} (succeeded, retried, failed)"
        await asyncio.sleep(0.1)

    # And the queue gauges: nothing waits or runs, one delayed event, four failed jobs, one dead item
    def gauge(name: str) -> float:
        return found[name][(("queue", queue),)]

    assert gauge("earnevents_queue_waiting") == 0
    assert gauge("earnevents_queue_in_flight") == 0
    assert gauge("earnevents_queue_scheduled") == 1
    assert gauge("earnevents_queue_oldest_waiting_age_seconds") == 0

    # When three slow events keep both children busy
    await bus.publish_batch([Event(name="t.sleepy", data={"token": tok, "seconds": 1.5}) for _ in range(3)])

    # Then two are in flight and one waits, its age growing
    def busy() -> bool:
        found = scrape(port)
        at = (("queue", queue),)
        return (
            found["earnevents_queue_in_flight"].get(at) == 2
            and found["earnevents_queue_waiting"].get(at) == 1
            and found["earnevents_queue_oldest_waiting_age_seconds"].get(at, 0) > 0
        )

    wait_for(busy, 5, "two slow events in flight and one waiting")


def test_oldest_waiting_age_is_the_time_since_the_event_was_published():
    # Given a queue item whose event was published 30 s ago
    event = Event(name="t.record", data={}, timestamp=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=30))
    item = message.build(event.to_wire(), queue="q", task_id="t1")
    # Then its age reads 30 s; an empty queue or an item that is no message reads 0
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    assert 29 < metrics._age(item.encode(), now) < 32
    assert metrics._age(None, now) == 0
    assert metrics._age(b"junk", now) == 0


def test_metrics_are_off_by_default(start_worker):
    # Given a worker started without EARNEVENTS_METRICS_PORT
    worker = start_worker(concurrency=2)
    assert worker.proc is not None
    # Then none of its processes listens on a TCP port
    main = psutil.Process(worker.proc.pid)
    processes = [main, *main.children(recursive=True)]
    listening = [c for p in processes for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    assert listening == []
