"""Concurrency slots: hung calls move out of the way; in-flight calls stay bounded."""

from __future__ import annotations

import asyncio

import pytest

from oracle_service.core.slots import CallSlots

GUARD_S = 60.0  # only a broken slot rule takes this long
POLL_S = 0.01


async def until(condition) -> None:
    """Wait for a state of the slots (not for a duration); fails after GUARD_S."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(POLL_S)

    await asyncio.wait_for(poll(), GUARD_S)


def test_hung_calls_move_to_slow_slots_and_free_the_regular_ones():
    async def go():
        slots = CallSlots(regular=2, slow=3, slow_after_s=0.05)
        hang = asyncio.Event()
        hung = [asyncio.ensure_future(slots.run(hang.wait)) for _ in range(5)]
        await until(lambda: slots.moved == 3)  # the slow slots are full
        moved, in_use = slots.moved, slots.slow_in_use
        healthy = asyncio.ensure_future(slots.run(lambda: asyncio.sleep(0, result="ok")))
        for _ in range(5):  # a free slot would let it finish within these turns of the loop
            await asyncio.sleep(0)
        blocked = not healthy.done()
        hang.set()
        await asyncio.gather(*hung)
        return moved, in_use, blocked, await healthy, slots.slow_in_use

    moved, in_use, blocked, result, left = asyncio.run(go())
    assert (moved, in_use) == (3, 3)  # never more than regular + slow in flight
    assert blocked  # 2 hung calls beyond the slow limit keep their regular slots
    assert result == "ok" and left == 0


def test_a_healthy_call_runs_at_once_beside_hung_ones_that_moved():
    async def go():
        slots = CallSlots(regular=1, slow=4, slow_after_s=0.05)
        hung = [asyncio.ensure_future(slots.run(asyncio.Event().wait)) for _ in range(4)]
        await until(lambda: slots.moved == 4)
        result = await asyncio.wait_for(slots.run(lambda: asyncio.sleep(0, result=7)), GUARD_S)
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
        return result, slots.slow_in_use

    assert asyncio.run(go()) == (7, 0)


def test_cancelling_the_caller_cancels_the_call_and_frees_its_slot():
    async def go():
        slots = CallSlots(regular=1, slow=0, slow_after_s=10)
        started, cancelled = asyncio.Event(), []

        async def call():
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        caller = asyncio.ensure_future(slots.run(call))
        await started.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        return cancelled, await asyncio.wait_for(slots.run(lambda: asyncio.sleep(0, 1)), GUARD_S)

    assert asyncio.run(go()) == ([True], 1)
