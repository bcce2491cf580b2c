"""Concurrency slots that hung calls cannot monopolise.

A call runs in one of `regular` slots. Once it has run `slow_after_s`, it moves to one of
`slow` extra slots (when one is free) and gives its regular slot to the next call. So
however many calls hang, the regular slots keep serving healthy calls after at most
`slow_after_s`, while at most regular + slow calls are ever in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class CallSlots:
    """Run calls under the regular/slow slot rule; `moved` counts calls that went slow."""

    def __init__(self, regular: int, slow: int, slow_after_s: float) -> None:
        self._regular = asyncio.Semaphore(regular)
        self._slow_limit = slow
        self._slow_after_s = slow_after_s
        self.slow_in_use = 0
        self.moved = 0

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Await `call()` in a slot (in the caller's task: cancelling it cancels the call)."""
        await self._regular.acquire()
        held = {"regular": True, "slow": False}

        def move_to_a_slow_slot() -> None:
            if self.slow_in_use < self._slow_limit:
                self.slow_in_use += 1
                self.moved += 1
                self._regular.release()
                held.update(regular=False, slow=True)

        timer = asyncio.get_running_loop().call_later(self._slow_after_s, move_to_a_slow_slot)
        try:
            return await call()
        finally:
            timer.cancel()
            if held["regular"]:
                self._regular.release()
            if held["slow"]:
                self.slow_in_use -= 1
