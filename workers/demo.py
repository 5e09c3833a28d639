"""`make demo`: publish events to a real worker and show results and failed jobs.

Uses EARNEVENTS_REDIS_URI / EARNEVENTS_MONGO_URI when set; otherwise starts a
private redis-server and the nx-27017 MongoDB stand-in on free ports, and stops
them at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import earnevents
from earnevents import Event, event_bus
from earnevents.redact import redact_uri
from earnevents.testing import MongoServer, RedisServer, WorkerProcess, free_port, wait_for
from earnevents.workflows import engine

from . import example_workflows  # noqa: F401  (declares onboard_customer here too)
from .example_handlers import FIXED_KEY, LOG_KEY, OrderShipped
from .example_models import Customer, Reservation

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "earnevents-demo"


def say(text: str = "") -> None:
    print(text, flush=True)


@contextlib.contextmanager
def services() -> Iterator[tuple[str, str]]:
    """Redis and MongoDB URLs: from the environment, else embedded servers."""
    with contextlib.ExitStack() as stack:
        redis_url = os.environ.get("EARNEVENTS_REDIS_URI")
        if not redis_url:
            redis_url = stack.enter_context(RedisServer()).url
            say(f"started embedded redis-server at {redact_uri(redis_url)}")
        mongo_url = os.environ.get("EARNEVENTS_MONGO_URI")
        if not mongo_url:
            mongo_url = stack.enter_context(MongoServer()).url
            say(f"started embedded MongoDB stand-in (nx-27017) at {redact_uri(mongo_url)}")
        yield redis_url, mongo_url


async def wait_log(count: int, timeout: float = 20) -> list[str]:
    client = earnevents.runtime.current().redis
    deadline = time.monotonic() + timeout
    while True:
        lines = [x.decode() for x in await client.lrange(LOG_KEY, 0, -1)]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.1)


async def show_new(seen: int, count: int) -> int:
    lines = await wait_log(seen + count)
    for line in lines[seen:]:
        say(f"    {line}")
    return len(lines)


async def run(redis_url: str, mongo_url: str) -> None:
    env = await earnevents.init(
        mongo_uri=mongo_url,
        database="earnevents_demo",
        redis_uri=redis_url,
        event_config={
            "queue_name": QUEUE,
            "retry_policy": {"max_retries": 2, "interval_start": 0.5},
            "event_log": True,
        },
    )
    await env.redis.delete(LOG_KEY, FIXED_KEY)
    await env.db["customers"].delete_many({})
    await env.db["reservations"].delete_many({})
    seen = 0

    say("\n1. publish user.created: an async and a sync handler run in the worker")
    await event_bus.publish(Event(name="user.created", data={"email": "ada@example.com"}))
    seen = await show_new(seen, 2)

    say("\n2. publish with delay=2: the reminder waits in Redis, not in worker memory")
    await event_bus.publish(Event(name="user.welcome_reminder", data={"email": "ada@example.com"}), delay=2)
    seen = await show_new(seen, 1)

    say("\n3. publish order.paid: one handler works, the other fails and is retried (max_retries=2)")
    paid_id = await event_bus.publish(Event(name="order.paid", data={"order_id": 42, "total": Decimal("19.90")}))
    seen = await show_new(seen, 4)
    jobs: list[earnevents.FailedJob] = []
    deadline = time.monotonic() + 20
    while not jobs and time.monotonic() < deadline:
        jobs = await event_bus.get_failed_jobs(event_name="order.paid")
        await asyncio.sleep(0.1)

    say("\n4. the failed job, as an operator sees it (stored in MongoDB)")
    for job in jobs:
        say(
            f"    id={job.id} handler={job.handler}\n    error={job.error} attempts={job.attempts} "
            f"failed_at={job.failed_at:%H:%M:%S}"
        )
    if not jobs:
        raise SystemExit("demo: expected a failed job, found none")

    say(
        f"    (from a shell: EARNEVENTS_MONGO_URI={redact_uri(mongo_url)} EARNEVENTS_DATABASE=earnevents_demo "
        f"EARNEVENTS_QUEUE={QUEUE} earnevents failed list)"
    )

    say("\n5. fix the invoicing service and retry the job")
    await env.redis.set(FIXED_KEY, 1)
    await event_bus.retry_job(jobs[0].id)
    seen = await show_new(seen, 1)
    left = await event_bus.get_failed_jobs(event_name="order.paid")
    say(f"    failed jobs left for order.paid: {len(left)}")

    say("\n6. a model: creating a Customer in MongoDB publishes customer.created, a handler reacts")
    customer = Customer(name="Grace", email="grace@example.com")
    await customer.create()
    seen = await show_new(seen, 1)
    customer.plan = "pro"
    await customer.save()  # $set of the changed field only; publishes customer.updated
    seen = await show_new(seen, 1)
    say(f"    customers in MongoDB: {await Customer.count()}")

    say("\n7. a hostile item on the queue: refused unparsed, kept as a dead letter; the worker goes on")
    for old in await event_bus.get_dead_items(limit=1000):  # an earlier run's, on your own Redis
        await event_bus.remove_dead_item(old.id)
    await env.redis.lpush(QUEUE, b"\x00 not a message at all")
    await event_bus.publish(Event(name="user.created", data={"email": "lin@example.com"}))
    seen = await show_new(seen, 2)
    dead: list[earnevents.DeadItem] = []
    deadline = time.monotonic() + 20
    while not dead and time.monotonic() < deadline:
        dead = await event_bus.get_dead_items()
        await asyncio.sleep(0.1)
    if not dead:
        raise SystemExit("demo: expected a dead-lettered item, found none")
    for item in dead:
        say(f"    dead item {item.id}: {item.reason} ({item.size} bytes, {item.dropped_at:%H:%M:%S})")
    shell = f"EARNEVENTS_REDIS_URI={redact_uri(redis_url)} EARNEVENTS_QUEUE={QUEUE}"
    say(f"    (from a shell: {shell} earnevents dead list)")

    say("\n8. a defined event, a receiver that only hears the warehouse, and the event log")
    await event_bus.publish(OrderShipped(order_id=42, carrier="DHL"), sender="Warehouse")
    seen = await show_new(seen, 1)
    returned = await event_bus.publish(OrderShipped(order_id=43, carrier="UPS"), sender="Returns")
    try:
        await event_bus.publish(Event("order.shipped", {"order_id": "forty-four"}))
    except earnevents.EventValidationError as exc:
        say(f"    refused at publish, nothing sent: {exc}")
    for event_id, what in ((paid_id, "order.paid of step 3"), (returned, "order.shipped sent by Returns")):
        record = await settled_record(event_id)
        handlers = ", ".join(f"{h.rsplit('.', 1)[-1]} {r.status} x{r.attempts}" for h, r in record.handlers.items())
        say(f"    event log, {what}: {record.status}" + (f" ({handlers})" if handlers else " (no handler for it)"))
    say(
        f"    (from a shell: EARNEVENTS_MONGO_URI={redact_uri(mongo_url)} EARNEVENTS_DATABASE=earnevents_demo "
        f"EARNEVENTS_QUEUE={QUEUE} earnevents events list)"
    )

    say("\n9. model automations: an event when a reservation is confirmed, one at its check-in time")
    now = dt.datetime.now(dt.timezone.utc)
    ada = await Reservation(guest="Ada", checkin_at=now + dt.timedelta(seconds=2)).create()
    bob = await Reservation(guest="Bob", checkin_at=now + dt.timedelta(seconds=3)).create()
    for reservation in (ada, bob):
        reservation.status = "confirmed"
        await reservation.save()  # reservation_confirmed now; checkin_due scheduled at checkin_at
    seen = await show_new(seen, 2)
    for pending in await event_bus.get_scheduled(event_name="checkin_due"):
        say(f"    scheduled: {pending.event.name} for {pending.entity} at {pending.due_at:%H:%M:%S.%f}"[:-3])
    bob.status = "cancelled"
    await bob.save()  # the condition no longer holds: Bob's checkin_due is withdrawn
    seen = await show_new(seen, 2)  # Bob's cancellation now, Ada's check-in at its time
    say(f"    (from a shell: ... EARNEVENTS_QUEUE={QUEUE} earnevents scheduled list)")

    say("\n10. a workflow: it waits for a signal (holding no worker), a flaky step is retried, it completes")
    run_id = await engine.start("onboard_customer", email="ada@example.com")
    run = await run_in(run_id, ("waiting",))
    say(f"    run {run_id}: {run.status} for {run.waiting_for['kind']} {run.waiting_for['name']!r}")
    woken = await engine.signal("customer:verified", {"verified_by": "support", "note": "not a Context field"})
    say(f"    signal customer:verified woke {woken} run(s)")
    run = await run_in(run_id, ("completed", "failed"))
    say(f"    run {run_id}: {run.status} {run.result}, Context {run.context}")
    for line in run.history:
        details = ", ".join(f"{k}={v}" for k, v in line.items() if k not in ("at", "what"))
        say(
            f"      {time.strftime('%H:%M:%S', time.localtime(line['at']))} {line['what']}"
            + (f" ({details})" if details else "")
        )
    await earnevents.close()


async def run_in(run_id: str, statuses: tuple[str, ...], timeout: float = 20) -> Any:
    """The workflow run once it is in one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        run = await engine.get_run(run_id)
        if run.status in statuses or time.monotonic() > deadline:
            return run
        await asyncio.sleep(0.1)


