"""Micro-batcher and rate-limit building blocks."""

from __future__ import annotations

import asyncio
import time

import pytest

from oracle_service.core.batching import MicroBatcher
from oracle_service.core.ratelimit import TokenBucket


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
        try:
            assert await batcher.submit(["only"]) == ["only"]
            return time.monotonic() - started
        finally:
            await batcher.close()

    assert 0.14 <= asyncio.run(go()) < 1.0


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


def test_token_bucket_paces_after_the_burst():
    async def go() -> list[float]:
        bucket = TokenBucket(per_minute=1200, burst_s=0.25)  # 20/s, burst of 5
        stamps = []
        started = time.monotonic()
        for _ in range(10):
            await bucket.acquire()
            stamps.append(time.monotonic() - started)
        return stamps

    stamps = asyncio.run(go())
    assert stamps[4] < 0.05  # the burst passes at once
    assert stamps[9] == pytest.approx(0.25, abs=0.08)  # then 5 more at 20/s
