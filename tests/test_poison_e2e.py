"""End to end: poison items mixed into a stream of good events, one real worker with
one process (``-c 1``): every good event is handled, the worker stays up, every
poison item is dead-lettered."""

from __future__ import annotations

import pytest
from conftest import token, wait_results
from poison import MAX_SIZE, POISONS, foreign

from earnevents import Event
from earnevents.testing import wait_for

pytestmark = pytest.mark.worker


async def test_poison_items_in_the_stream_never_stop_a_one_process_worker(bus, start_worker, rclient, queue):
    # Given a worker with one process and a small maximum message size
    worker = start_worker(concurrency=1, env={"EARNEVENTS_MAX_MESSAGE_SIZE": str(MAX_SIZE)})
    tok = token()
    # When every poison shape is pushed between good events
    for i, make in enumerate(POISONS.values()):
        await bus.publish(Event("t.record", {"token": tok, "i": i}))
        rclient.lpush(queue, make(queue))
    await bus.publish(Event("t.record", {"token": tok, "i": "last"}))
    # And a good message whose routing key names another queue
    rclient.lpush(queue, foreign(queue, queue + "-other", {"token": tok}, "t.where"))
    # Then every good event is handled (two handlers each), the foreign one as this queue's
    recs = wait_results(rclient, tok, 2 * (len(POISONS) + 1) + 1, timeout=30)
    assert sorted(r["repr"].get("i", "") for r in recs if r["handler"] == "record_sync") == sorted(
        [repr(i) for i in range(len(POISONS))] + ["'last'"]
    )
    assert [r["queue"] for r in recs if r["handler"] == "where"] == [queue]
    # And every poison item is in the dead-letter list, each logged once
    wait_for(lambda: rclient.zcard(f"earnevents:{queue}:dead") == len(POISONS), 10, "dead letters")
    assert await bus.count_dead_items() == len(POISONS)
    log = worker.log()
    assert log.count("dropped an item on") == len(POISONS)
    # And the worker is still up and never lost its broker connection
    assert worker.proc.poll() is None
    assert "Unrecoverable" not in log and "Connection to broker lost" not in log
    assert rclient.llen(queue + "-other") == 0
