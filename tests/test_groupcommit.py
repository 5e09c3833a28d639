"""Group commit (pure asyncio): who shares which send, and how failures travel."""

from __future__ import annotations

import asyncio

import pytest

from earnevents.groupcommit import GroupCommit


async def test_a_lone_caller_sends_at_once_and_latecomers_share_the_next_send():
    sends: list[list[int]] = []
    gate = asyncio.Event()

    async def send(items: list[int]) -> None:
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


async def test_a_failed_send_reaches_exactly_the_callers_it_carried():
    async def send(items: list[int]) -> None:
        await asyncio.sleep(0.01)
        if 2 in items:
            raise ConnectionError("down")

    commit = GroupCommit(send)
    first = asyncio.create_task(commit([1]))
    await asyncio.sleep(0)
    late = [asyncio.create_task(commit([2])), asyncio.create_task(commit([3]))]
    results = await asyncio.gather(first, *late, return_exceptions=True)
    assert results[0] is None
    assert [type(r) for r in results[1:]] == [ConnectionError, ConnectionError]


async def test_cancelling_the_sending_caller_still_serves_the_waiters_then_cancels_it():
    sent: list[list[int]] = []
    entered = asyncio.Event()

    async def send(items: list[int]) -> None:
        sent.append(items)
        entered.set()
        await asyncio.sleep(0.05)

    commit = GroupCommit(send)
    first = asyncio.create_task(commit([1]))
    await entered.wait()
    waiter = asyncio.create_task(commit([2]))
    await asyncio.sleep(0)
    first.cancel()  # cancels the first send; the waiter's items must still go out
    await asyncio.wait_for(waiter, 2)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert sent == [[1], [2]]
