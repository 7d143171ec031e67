"""AdaptiveLimit: bounded in flight, halved on 429 once per window, grows back on success."""

from __future__ import annotations

import asyncio

import pytest

from worker.limiter import AdaptiveLimit


async def test_bounds_calls_in_flight() -> None:
    limit = AdaptiveLimit(maximum=2)
    first, second = await limit.acquire(), await limit.acquire()
    third = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    assert not third.done()
    limit.release(first, throttled=False)
    await asyncio.wait_for(third, 1)
    assert limit.in_flight == 2
    limit.release(second, throttled=False)
    limit.release(third.result(), throttled=False)
    assert limit.in_flight == 0


async def test_a_burst_of_429s_cuts_once_then_each_new_window_cuts_again() -> None:
    seen: list[float] = []
    limit = AdaptiveLimit(maximum=16, on_change=seen.append)
    epochs = [await limit.acquire() for _ in range(8)]
    for epoch in epochs:
        limit.release(epoch, throttled=True)
    assert limit.limit == 8
    epoch = await limit.acquire()
    limit.release(epoch, throttled=True)
    assert limit.limit == 4
    assert seen[0] == 16


async def test_never_below_minimum_and_grows_back_additively() -> None:
    limit = AdaptiveLimit(maximum=4, minimum=1)
    for _ in range(5):
        limit.release(await limit.acquire(), throttled=True)
    assert limit.limit == 1
    for _ in range(3):
        limit.release(await limit.acquire(), throttled=False)
    assert 2 <= limit.limit < 4
    for _ in range(100):
        limit.release(await limit.acquire(), throttled=False)
    assert limit.limit == 4


async def test_a_cancelled_waiter_gives_its_room_back() -> None:
    limit = AdaptiveLimit(maximum=1)
    held = await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limit.release(held, throttled=False)
    assert limit.in_flight == 0
    assert await asyncio.wait_for(limit.acquire(), 1) == 0
