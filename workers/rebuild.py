"""The accepted step rebuilt by the workers: each one computes a shard of rows of
sum y_i z_i (compo.estimator.RowShards) instead of the coordinator regenerating every
voted direction alone. Only block norms, threshold counts and the kept entries travel;
the step is bit-identical to the single-process one for any number of workers.
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
from workers.group import WorkerGroup, WorkerState
from workers.stats import payload_size


def as_tensors(result: Any) -> Any:
    """A worker's numpy answer as tensors; (positions, values) with int64 positions."""
    if isinstance(result, tuple):
        positions, values = result
        return torch.from_numpy(positions.astype(np.int64)), torch.from_numpy(values.copy())
    return torch.from_numpy(result.copy())  # Ray hands out read-only arrays


class ShardCalls:
    """Runs one RowShards method on every shard across the usable workers: a shard stays
    with the worker that holds its rows; a failed or straggling call goes elsewhere."""

    def __init__(self, group: WorkerGroup, head: tuple):
        self.group, self.head = group, head  # head: (round, version, seed, iteration, kept)
        self.owners: dict[int, WorkerState] = {}

    def run(self, call: ShardCall, shards: Sequence[range]) -> list:
        group, settings = self.group, self.group.settings
        started, results = time.perf_counter(), {}
        calls: dict[Any, tuple[int, WorkerState, float]] = {}
        todo = deque(range(len(shards)))
        while len(results) < len(shards):
            self._assign(todo, calls, call, shards)
            ready = group.wait_any(list(calls) + group.pending_refs())
            quiet = time.perf_counter() - started > settings.load_timeout_s and not calls
            if ready is None or quiet:
                raise DistributedError(group.missing(
                    f"rebuilt rows {shards[todo[0]].start}.. of the step"))
            for ref in ready:
                if ref not in calls:
                    group.answered(ref)  # a restarted worker finished preparing
                    continue
                index, worker, _ = calls.pop(ref)
                try:
                    value = group.transport.get(ref)
                except group.transport.Failed as error:
                    group.failed(worker, error)
                    self.owners.pop(index, None)
                    if index not in results:
                        todo.appendleft(index)
                    continue
                group.count("rebuild_results", value)
                results.setdefault(index, as_tensors(value))
            self._requeue_stragglers(calls, todo, results)
        group.stats.seconds[f"rebuild_{call.method}"] += time.perf_counter() - started
        ordered = [results[i] for i in range(len(shards))]
        if isinstance(call, Step):  # the positions the step may change: all the versions compare
            group.weights.watch(torch.cat([positions for positions, _ in ordered]))
        return ordered

    def _assign(self, todo: deque, calls: dict, call: ShardCall,
                shards: Sequence[range]) -> None:
        """Send queued shards to idle usable workers, each to its owner when it can, else
        to an idle worker that owns none (O(shards + workers))."""
        busy = {id(worker) for _, worker, _ in calls.values()}
        idle = {id(w): w for w in self.group.usable() if id(w) not in busy}
        owning = {id(w) for w in self.owners.values()}
        spare = iter([w for w in idle.values() if id(w) not in owning])
        fixed = payload_size(*self.head, call)  # all but the shard's rows
        left = deque()
        while todo:
            index = todo.popleft()
            if not idle:
                left.append(index)
                continue
            owner = self.owners.get(index)
            worker = owner if owner is not None and id(owner) in idle else next(
                (w for w in spare if id(w) in idle), None) or next(iter(idle.values()))
            del idle[id(worker)]
            self.owners[index] = worker
            handle = self.group.transport.call(worker.actor, "rebuild", *self.head, call,
                                               shards[index])
            calls[handle] = (index, worker, time.monotonic())
            self.group.stats.bytes["rebuild_args"] += fixed + payload_size(shards[index])
        todo.extend(left)

    def _requeue_stragglers(self, calls: dict, todo: deque, results: dict) -> None:
        """A call silent past ray.straggler_timeout_s: its shard goes to another worker."""
        now = time.monotonic()
        for ref, (index, worker, sent) in list(calls.items()):
            late = now - sent > self.group.settings.straggler_timeout_s
            if late and index not in results and index not in todo:
                worker.ready_round = None  # not usable until it answers
                self.group.set_pending(worker, worker.pending or ref)
                del calls[ref]
                self.owners.pop(index, None)
                todo.append(index)
