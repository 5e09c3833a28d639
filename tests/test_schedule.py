"""The delay schedule: due messages reach the queue once, however many workers poll."""

from __future__ import annotations

import json
import threading

from earnevents import keys, schedule
from earnevents.worker.scheduler import Mover


def park(rclient, queue: str, delay: float, n: int, prefix: str = "m") -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    script_keys, argv = schedule.add_args(queue, [(i, "t.x", json.dumps({"id": i})) for i in ids], delay=delay)
    rclient.eval(schedule.ADD_SCRIPT, len(script_keys), *script_keys, *argv)
    return ids


def test_two_movers_racing_enqueue_each_due_message_once(redis_url, rclient, queue):
    ids = park(rclient, queue, 0, 3000)
    movers = [Mover(redis_url, [queue], 0.01) for _ in range(2)]
    barrier = threading.Barrier(2)
    moved = [0, 0]

    def run(i: int) -> None:
        barrier.wait()
        moved[i] = movers[i].move_due()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m in movers:
        m.stop()
    queued = [json.loads(x)["id"] for x in rclient.lrange(queue, 0, -1)]
    assert sorted(queued) == sorted(ids)
    assert sum(moved) == 3000
    assert rclient.zcard(keys.scheduled_zset(queue)) == 0
    assert rclient.hlen(keys.scheduled_payloads(queue)) == 0
    assert rclient.hlen(keys.scheduled_names(queue)) == 0
    assert rclient.zcard(keys.scheduled_by_event(queue, "t.x")) == 0


def test_messages_not_yet_due_stay_parked(redis_url, rclient, queue):
    park(rclient, queue, 0, 2, prefix="now")
    park(rclient, queue, 60, 3, prefix="later")
    mover = Mover(redis_url, [queue], 0.01)
    try:
        assert mover.move_due() == 2
    finally:
        mover.stop()
    assert rclient.llen(queue) == 2
    assert rclient.zcard(keys.scheduled_zset(queue)) == 3


def test_scheduling_the_same_id_twice_keeps_one_message(rclient, queue):
    park(rclient, queue, 5, 1)
    park(rclient, queue, 5, 1)
    assert rclient.zcard(keys.scheduled_zset(queue)) == 1


def test_reschedule_if_moves_a_message_only_while_it_is_still_due_when_read(rclient, queue):
    # Given a message parked for unix time 2e9 (read so), then moved by someone else to 2e9 + 5
    script_keys, argv = schedule.add_args(queue, [("occ", "t.x", "v1")], at=2e9)
    rclient.eval(schedule.ADD_SCRIPT, len(script_keys), *script_keys, *argv)
    was = rclient.zscore(keys.scheduled_zset(queue), "occ")
    script_keys, argv = schedule.add_args(queue, [("occ", "t.x", "v2")], at=2e9 + 5)
    rclient.eval(schedule.ADD_SCRIPT, len(script_keys), *script_keys, *argv)
    # When it is rescheduled on what was read: nothing changes
    script_keys, argv = schedule.reschedule_if_args(queue, ("occ", "t.x", "v3"), was=was, at=2e9 + 9)
    assert rclient.eval(schedule.RESCHEDULE_IF_SCRIPT, len(script_keys), *script_keys, *argv) == 0
    assert rclient.zscore(keys.scheduled_zset(queue), "occ") == 2e9 + 5
    assert rclient.hget(keys.scheduled_payloads(queue), "occ") == b"v2"
    # When it is rescheduled on its current due time: it moves, with the new message, in every index
    script_keys, argv = schedule.reschedule_if_args(queue, ("occ", "t.x", "v3"), was=2e9 + 5, at=2e9 + 9)
    assert rclient.eval(schedule.RESCHEDULE_IF_SCRIPT, len(script_keys), *script_keys, *argv) == 1
    assert rclient.zscore(keys.scheduled_zset(queue), "occ") == 2e9 + 9
    assert rclient.zscore(keys.scheduled_by_event(queue, "t.x"), "occ") == 2e9 + 9
    assert rclient.hget(keys.scheduled_payloads(queue), "occ") == b"v3"
    # And a message no longer pending is not put back
    rclient.delete(*schedule.schedule_keys(queue))
    assert rclient.eval(schedule.RESCHEDULE_IF_SCRIPT, len(script_keys), *script_keys, *argv) == 0
    assert rclient.zcard(keys.scheduled_zset(queue)) == 0
