"""A small async micro-batcher: concurrent submissions share one backend call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Queues items; one worker calls `process` on up to `max_batch_size` of them at a time.

    A batch is sent when it is full or `max_wait_s` after its first item arrived.
    """

    def __init__(
        self,
        process: Callable[[list[T]], Awaitable[list[R]]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._process = process
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._full = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Answer `items` (in order) once the batches holding them are processed."""
        return list(await asyncio.gather(*self.enqueue(items)))

    def enqueue(self, items: Sequence[T]) -> list[asyncio.Future[R]]:
        """One future per item; a future cancelled by its caller is skipped."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="micro-batcher")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = [loop.create_future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            self._queue.put_nowait((item, future))
        if self._queue.qsize() >= self._max_batch_size - 1:
            self._full.set()
        return futures

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            await self._dispatch(batch)

    async def _next_batch(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch = [await self._queue.get()]
        if self._queue.qsize() < self._max_batch_size - 1 and self._max_wait_s > 0:
            self._full.clear()
            try:
                await asyncio.wait_for(self._full.wait(), timeout=self._max_wait_s)
            except asyncio.TimeoutError:
                pass  # the wait is over: send what has arrived
        while len(batch) < self._max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _dispatch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        batch = [(item, future) for item, future in batch if not future.done()]
        if not batch:
            return
        items = [item for item, _ in batch]
        futures = [future for _, future in batch]
        if self._on_batch is not None:
            self._on_batch(len(items))
        try:
            results = await self._process(items)
            if len(results) != len(items):
                raise RuntimeError(f"batch of {len(items)} items got {len(results)} results")
        except Exception as exc:  # handed to every waiting caller, not swallowed
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Stop the worker; items still queued fail with RuntimeError."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("micro-batcher closed"))
