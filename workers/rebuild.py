"""The accepted step rebuilt by the workers: each one computes a shard of rows of
sum y_i z_i (compo.estimator.RowShards) instead of the coordinator regenerating every
voted direction alone. Only block norms, threshold counts and the kept entries travel;
the step is bit-identical to the single-process one for any number of workers. Calls,
failures and stragglers go through the actor manager (workers/manager.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from compo.errors import DistributedError
from compo.estimator import ShardCall, Step
from workers.group import WorkerGroup
from workers.manager import WorkerState
from workers.stats import payload_size


def as_tensors(result: Any) -> Any:
    """A worker's numpy answer as tensors; (positions, values) with int64 positions."""
    if isinstance(result, tuple):
        positions, values = result
        return torch.from_numpy(positions.astype(np.int64)), torch.from_numpy(values.copy())
    return torch.from_numpy(result.copy())  # Ray hands out read-only arrays


class ShardCalls:
    """Runs one typed shard call (compo.estimator SquareSums, Counts, Step) on every shard
    across the usable workers, through the actor manager: a shard stays with the worker
    that holds its rows; the shard of a lost or straggling call goes elsewhere."""

    def __init__(self, group: WorkerGroup, head: tuple):
        self.group, self.head = group, head  # head: (round, version, seed, iteration, kept)
        self.owners: dict[int, WorkerState] = {}

    def run(self, call: ShardCall, shards: Sequence[range]) -> list:
        group, manager = self.group, self.group.manager
        started, pending = time.perf_counter(), ShardQueue(self.owners).start(len(shards))
        while len(pending.results) < len(shards):
            self._assign(pending, call, shards)
            ready = manager.wait_any()
            quiet = time.perf_counter() - started > group.settings.load_timeout_s and \
                not pending.sent
            if ready is None or quiet:
                raise DistributedError(group.missing(
                    f"rebuilt rows {shards[pending.todo[0]].start}.. of the step"))
            for handle in ready:
                taken = manager.take(handle)
                if taken is None:
                    continue
                if handle not in pending.sent:  # a prepare, or a late answer of before
                    group.answered(handle, taken)
                    continue
                index = pending.sent.pop(handle)
                ok, value = manager.value(handle, taken)  # a failure: the shard comes back
                if ok:
                    taken.worker.last_heard = time.monotonic()
                    if taken.handed_back:  # a straggler that answers is back
                        taken.worker.ready_round = group.round
                    group.count("rebuild_results", value)
                    pending.results.setdefault(index, as_tensors(value))
            manager.stragglers(time.monotonic())
        group.stats.seconds[f"rebuild_{call.method}"] += time.perf_counter() - started
        ordered = [pending.results[i] for i in range(len(shards))]
        if isinstance(call, Step):  # the positions the step may change: versions compare
            group.weights.watch(torch.cat([positions for positions, _ in ordered]))
        return ordered

    def _assign(self, pending: ShardQueue, call: ShardCall, shards: Sequence[range]) -> None:
        """Send queued shards to idle usable workers, each to its owner when it can, else
        to an idle worker that owns none (O(shards + workers))."""
        group, manager = self.group, self.group.manager
        busy = {id(manager.calls[h].worker) for h in pending.sent if h in manager.calls}
        idle = {id(w): w for w in group.usable() if id(w) not in busy}
        owning = {id(w) for w in self.owners.values()}
        spare = iter([w for w in idle.values() if id(w) not in owning])
        fixed = payload_size(*self.head, call)  # all but the shard's rows
        left = deque()
        while pending.todo:
            index = pending.todo.popleft()
            if not idle:
                left.append(index)
                continue
            owner = self.owners.get(index)
            worker = owner if owner is not None and id(owner) in idle else next(
                (w for w in spare if id(w) in idle), None) or next(iter(idle.values()))
            del idle[id(worker)]
            self.owners[index] = worker
            handle = manager.call(worker, "rebuild", *self.head, call, shards[index],
                                  work=index, queue=pending)
            pending.sent[handle] = index
            group.stats.bytes["rebuild_args"] += fixed + payload_size(shards[index])
        pending.todo.extend(left)


class ShardQueue:
    """One shard call's shards still to send, the calls out and the results in (a
    WorkQueue of workers/manager.py: lost or straggling shards come back first in line)."""

    def __init__(self, owners: dict[int, WorkerState]):
        self.owners, self.results, self.sent = owners, {}, {}
        self.todo: deque[int] = deque()

    def start(self, count: int) -> ShardQueue:
        self.todo.extend(range(count))
        return self

    def requeue(self, index: int, reason: str) -> None:
        if index not in self.results and index not in self.todo:
            self.owners.pop(index, None)
            self.todo.appendleft(index)