async def settled_record(event_id: str, timeout: float = 20) -> earnevents.EventRecord:
    """The event's log record once no handler of it is running any more."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            record = await event_bus.get_event(event_id)
            if record.status not in ("pending", "running") or time.monotonic() > deadline:
                return record
        except earnevents.EventNotFoundError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


def show_dashboard(env: dict[str, str]) -> None:
    """Step 11: `earnevents dashboard` on a free port, read over HTTP as a browser would."""
    say("\n11. the dashboard: `earnevents dashboard` served on a free port, read over HTTP")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "earnevents"), "dashboard", "--port", str(port)]
    with subprocess.Popen(
        command,
        env={**os.environ, **env},
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    ) as server:
        try:
            wait_for(lambda: _get(base + "/") is not None, 30, "the dashboard answering")
            for path, what in (("/", "overview"), ("/failed", "failed jobs"), ("/events", "event log")):
                page = _get(base + path) or ""
                title = re.search(r"<title>([^<]*)</title>", page)
                say(f"    GET {path}: {what}, {len(page):,} bytes ({title.group(1) if title else '?'})")
            gauges = [
                line
                for line in (_get(base + "/metrics") or "").splitlines()
                if line.startswith("earnevents_queue_") and not line.startswith("#")
            ]
            say(
                "    GET /metrics: "
                + "; ".join(g.split("{")[0].removeprefix("earnevents_queue_") + " " + g.split()[-1] for g in gauges)
            )
            say(
                f"    (from a shell: ... EARNEVENTS_QUEUE={QUEUE} earnevents dashboard, then open http://127.0.0.1:8787/)"
            )
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


def main() -> int:
    with services() as (redis_url, mongo_url):
        worker_env = {
            "EARNEVENTS_REDIS_URI": redis_url,
            "EARNEVENTS_MONGO_URI": mongo_url,
            "EARNEVENTS_DATABASE": "earnevents_demo",
            "EARNEVENTS_QUEUE": QUEUE,
            "EARNEVENTS_HANDLER_MODULES": "workers.example_handlers,workers.example_workflows",
            "EARNEVENTS_EVENT_LOG": "1",
            "PYTHONPATH": str(ROOT),
        }
        log_path = ROOT / ".run" / "demo-worker.log"
        log_path.parent.mkdir(exist_ok=True)
        log_path.unlink(missing_ok=True)
        say(f"starting `celery -A earnevents worker` (log: {log_path.relative_to(ROOT)})")
        with WorkerProcess(worker_env, concurrency=2, cwd=str(ROOT), log_path=str(log_path)):
            asyncio.run(run(redis_url, mongo_url))
            show_dashboard(worker_env)
    say("\ndone: worker stopped" + ("" if os.environ.get("EARNEVENTS_REDIS_URI") else ", embedded servers stopped"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
