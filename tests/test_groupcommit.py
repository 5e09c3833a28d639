"""Group commit (pure asyncio): who shares which send, how long each caller waits, how failures travel."""

from __future__ import annotations

import asyncio
import math

import pytest

from earnevents.groupcommit import GroupCommit


async def test_a_lone_caller_sends_at_once_and_latecomers_share_the_next_send():
    sends: list[list[int]] = []
    gate = asyncio.Event()

    async def send(items: list[int], deadline: float) -> None:
        sends.append(items)
        if len(sends) == 1:
            await gate.wait()  # the first send is in flight while the others arrive

    commit = GroupCommit(send)
    first = asyncio.create_task(commit([0]))
    await asyncio.sleep(0)
    others = [asyncio.create_task(commit([i])) for i in range(1, 5)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *others)
    assert sends == [[0], [1, 2, 3, 4]]


async def test_each_caller_gets_the_results_of_its_own_items_from_a_shared_send():
    sends: list[list[int]] = []
    gate = asyncio.Event()

    async def send(items: list[int], deadline: float) -> list[int]:
        sends.append(items)
        if len(sends) == 1:
            await gate.wait()
        return [item * 10 for item in items]

    commit: GroupCommit[int, int] = GroupCommit(send)
    first = asyncio.create_task(commit([1]))
    await asyncio.sleep(0)
    others = [asyncio.create_task(commit(items)) for items in ([2, 3], [4], [5, 6, 7])]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(first, *others) == [[10], [20, 30], [40], [50, 60, 70]]
    assert sends == [[1], [2, 3, 4, 5, 6, 7]]


async def test_a_failed_send_reaches_exactly_the_callers_it_carried():
    async def send(items: list[int], deadline: float) -> None:
        await asyncio.sleep(0.01)
        if 2 in items:
            raise ConnectionError("down")

    commit = GroupCommit(send)
    first = asyncio.create_task(commit([1]))
    await asyncio.sleep(0)
    late = [asyncio.create_task(commit([2])), asyncio.create_task(commit([3]))]
    results = await asyncio.gather(first, *late, return_exceptions=True)
    assert results[0] == []  # a send returning None gives its callers no results
    assert [type(r) for r in results[1:]] == [ConnectionError, ConnectionError]


async def test_the_first_caller_returns_after_its_own_send_not_after_the_latecomers():
    # Given a first send that takes 50 ms and a latecomers' send that hangs
    release = asyncio.Event()

    async def send(items: list[int], deadline: float) -> None:
        if items == [1]:
            await asyncio.sleep(0.05)
        else:
            await release.wait()

    commit = GroupCommit(send)
    first = asyncio.create_task(commit([1]))
    await asyncio.sleep(0)
    late = asyncio.create_task(commit([2]))
    # When the first send ends, Then the first caller is done while the latecomer's send is in flight
    await asyncio.wait_for(first, 1)
    assert not late.done()
    release.set()
    await asyncio.wait_for(late, 1)


async def test_cancelling_the_sending_caller_returns_at_once_and_the_waiters_are_still_served():
    sent: list[list[int]] = []
    entered = asyncio.Event()
    slow = asyncio.Event()

    async def send(items: list[int], deadline: float) -> None:
        sent.append(items)
        entered.set()
        if items == [1]:
            await asyncio.sleep(10)
        else:
            await slow.wait()

    commit = GroupCommit(send)
    first = asyncio.create_task(commit([1]))
    await entered.wait()
    waiter = asyncio.create_task(commit([2]))
    await asyncio.sleep(0)
    first.cancel()  # cancels the first send; it must not wait for the waiter's send
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, 0.5)
    slow.set()
    await asyncio.wait_for(waiter, 1)
    assert sent == [[1], [2]]


async def test_a_waiter_cancelled_before_its_send_starts_is_never_sent():
    sent: list[list[int]] = []
    gate = asyncio.Event()

    async def send(items: list[int], deadline: float) -> None:
        sent.append(items)
        if items == [1]:
            await gate.wait()

    commit = GroupCommit(send)
    first = asyncio.create_task(commit([1]))
    await asyncio.sleep(0)
    # Given a waiter that gives up (wait_for) while the first send is still in flight
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(commit([2]), 0.05)
    kept = asyncio.create_task(commit([3]))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, kept)
    # Then its items were withdrawn; the others' went out
    assert sent == [[1], [3]]


async def test_each_send_gets_the_earliest_deadline_of_the_callers_it_carries():
    deadlines: list[float] = []
    gate = asyncio.Event()

    async def send(items: list[int], deadline: float) -> None:
        deadlines.append(deadline)
        if len(deadlines) == 1:
            await gate.wait()

    commit = GroupCommit(send)
    first = asyncio.create_task(commit([1]))
    await asyncio.sleep(0)
    late = [asyncio.create_task(commit([2], 50.0)), asyncio.create_task(commit([3], 20.0))]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *late)
    assert deadlines == [math.inf, 20.0]
