"""The coordinator's view of its worker actors: weights versions and their patches,
preparation rounds, answers, failures and restarts. RayVoteSource (compo/distributed.py)
gathers votes and rebuilds steps on top of it. Imports ray lazily.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from compo.config import RayConfig
from compo.distributed_stats import IterationStats, serialized_size
from compo.rundir import RunError
from compo.worker import WeightVersions

if TYPE_CHECKING:
    from workers.pool import Worker

log = logging.getLogger(__name__)

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in Ray's error text
EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b")  # "ValueError: ..."


class DistributedError(RunError):
    """A distributed run that cannot go on: which worker, which node, and why."""


def failure_reason(error: Exception) -> str:
    """The original exception of a Ray error ('ModelError: ...'), from its last raise on."""
    lines = [ANSI.sub("", line).strip() for line in str(error).splitlines() if line.strip()]
    raised = [i for i, line in enumerate(lines) if EXCEPTION_LINE.match(line)]
    return " ".join(lines[raised[-1] if raised else -1:]) if lines else type(error).__name__


class WorkerGroup:
    """Worker actors at a weights version, prepared per round; failed ones probed again."""

    def __init__(self, settings: RayConfig):
        self.settings = settings
        self.workers: list[Worker] = []
        self.weights: WeightVersions | None = None
        self.round, self.refs, self.pairs_ref = 0, {}, None
        self.stats, self.base_logprobs = IterationStats(), {}
        self.last_progress = time.monotonic()

    @property
    def version(self) -> int:
        return self.weights.version

    def _hand_back(self, worker: Worker, chunk: Any, reason: str) -> None:
        """Work a failed worker held goes back to the queue (RayVoteSource: its chunks)."""

    def _failed(self, worker: Worker, error: Exception, chunk: Any = None) -> None:
        """A call failed: count it, hand back the worker's work (`chunk` and the rest),
        probe it again (a restarting actor after ray.poll_interval_s, not as a failure)."""
        import ray

        restarting = isinstance(error, ray.exceptions.ActorUnavailableError)
        self.stats.failures += 1
        worker.failures += not restarting
        worker.lost()
        reason = failure_reason(error)
        log.log(logging.INFO if restarting else logging.WARNING, "%s on %s %s (%d failures "
                "in a row): %s", worker.name, worker.node, "is restarting" if restarting
                else "failed", worker.failures, reason)
        self._hand_back(worker, chunk, reason)
        if worker.failures > self.settings.max_restarts + 1:
            worker.dead = True
            log.error("%s on %s: given up after %d failures in a row", worker.name,
                      worker.node, worker.failures)
        elif restarting:
            worker.retry_at = time.monotonic() + self.settings.poll_interval_s
        elif worker.pending is None:
            self._send_prepare(worker)

    def _first_answer(self, what: str, call: Callable[[Worker], Any], *args: Any) -> Any:
        """The answer of the first usable worker to `call` (`args`: what it sends)."""
        import ray

        for worker in self._usable():
            ref = call(worker)
            self._count("task_args", *args)
            try:
                value = ray.get(ref, timeout=self.settings.call_timeout_s)
            except ray.exceptions.RayError as error:
                self._failed(worker, error)
                continue
            self._count("results", value)
            return value
        raise DistributedError(self._no_worker(what))

    def _publish(self, weight: torch.Tensor, acknowledge: bool) -> None:
        """Make the next version if `weight` moved; with `acknowledge`, send it now."""
        import ray

        started = time.perf_counter()
        step = self.weights.advance(weight)
        if step is not None:
            self.stats.update_bytes += step.nbytes
        if acknowledge:
            acks = {}
            for worker in self._prepared():
                patch = self._patch_ref(worker)
                acks[worker.actor.apply.remote(patch)] = worker
                self._count("task_args", patch)
            for ref, worker in acks.items():
                try:
                    worker.version = ray.get(ref, timeout=self.settings.call_timeout_s)
                except ray.exceptions.RayError as error:
                    self._failed(worker, error)
                    continue
                self._count("results", worker.version)
        self.stats.seconds["broadcast"] += time.perf_counter() - started

    def _patch_ref(self, worker: Worker) -> Any:
        """Object ref of the patch `worker` needs (each patch is put once), or None."""
        patch = self.weights.patch_for(worker.version)
        if patch is None:
            return None
        key = (patch.version, patch.base)
        if key not in self.refs:
            self.refs = {k: v for k, v in self.refs.items() if k[0] == patch.version}
            self.refs[key] = self._put(patch)
        return self.refs[key]

    def _send_prepare(self, worker: Worker) -> Worker:
        patch = self._patch_ref(worker)
        worker.pending = worker.actor.prepare.remote(self.round, self.version, self.pairs_ref,
                                                     patch)
        worker.pending_round = self.round
        self._count("task_args", self.round, self.version, self.pairs_ref, patch)
        return worker

    def _answered(self, ref) -> None:
        """A worker's pending call finished: it is ready, needs preparing, or failed."""
        import ray

        worker = next(w for w in self.workers if w.pending == ref)
        pending_round, worker.pending, worker.pending_round = worker.pending_round, None, None
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as error:
            self._failed(worker, error)
            return
        worker.failures, worker.last_heard = 0, time.monotonic()
        self.last_progress = time.monotonic()
        if pending_round is not None:
            self._count("results", result)
            worker.version = result[0]
            if pending_round == self.round and worker.version == self.version:
                worker.ready_round = self.round
                self.base_logprobs[worker.name] = result[1]
                return
        if worker.ready_round != self.round:
            self._send_prepare(worker)

    def _wait_any(self, refs: list) -> list | None:
        """Finished refs among `refs` within ray.poll_interval_s, after probing workers
        whose restart was waited for; None when nothing is pending and nobody restarts."""
        import ray

        now = time.monotonic()
        for worker in self.workers:
            if worker.retry_at is not None and worker.retry_at <= now and not worker.dead:
                worker.retry_at = None
                if worker.pending is None:
                    refs.append(self._send_prepare(worker).pending)
        if refs:  # a straggler's pending call is also one of its tasks: once only
            return ray.wait(list(dict.fromkeys(refs)), num_returns=1,
                            timeout=self.settings.poll_interval_s)[0]
        if any(w.retry_at is not None and not w.dead for w in self.workers):
            time.sleep(self.settings.poll_interval_s)
            return []
        return None

    def _prepared(self) -> list[Worker]:
        return [w for w in self.workers if not w.dead and w.ready_round == self.round]

    def _usable(self) -> list[Worker]:
        return [w for w in self._prepared() if w.version == self.version]

    def _no_worker(self, what: str) -> str:
        usable = self._usable()
        states = ", ".join(f"{w.name} on {w.node} ({'dead' if w.dead else 'not answering'})"
                           for w in self.workers if w not in usable)
        return f"no worker {what}: {states or 'none started'}"

    def _agreed_base_logprobs(self) -> np.ndarray:
        """Base log-probs of the first ready worker; workers that differ are counted."""
        first = next(w.name for w in self.workers if w.name in self.base_logprobs)
        values = self.base_logprobs[first]
        self.stats.base_mismatch = sum(not np.array_equal(v, values)
                                       for v in self.base_logprobs.values())
        return values

    def _put(self, obj: Any):
        import ray

        self.stats.bytes["object_store_puts"] += serialized_size(obj)
        return ray.put(obj)

    def _count(self, kind: str, *objects: Any) -> None:
        self.stats.bytes[kind] += serialized_size(*objects)
