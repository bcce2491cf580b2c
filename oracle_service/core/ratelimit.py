"""Per-backend rate limits (requests and tokens per minute) as async token buckets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

SECONDS_PER_MINUTE = 60.0


class TokenBucket:
    """Refills `per_minute` units a minute and holds at most `burst_s` seconds' worth."""

    def __init__(
        self, per_minute: float, burst_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = per_minute / SECONDS_PER_MINUTE
        self._capacity = max(self._rate * burst_s, 1.0)
        self._level = self._capacity
        self._clock = clock
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        """Wait until `amount` units are available and take them (FIFO via a lock)."""
        amount = min(amount, self._capacity)  # a huge request waits for a full bucket
        async with self._lock:
            while True:
                now = self._clock()
                self._level = min(self._capacity, self._level + (now - self._updated) * self._rate)
                self._updated = now
                if self._level >= amount:
                    self._level -= amount
                    return
                await asyncio.sleep((amount - self._level) / self._rate)


class RateLimits:
    """Request and token budgets of one backend; None means unlimited."""

    def __init__(
        self, requests_per_minute: float | None, tokens_per_minute: float | None, burst_s: float
    ) -> None:
        self._requests = TokenBucket(requests_per_minute, burst_s) if requests_per_minute else None
        self._tokens = TokenBucket(tokens_per_minute, burst_s) if tokens_per_minute else None

    async def acquire(self, estimated_tokens: float) -> None:
        if self._requests is not None:
            await self._requests.acquire(1.0)
        if self._tokens is not None:
            await self._tokens.acquire(estimated_tokens)
