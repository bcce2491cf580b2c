"""The chunk queue of one iteration's votes: chunks of perturbation indices (ray.chunk_size;
auto: sized from m and the live workers so every worker is busy), the ones still to send,
and re-dispatch within ray.max_redispatch of the chunks the actor manager
(workers/manager.py) hands back from failed or straggling workers. Plain Python: sending a
chunk is a function it is given, so it is tested without a cluster.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compo.config import RayConfig
from compo.errors import DistributedError


@dataclass
class Chunk:
    """Perturbation indices answered by one task; `first` is its place in the request."""

    first: int
    indices: Sequence[int]  # a range() when contiguous: a few bytes on the wire
    sent: int = 0
    done: bool = False


CHUNKS_PER_WORKER = 4  # auto: a worker holds tasks_in_flight (2) and has as many queued


def chunk_length(setting: int | str, count: int, workers: int, batch: int | None = None) -> int:
    """Indices per chunk: ray.chunk_size as set, or auto: about CHUNKS_PER_WORKER chunks per
    worker, at least 1, rounded up to whole generation batches of `batch` (service oracle).
    Votes are the same for any chunking (the tests compare topologies bit for bit)."""
    if setting != "auto":
        return int(setting)
    size = max(1, math.ceil(count / (max(1, workers) * CHUNKS_PER_WORKER)))
    return batch * math.ceil(size / batch) if batch else size


def make_chunks(indices: Sequence[int], size: int) -> list[Chunk]:
    """Chunks of `size` consecutive entries of the index list (O(chunks) for a range)."""
    if isinstance(indices, range) and indices.step == 1:
        return [Chunk(first, indices[first : first + size])
                for first in range(0, len(indices), size)]
    whole = np.asarray(indices, dtype=np.int64)
    breaks = np.concatenate([[0], np.cumsum(np.diff(whole) != 1)]).tolist()  # gaps so far
    values, chunks = whole.tolist(), []
    for first in range(0, len(values), size):
        last = min(len(values), first + size) - 1
        contiguous = breaks[last] == breaks[first]
        chunks.append(Chunk(first, range(values[first], values[last] + 1) if contiguous
                            else values[first : last + 1]))
    return chunks


# send(worker, chunk) -> the handle of the call (workers/manager.py counts it in flight)
Send = Callable[[Any, Chunk], Any]


class ChunkQueue:
    """The chunks still to send (a WorkQueue of workers/manager.py: the manager hands the
    chunks of lost or straggling calls back through `requeue`). A worker is any object
    with the fields `name` and `in_flight` (calls holding work)."""

    def __init__(self, settings: RayConfig, batch: int | None = None):
        self.settings, self.batch = settings, batch  # batch: the service's generation batch
        self.queue: deque[Chunk] = deque()
        self.redispatched = 0

    def reset(self, indices: Sequence[int], workers: int) -> None:
        """A new request: all its chunks queued (sized for `workers` live workers when
        ray.chunk_size is auto)."""
        size = chunk_length(self.settings.chunk_size, len(indices), workers, self.batch)
        self.queue = deque(make_chunks(indices, size))

    def assign(self, workers: Sequence[Any], send: Send) -> None:
        """Queued chunks to `workers`, one each per round, up to ray.tasks_in_flight each
        (fewer chunks than slots: every worker gets one before any gets two)."""
        for _ in range(self.settings.tasks_in_flight):
            for worker in workers:
                while self.queue and self.queue[0].done:
                    self.queue.popleft()
                if not self.queue:
                    return
                if worker.in_flight < self.settings.tasks_in_flight:
                    chunk = self.queue.popleft()
                    chunk.sent += 1
                    send(worker, chunk)

    def requeue(self, chunk: Chunk, reason: str) -> None:
        """Put a chunk back at the front of the queue, within ray.max_redispatch."""
        if chunk.done:
            return
        if chunk.sent > self.settings.max_redispatch:
            raise DistributedError(f"perturbations {chunk.indices[0]}.. failed {chunk.sent} "
                                   f"times (ray.max_redispatch={self.settings.max_redispatch})"
                                   f"; last: {reason}")
        self.redispatched += 1
        self.queue.appendleft(chunk)
