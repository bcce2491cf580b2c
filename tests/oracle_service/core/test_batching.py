"""Micro-batcher and rate-limit building blocks."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from oracle_service.core import ratelimit
from oracle_service.core.batching import MicroBatcher
from oracle_service.core.ratelimit import TokenBucket

GUARD_S = 60.0  # only a broken batcher takes this long


def test_batcher_fills_batches_up_to_the_limit_and_keeps_order():
    sizes: list[int] = []

    async def double(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return [2 * i for i in items]

    async def go() -> list[list[int]]:
        batcher = MicroBatcher(double, max_batch_size=4, max_wait_s=0.2)
        try:
            return await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(5)))
        finally:
            await batcher.close()

    results = asyncio.run(go())
    assert results == [[2 * i, 2 * (i + 100)] for i in range(5)]
    assert sizes == [4, 4, 2]


def test_batcher_sends_a_partial_batch_after_max_wait():
    async def echo(items: list[str]) -> list[str]:
        return items

    async def go() -> float:
        batcher = MicroBatcher(echo, max_batch_size=64, max_wait_s=0.15)
        started = time.monotonic()
        try:  # a batch that never went out would fail here instead of hanging
            assert await asyncio.wait_for(batcher.submit(["only"]), GUARD_S) == ["only"]
            return time.monotonic() - started
        finally:
            await batcher.close()

    assert asyncio.run(go()) >= 0.14  # it waited for company up to max_wait_s, then sent


def test_batcher_hands_a_failure_to_every_caller():
    async def broken(items: list[int]) -> list[int]:
        raise RuntimeError("device lost")

    async def go() -> list:
        batcher = MicroBatcher(broken, max_batch_size=8, max_wait_s=0.05)
        try:
            return await asyncio.gather(
                *(batcher.submit([i]) for i in range(3)), return_exceptions=True
            )
        finally:
            await batcher.close()

    outcomes = asyncio.run(go())
    assert all(isinstance(o, RuntimeError) and "device lost" in str(o) for o in outcomes)


class FakeClock:
    """Time that passes only when the code under test sleeps (no dependence on speed)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def test_token_bucket_paces_after_the_burst(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(ratelimit, "asyncio", SimpleNamespace(Lock=asyncio.Lock,
                                                              sleep=clock.sleep))

    async def go() -> list[float]:
        bucket = TokenBucket(per_minute=1200, burst_s=0.25, clock=clock)  # 20/s, burst of 5
        stamps = []
        for _ in range(10):
            await bucket.acquire()
            stamps.append(clock.now)
        return stamps

    stamps = asyncio.run(go())
    assert stamps[:5] == [0.0] * 5  # the burst passes at once
    assert stamps[5:] == pytest.approx([0.05, 0.10, 0.15, 0.20, 0.25])  # then 20/s
