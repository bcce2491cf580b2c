"""The chunk queue of one iteration's votes: chunks of perturbation indices (ray.chunk_size;
auto: sized from m and the live workers so every worker is busy), which are queued and
which worker holds which, re-dispatch of the chunks of failed or straggling workers within
ray.max_redispatch. Plain Python: sending a chunk is a function it is given (the
coordinator's Ray call), so it is tested without a cluster.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compo.config import RayConfig
from compo.errors import DistributedError

log = logging.getLogger(__name__)


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


# send(worker, chunk) -> a handle of the call (a Ray object ref) that `take` gets back
Send = Callable[[Any, Chunk], Any]


class ChunkQueue:
    """Queued chunks and the calls that hold the others. A worker is any object with the
    fields `name`, `in_flight` (chunks it holds) and `last_heard` (monotonic seconds)."""

    def __init__(self, settings: RayConfig, batch: int | None = None):
        self.settings, self.batch = settings, batch  # batch: the service's generation batch
        self.queue: deque[Chunk] = deque()
        self.tasks: dict[Any, tuple[Chunk, Any]] = {}
        self.redispatched = 0

    def reset(self, indices: Sequence[int], workers: int) -> None:
        """A new request: all its chunks queued (sized for `workers` live workers when
        ray.chunk_size is auto), nothing held."""
        size = chunk_length(self.settings.chunk_size, len(indices), workers, self.batch)
        self.queue = deque(make_chunks(indices, size))
        self.tasks = {}

    def refs(self) -> list:
        return list(self.tasks)

    def assign(self, workers: Sequence[Any], send: Send, now: float) -> None:
        """Queued chunks to `workers`, one each per round, up to ray.tasks_in_flight each
        (fewer chunks than slots: every worker gets one before any gets two)."""
        for _ in range(self.settings.tasks_in_flight):
            for worker in workers:
                while self.queue and self.queue[0].done:
                    self.queue.popleft()
                if not self.queue:
                    return
                if worker.in_flight < self.settings.tasks_in_flight:
                    self.send(worker, self.queue.popleft(), send, now)

    def send(self, worker: Any, chunk: Chunk, send: Send, now: float) -> None:
        self.tasks[send(worker, chunk)] = (chunk, worker)
        if worker.in_flight == 0:
            worker.last_heard = now
        worker.in_flight += 1
        chunk.sent += 1

    def take(self, ref) -> tuple[Chunk, Any] | None:
        """The chunk and worker of a finished call (None: not one of ours)."""
        if ref not in self.tasks:
            return None
        chunk, worker = self.tasks.pop(ref)
        worker.in_flight = max(0, worker.in_flight - 1)
        return chunk, worker

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

    def hand_back(self, worker: Any, chunk: Chunk | None, reason: str) -> None:
        """The chunks a failed worker held (and the one that failed) go back to the queue."""
        lost = [chunk] if chunk else []
        for ref, (other, owner) in list(self.tasks.items()):
            if owner is worker:
                del self.tasks[ref]
                lost.append(other)
        for item in lost:
            self.requeue(item, reason)

    def stragglers(self, workers: Sequence[Any], now: float) -> list[tuple[Any, Any]]:
        """Workers silent past ray.straggler_timeout_s while holding chunks: their chunks
        are queued again (kept as tasks: a late answer still counts); (worker, a ref of
        theirs) for each."""
        found = []
        for worker in workers:
            if not worker.in_flight or now - worker.last_heard <= self.settings.straggler_timeout_s:
                continue
            log.warning("%s: no answer for %.0f s; re-dispatching its chunks", worker.name,
                        now - worker.last_heard)
            held = [(ref, chunk) for ref, (chunk, owner) in self.tasks.items() if owner is worker]
            for _, chunk in held:
                self.requeue(chunk, f"{worker.name} straggling")
            if held:
                found.append((worker, held[0][0]))
        return found
