"""Distributed votes on Ray: the coordinator side of `compo train --ray-address`.

RayVoteSource plugs into ComPOTrainer, so the loop, checkpoints, resume and metrics are
the core engine's. Per iteration it brings every worker to the current weights version
(a sparse patch, put once into the object store), prepares the pairs on each, hands out
fixed chunks of perturbation indices, gathers (index, vote) answers with ray.wait and
re-dispatches the chunks of dead, unreachable or straggling workers. With the service
oracle one worker first generates the iteration's base responses, put once for all chunks.
An accepted step is rebuilt by the workers, a shard of rows of sum y_i z_i each
(compo/distributed_rebuild.py), and published the same way as the weights.
Imports ray lazily: `compo` works without it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from compo.config import RayConfig, TrainConfig
from compo.distributed_group import DistributedError, WorkerGroup
from compo.distributed_stats import IterationStats
from compo.estimator import kept_votes, plan_shards
from compo.rundir import RunDirectory
from compo.worker import (
    Chunk,
    ServiceSetup,
    VoteBatch,
    WeightVersions,
    answer_matches,
    make_chunks,
    pair_ids,
)

if TYPE_CHECKING:
    from workers.pool import Worker

log = logging.getLogger(__name__)


class RayVoteSource(WorkerGroup):
    """VoteSource whose votes come from worker actors on a Ray cluster."""

    def __init__(self, config: TrainConfig, address: str | None = None, progress: bool = True,
                 on_votes: Callable[[int, int], None] | None = None, run_id: str = "ray-run"):
        """`run_id` labels the service oracle's comparisons (oracle.kind=service)."""
        import ray

        from workers.pool import connect, plan_workers, start_pool

        self.generative = config.oracle.kind == "service"
        service = ServiceSetup.for_run(config, run_id) if self.generative else None
        super().__init__(config.ray or RayConfig())
        self.config = config
        self.progress, self.on_votes = progress, on_votes
        connect(self.settings, address)
        count, self.use_gpu = plan_workers(ray.cluster_resources(), ray.available_resources(),
                                           self.settings)
        self.pool = start_pool(config, self.settings, count, self.use_gpu, service)
        self.queue: deque[Chunk] = deque()
        self.tasks: dict[Any, tuple[Chunk, Worker]] = {}

    def start(self, base_weight: torch.Tensor) -> RayVoteSource:
        """Wait for every worker to load the model; `base_weight` is what they loaded."""
        self.workers = self.pool.wait_loaded(self.settings.load_timeout_s,
                                             self.config.model.path, tuple(base_weight.shape))
        self.weights = WeightVersions(base_weight)
        log.info("%d workers ready on %d nodes (%s)", len(self.workers),
                 len({w.node for w in self.workers}), "GPU" if self.use_gpu else "CPU")
        return self

    def close(self) -> None:
        """Stop the workers and release their placement group."""
        if self.pool.actors:
            self.pool.shutdown()

    # -- VoteSource ---------------------------------------------------------------------

    def prepare(self, pairs, weight: torch.Tensor) -> torch.Tensor:
        """New round: publish the weights if they moved, prepare the pairs on every worker."""

        self.stats, self.base_logprobs = IterationStats(), {}
        self.round += 1
        self._publish(weight, acknowledge=False)
        self.pairs_ref = self._put(pair_ids(pairs))
        first = {self._send_prepare(w).pending for w in self.workers
                 if not w.dead and w.pending is None}
        deadline = time.monotonic() + self.settings.call_timeout_s
        while time.monotonic() < deadline and (first or not self.base_logprobs):
            ready = self._wait_any([w.pending for w in self.workers if w.pending is not None])
            if ready is None:
                break
            for ref in ready:
                first.discard(ref)
                self._answered(ref)
        if not self.base_logprobs:
            raise DistributedError(self._no_worker(
                f"prepared the iteration within {self.settings.call_timeout_s:g} s"))
        self.stats.seconds["prepare"] = time.perf_counter() - self.stats.marks["start"]
        return torch.tensor(self._agreed_base_logprobs())

    def votes(self, seed: int, iteration: int, indices: Sequence[int]) -> torch.Tensor:
        """Votes of all `indices`; returns only when every index has a valid vote."""

        started = time.perf_counter()
        base = self._base_responses(seed, iteration) if self.generative else None
        out = np.zeros(len(indices), dtype=np.int8)
        self.stats.perturbations = len(indices)
        self.queue, self.tasks = deque(make_chunks(indices, self.settings.chunk_size)), {}
        remaining, self.last_progress = len(indices), time.monotonic()
        bar = tqdm(total=len(indices), desc=f"votes {iteration}", unit="vote", leave=False,
                   disable=not self.progress)
        while remaining:
            self._dispatch(seed, iteration, base)
            ready = self._wait_any(list(self.tasks) + [w.pending for w in self.workers
                                                       if w.pending])
            if ready is None:  # nobody usable, nobody coming back
                raise DistributedError(self._no_worker("is left"))
            for ref in ready:
                got = self._received(ref, out)
                remaining -= got
                bar.update(got)
                if got and self.on_votes is not None:
                    self.on_votes(len(indices) - remaining, len(indices))
            self._find_stragglers()
        bar.close()
        self.stats.seconds["votes"] = time.perf_counter() - started
        self.stats.marks["votes_done"] = time.perf_counter()
        return torch.from_numpy(out)

    def logprobs(self, weight: torch.Tensor) -> torch.Tensor:
        """Publish the accepted step (workers acknowledge it), then log-probs under it."""

        self.stats.marks["publish"] = time.perf_counter()
        self._publish(weight, acknowledge=True)
        values = self._first_answer("reported log-probs after the update", lambda w: (
            w.actor.logprobs.remote(self.round, self.version)), self.round, self.version)
        return torch.tensor(values)

    def rebuild_shards(self, seed: int, iteration: int, indices: Sequence[int],
                       votes: torch.Tensor) -> tuple[list[range], Any]:
        """Rows of sum y_i z_i are rebuilt by the workers, a shard each; the kept votes
        are put once, when the step is accepted (a skipped iteration sends nothing)."""
        from compo.distributed_rebuild import ShardCalls

        shards = plan_shards(self.weights.held.shape[0], max(1, len(self._usable())))
        calls = []

        def run(method: str, parts: Sequence[range], *args) -> list:
            if not calls:
                kept = self._put(kept_votes(torch.tensor(list(indices)), votes))
                calls.append(ShardCalls(self, (self.round, self.version, seed, iteration, kept)))
            return calls[0].run(method, parts, *args)

        return shards, run

    def iteration_metrics(self) -> dict:
        """The iteration's Ray figures (merged into its metrics.jsonl row)."""
        ray = self.stats.report(len(self._usable()), sum(w.dead for w in self.workers),
                                self.version)
        return {"ray": ray, **self._oracle_metrics()}

    def _oracle_metrics(self) -> dict:
        """Service oracle: the iteration's comparisons, as the single-process run reports."""
        if not self.generative:
            return {}
        from compo.generative import oracle_metrics

        return oracle_metrics(self.stats.oracle)

    def _base_responses(self, seed: int, iteration: int) -> Any:
        """Service oracle: one worker generates the base responses, put once for all."""
        started = time.perf_counter()
        texts = self._first_answer("generated the base responses", lambda w: (
            w.actor.base_responses.remote(self.round, self.version, seed, iteration)),
            self.round, self.version, seed, iteration)
        self.stats.seconds["base"] = time.perf_counter() - started
        return self._put(texts)

    # -- calls and answers --------------------------------------------------------------

    def _received(self, ref, out: np.ndarray) -> int:
        """Route a finished call: a chunk's votes, or a pending call of a lost worker."""
        owner = next((w for w in self.workers if w.pending == ref), None)
        if ref not in self.tasks:
            self._answered(ref)
            return 0
        if owner is not None:  # a straggler's task: its answer ends the wait
            owner.pending = None
        return self._collect(ref, out)

    def _dispatch(self, seed: int, iteration: int, base: Any = None) -> None:
        """Give queued chunks to usable workers, up to tasks_in_flight each; `base`: the
        object ref of the iteration's base responses (service oracle)."""
        for worker in self._usable():
            while self.queue and worker.in_flight < self.settings.tasks_in_flight:
                chunk = self.queue.popleft()
                if chunk.done:
                    continue
                args = (self.round, self.version, seed, iteration, chunk.indices, base)
                self.tasks[worker.actor.evaluate.remote(*args)] = (chunk, worker)
                self._count("vote_args", *args)
                if worker.in_flight == 0:
                    worker.last_heard = time.monotonic()
                worker.in_flight += 1
                chunk.sent += 1
        if all(w.dead for w in self.workers):
            raise DistributedError(self._no_worker("is left"))
        silent = time.monotonic() - self.last_progress
        if not self._usable() and silent > self.settings.load_timeout_s:  # restarts reload
            raise DistributedError(self._no_worker(
                f"answered for {self.settings.load_timeout_s:g} s (ray.load_timeout_s)"))

    def _collect(self, ref, out: np.ndarray) -> int:
        """Record a chunk's votes; returns how many indices got their first vote."""
        import ray

        chunk, worker = self.tasks.pop(ref)
        worker.in_flight -= 1
        try:
            batch: VoteBatch = ray.get(ref)
        except ray.exceptions.RayError as error:
            self._failed(worker, error, chunk)
            return 0
        self._count("vote_results", batch)
        if not answer_matches(batch, self.round, self.version, chunk.indices):
            self.stats.rejected += 1
            log.warning("%s: rejected an answer for round %d, version %d (now %d, %d)",
                        worker.name, batch.round, batch.version, self.round, self.version)
            self._requeue(chunk, "stale answer")
            return 0
        worker.last_heard = self.last_progress = time.monotonic()
        worker.ready_round = self.round  # a straggler that answers is back
        count = len(chunk.indices)
        work = self.stats.work.setdefault(worker.name, [0, 0.0])
        work[0], work[1] = work[0] + count, work[1] + batch.seconds
        if chunk.done:
            return 0
        chunk.done = True
        out[chunk.first : chunk.first + count] = batch.vote_array()
        self.stats.oracle.update(batch.oracle or {})  # counts of the answers used only
        return count

    def _hand_back(self, worker: Worker, chunk: Chunk | None, reason: str) -> None:
        """The chunks a failed worker held (and the one that failed) go back to the queue."""
        lost = [chunk] if chunk else []
        for ref, (other, owner) in list(self.tasks.items()):
            if owner is worker:
                del self.tasks[ref]
                lost.append(other)
        for item in lost:
            self._requeue(item, reason)

    def _requeue(self, chunk: Chunk, reason: str) -> None:
        """Put a chunk back at the front of the queue, within ray.max_redispatch."""
        if chunk.done:
            return
        if chunk.sent > self.settings.max_redispatch:
            raise DistributedError(f"perturbations {chunk.indices[0]}.. failed {chunk.sent} "
                                   f"times (ray.max_redispatch={self.settings.max_redispatch})"
                                   f"; last: {reason}")
        self.stats.redispatched += 1
        self.queue.appendleft(chunk)

    def _find_stragglers(self) -> None:
        """Workers silent too long while holding chunks: their chunks go elsewhere."""
        now = time.monotonic()
        for worker in self._usable():
            if worker.in_flight and now - worker.last_heard > self.settings.straggler_timeout_s:
                log.warning("%s on %s: no answer for %.0f s; re-dispatching its chunks",
                            worker.name, worker.node, now - worker.last_heard)
                worker.ready_round = None
                for ref, (chunk, owner) in self.tasks.items():
                    if owner is worker:
                        worker.pending = worker.pending or ref
                        self._requeue(chunk, f"{worker.name} straggling")


def ray_trainer(config: TrainConfig, run_dir: RunDirectory, address: str | None = None,
                progress: bool = True, **source_options):
    """A ComPOTrainer whose votes come from Ray workers (they load while it loads)."""
    from compo.train import ComPOTrainer

    source = RayVoteSource(config, address, progress, run_id=run_dir.path.name,
                           **source_options)
    try:
        trainer = ComPOTrainer(config, run_dir, source=source)
        source.start(trainer.base_weight)
    except BaseException:
        source.close()
        raise
    return trainer
