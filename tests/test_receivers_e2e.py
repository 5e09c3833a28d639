"""End to end: ``@on`` receivers, sender filters and wildcard subscriptions in a real worker.

One worker (receivers: tests/e2e_receivers.py) serves every test of this module, on a
queue of the module's own; each test tells its events apart by their ``token``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import TESTS_DIR, results, stays, token, wait_results

from earnevents import BaseModel, Event, FailedJob, dispatch_model_event, event_bus, keys
from earnevents.config import DEFAULTS
from earnevents.testing import WorkerProcess
from earnevents.worker.completions import recorded

pytestmark = pytest.mark.worker

WINDOW = float(DEFAULTS["EARNEVENTS_DEDUP_WINDOW"])
MODULE = "e2e_receivers"


class User:
    """Stands for the sender class of the same name in the worker's module: senders are
    known by their qualified name, so this one and ``"User"`` are the same sender."""


class Account(BaseModel):
    _collection = "r_accounts"
    token: str


@pytest.fixture(scope="module")
def queue() -> str:
    """The module's queue (overrides conftest's per-test one): its worker serves every test."""
    return f"q-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def worker(redis_url: str, queue: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    env = {
        "EARNEVENTS_REDIS_URI": redis_url,
        "EARNEVENTS_QUEUE": queue,
        "EARNEVENTS_HANDLER_MODULES": MODULE,
        "EARNEVENTS_MONGO_URI": "",
        "EARNEVENTS_SCHEDULER_INTERVAL": "0.05",
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    log_path = Path(tmp_path_factory.mktemp("receivers")) / "worker.log"
    process = WorkerProcess(env, concurrency=2, log_path=str(log_path))
    process.start()
    yield process
    process.stop()


def seen(rclient: redis.Redis, tok: str, count: int) -> list[dict]:
    """The ``count`` records for ``tok``, once no more come in for a moment."""
    wait_results(rclient, tok, count)
    assert stays(lambda: len(results(rclient, tok)) == count, 0.3), results(rclient, tok)
    return results(rclient, tok)


async def failed_of(handler: str, count: int, timeout: float = 20) -> list[FailedJob]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = await event_bus.get_failed_jobs(handler=handler)
        if len(jobs) >= count:
            return jobs
        if time.monotonic() > deadline:
            raise TimeoutError(f"expected {count} failed job(s) of {handler}, have {len(jobs)}")
        await asyncio.sleep(0.05)


async def test_a_sender_filter_runs_a_receiver_only_for_its_sender(bus, worker, rclient):
    # Given r.signup receivers filtered to User (a class) and to "Admin" (an event_handler, by str),
    # and one without a filter
    from_user, from_admin, from_nobody = token(), token(), token()
    # When r.signup is published from User (the class), from "Admin", and with no sender
    await bus.publish(Event("r.signup", {"token": from_user}), sender=User)
    await bus.publish_batch([Event("r.signup", {"token": from_admin})], sender="Admin")
    await bus.publish(Event("r.signup", {"token": from_nobody}))
    # Then each filtered one ran for its own sender only, the unfiltered one for every
    # event, given the sender's name first and the data keys and the event by keyword
    by_user = {r["handler"]: r for r in seen(rclient, from_user, 3)}
    assert set(by_user) == {"signup_from_user", "signup_from_anyone", "every_event"}
    assert by_user["signup_from_user"]["sender"] == by_user["signup_from_anyone"]["sender"] == "User"
    assert by_user["signup_from_anyone"]["kwargs"] == []  # token named; event= taken by name
    by_admin = {r["handler"]: r for r in seen(rclient, from_admin, 3)}
    assert set(by_admin) == {"signup_from_admin", "signup_from_anyone", "every_event"}
    assert by_admin["signup_from_admin"]["sender"] == "Admin"
    by_nobody = {r["handler"]: r for r in seen(rclient, from_nobody, 2)}
    assert set(by_nobody) == {"signup_from_anyone", "every_event"}
    assert by_nobody["signup_from_anyone"]["sender"] is None


async def test_an_event_from_another_sender_makes_no_job_for_a_filtered_receiver(bus, worker, rclient):
    # Given a receiver filtered to User that always fails (no retries), beside an unfiltered one
    tok = token()
    explodes = f"{MODULE}.guarded_explodes"
    # When r.guarded is published from "Other"
    event = Event("r.guarded", {"token": tok})
    await bus.publish(event, sender="Other")
    assert {r["handler"] for r in seen(rclient, tok, 2)} == {"guarded_witness", "every_event"}
    # Then the filtered receiver got no job: no failed job, no completion record, no claim
    assert recorded(rclient, WINDOW, event.id, f"{MODULE}.guarded_witness")
    assert stays(lambda: not rclient.exists(keys.job_claims(event.id)), 0.3)
    assert await bus.count_failed_jobs(handler=explodes) == 0
    assert not recorded(rclient, WINDOW, event.id, explodes)
    # while from User it runs (and fails, recorded at once)
    await bus.publish(Event("r.guarded", {"token": tok}), sender=User)
    [job] = await failed_of(explodes, 1)
    assert job.event.sender == "User" and job.error.startswith("RuntimeError: a receiver filtered to User")


async def test_wildcards_match_one_or_any_number_of_segments_and_each_handler_runs_once(bus, worker, rclient):
    # Given @on("w.user.*"), @on(["w.user.created", "w.**"]), @event_handler("w.**") and @on("**")
    toks = {name: token() for name in ("w.user.created", "w.user.profile.updated", "w.user", "w")}
    # When an event of each name is published
    await bus.publish_batch([Event(name, {"token": tok}) for name, tok in toks.items()])
    # Then w.user.* matches one segment more only; w.** and ** match any number, none included;
    # and the receiver that both its exact name and its pattern match runs once
    everywhere = {"exact_and_everything", "everything_under_w", "every_event"}
    handlers = {
        name: sorted(r["handler"] for r in seen(rclient, tok, 4 if name == "w.user.created" else 3))
        for name, tok in toks.items()
    }
    assert handlers == {
        "w.user.created": sorted(everywhere | {"any_user_event"}),
        "w.user.profile.updated": sorted(everywhere),
        "w.user": sorted(everywhere),
        "w": sorted(everywhere),
    }


async def test_receivers_get_the_data_keys_they_name_and_a_mismatch_is_a_clear_failed_job(bus, worker, rclient):
    # Given def paid(sender, token, order_id, total=0.0), without **kwargs
    tok = token()
    handler = f"{MODULE}.paid"
    # When r.order.paid comes with the keys it names, with one more, and with one missing
    await bus.publish(Event("r.order.paid", {"token": tok, "order_id": 7}))
    extra = Event("r.order.paid", {"token": tok, "order_id": 8, "coupon": "X"})
    missing = Event("r.order.paid", {"token": tok})
    await bus.publish_batch([extra, missing])
    # Then it ran with the first; the others are failed jobs naming the keys, recorded without retries
    jobs = {job.event.id: job for job in await failed_of(handler, 2)}
    assert [r["order_id"] for r in results(rclient, tok) if r["handler"] == "paid"] == [7]
    assert jobs[extra.id].error.startswith(f"ReceiverSignatureError: receiver {handler} cannot take the data")
    assert "data key(s) ['coupon'] are not among its parameters (add **kwargs" in jobs[extra.id].error
    assert "it requires ['order_id'], which the data lacks" in jobs[missing.id].error
    assert {job.attempts for job in jobs.values()} == {1}
    assert "TypeError: paid()" not in jobs[extra.id].traceback


async def test_a_failing_receiver_on_two_events_is_retried_and_recorded_per_event(bus, worker, rclient):
    # Given a receiver of r.flaky.a and r.flaky.b that fails (max_retries=1)
    tok = token()
    handler = f"{MODULE}.always_fails"
    # When both events are published
    await bus.publish_batch([Event("r.flaky.a", {"token": tok}), Event("r.flaky.b", {"token": tok})])
    # Then each (event, receiver) pair is tried twice and recorded as a failed job of its own
    jobs = {job.event.name: job for job in await failed_of(handler, 2)}
    assert set(jobs) == {"r.flaky.a", "r.flaky.b"}
    assert {job.attempts for job in jobs.values()} == {2}
    assert all(job.error == "ValueError: receiver failure 2" for job in jobs.values())
    # and retrying one runs the receiver again, found by its dotted name, for that event only
    rclient.set(f"heal:{tok}", 1)
    await bus.retry_job(jobs["r.flaky.a"].id)
    tries = wait_results(rclient, tok, 2 + 2 + 2 + 1)  # 2 tries each, every_event twice, then the retry
    assert [(r["name"], r["attempt"]) for r in tries if r["handler"] == "always_fails"][-1] == ("r.flaky.a", 3)
    assert recorded(rclient, WINDOW, jobs["r.flaky.a"].event.id, handler)
    assert [job.event.name for job in await bus.get_failed_jobs(handler=handler)] == ["r.flaky.b"]


async def test_a_model_event_carries_its_model_class_as_sender(bus, worker, rclient):
    # Given @on("account.created", sender=Account) in the worker
    tok, other = token(), token()
    # When account.created is dispatched for the model, and published by hand from another sender
    await dispatch_model_event(bus, Account, "created", "acc-1", Account(token=tok))
    await bus.publish(Event("account.created", {"token": other, "id": "acc-2"}), sender="Billing")
    # Then the receiver ran for the model's event, with "Account" as sender, and not for the other
    by_handler = {r["handler"]: r for r in seen(rclient, tok, 2)}
    assert by_handler["account_created"] == {"handler": "account_created", "sender": "Account", "id": "acc-1"}
    assert {r["handler"] for r in seen(rclient, other, 1)} == {"every_event"}
