"""Distributed votes on Ray: the coordinator side of `compo train --ray-address`.

RayVoteSource is a VoteSource (compo/votes.py), so the loop, checkpoints, resume and
metrics are the core engine's. It holds a WorkerGroup (workers/group.py: versions,
preparation, failures) and a ChunkQueue (workers/dispatch.py). Per iteration the group
brings every worker to the current weights version (the sparse step patches it missed or a
dense snapshot, whichever is smaller, put once into the object store) and prepares the
pairs; the votes are gathered chunk by chunk with ray.wait, re-dispatching the chunks of
dead, unreachable or straggling workers. With the service oracle one worker first generates
the iteration's base responses, put once for all chunks. An accepted step is rebuilt by the
workers, a shard of rows of sum y_i z_i each (workers/rebuild.py), and published the same
way as the weights.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
import torch
from tqdm.auto import tqdm

from compo.config import RayConfig, TrainConfig
from compo.errors import DistributedError
from compo.estimator import kept_votes, plan_shards
from compo.model.exported import measure_export
from compo.oracles import oracle_kind
from compo.rundir import RunDirectory
from compo.train import ComPOTrainer
from compo.votes import Shards
from workers.dispatch import Chunk, ChunkQueue
from workers.group import WorkerGroup, WorkerState
from workers.placement import ray_placement
from workers.protocol import VoteBatch, answer_matches, pair_ids
from workers.rebuild import ShardCalls
from workers.stats import payload_size
from workers.transport import Placement

log = logging.getLogger(__name__)


class RayVoteSource:
    """VoteSource whose votes come from worker actors on a Ray cluster."""

    def __init__(self, config: TrainConfig, address: str | None = None, progress: bool = True,
                 on_votes: Callable[[int, int], None] | None = None, run_id: str = "ray-run",
                 placement: Placement | None = None):
        """`run_id` labels the oracle's requests (the service oracle's comparisons);
        `placement`: actors already started (in process: workers/transport.py), else the
        Ray cluster at `address` gets them."""
        self.kind = oracle_kind(config.oracle.kind)  # any oracle of compo/oracles/
        self.generative = self.kind.generative  # workers generate: no body, base responses
        setup = self.kind.setup(config, run_id)
        self.config, self.settings = config, config.ray or RayConfig()
        self.progress, self.on_votes = progress, on_votes
        placement = placement or ray_placement(config, self.settings, address, setup)
        self.body, self.use_gpu = placement.body, placement.use_gpu
        self.group = WorkerGroup(self.settings, placement.pool, placement.transport)
        batch = config.oracle.generation_batch_size if self.generative else None
        self.chunks = ChunkQueue(self.settings, batch)
        self.group.on_lost = self.chunks.hand_back
        self.oracle_counts: Counter = Counter()  # service oracle: counts of the answers used

    @property
    def workers(self) -> list[WorkerState]:
        return self.group.workers

    def start(self, base_weight: torch.Tensor) -> RayVoteSource:
        """Wait for the body and every worker to load; each must hold `base_weight`."""
        if self.body is not None:
            self.body.wait_loaded(self.config.model.path)
        self.group.start(base_weight, self.config.model.path)
        log.info("%d workers ready on %d nodes (%s)", len(self.workers),
                 len({w.node for w in self.workers}), "GPU" if self.use_gpu else "CPU")
        return self

    def close(self) -> None:
        """Stop the body and the workers and release their placement group."""
        if self.body is not None:
            self.body.shutdown()
        self.group.shutdown()

    # -- VoteSource ---------------------------------------------------------------------

    def prepare(self, pairs, weight: torch.Tensor) -> torch.Tensor:
        """New round: publish the weights if they moved, prepare the pairs on every worker."""
        self.chunks.redispatched, self.oracle_counts = 0, Counter()
        started, payload = time.perf_counter(), pair_ids(pairs)
        if self.body is not None:  # the body runs once; workers get what it sends
            payload = self.body.feed(payload)
        body_seconds = time.perf_counter() - started
        base = self.group.begin_round(payload, weight)
        self.group.stats.seconds["body"] = body_seconds
        return torch.tensor(base)

    def votes(self, seed: int, iteration: int, indices: Sequence[int]) -> torch.Tensor:
        """Votes of all `indices`; returns only when every index has a valid vote."""
        group, started = self.group, time.perf_counter()
        base = self.base_responses(seed, iteration) if self.generative else None
        out = np.zeros(len(indices), dtype=np.int8)
        group.stats.perturbations = len(indices)
        self.chunks.reset(indices, sum(not w.dead for w in group.workers))
        remaining, group.last_progress = len(indices), time.monotonic()
        bar = tqdm(total=len(indices), desc=f"votes {iteration}", unit="vote", leave=False,
                   disable=not self.progress)
        while remaining:
            self.dispatch(seed, iteration, base)
            ready = group.wait_any(self.chunks.refs() + group.pending_refs())
            if ready is None:  # nobody usable, nobody coming back
                raise DistributedError(group.missing("is left"))
            for ref in ready:
                got = self.received(ref, out)
                remaining -= got
                bar.update(got)
                if got and self.on_votes is not None:
                    self.on_votes(len(indices) - remaining, len(indices))
            for worker, ref in self.chunks.stragglers(group.usable(), time.monotonic()):
                worker.ready_round = None  # not usable until it answers
                group.set_pending(worker, worker.pending or ref)
        bar.close()
        group.stats.seconds["votes"] = time.perf_counter() - started
        group.stats.marks["votes_done"] = time.perf_counter()
        return torch.from_numpy(out)

    def logprobs(self, weight: torch.Tensor) -> torch.Tensor:
        """Publish the accepted step (workers acknowledge it), then log-probs under it."""
        group = self.group
        group.stats.marks["publish"] = time.perf_counter()
        group.publish(weight, acknowledge=True)
        values = group.first_answer("reported log-probs after the update", "logprobs",
                                    group.round, group.version)
        return torch.tensor(values)

    def rebuild(self, seed: int, iteration: int, indices: Sequence[int], votes: torch.Tensor,
                weight: torch.Tensor) -> Shards:
        """Rows of sum y_i z_i are rebuilt by the workers, a shard each; the kept votes
        are put once, when the step is accepted (a skipped iteration sends nothing)."""
        group = self.group
        shards = plan_shards(weight.shape[0], max(1, len(group.usable())))
        calls: list[ShardCalls] = []

        def run(method: str, parts: Sequence[range], *args) -> list:
            if not calls:
                kept = group.put(kept_votes(torch.tensor(list(indices)), votes))
                calls.append(ShardCalls(group, (group.round, group.version, seed, iteration,
                                                kept)))
            return calls[0].run(method, parts, *args)

        return shards, run

    def metrics(self) -> dict:
        """The iteration's Ray figures (merged into its metrics.jsonl row)."""
        stats = self.group.stats
        stats.redispatched = self.chunks.redispatched
        ray_figures = {**self.group.report(), **stats.report()}
        return {"ray": ray_figures, **self.kind.counted_metrics(self.oracle_counts)}

    # -- calls and answers --------------------------------------------------------------

    def base_responses(self, seed: int, iteration: int) -> Any:
        """A generative oracle: one worker generates the base responses, put once for all."""
        group, started = self.group, time.perf_counter()
        texts = group.first_answer("generated the base responses", "base_responses",
                                   group.round, group.version, seed, iteration)
        group.stats.seconds["base"] = time.perf_counter() - started
        return group.put(texts)

    def dispatch(self, seed: int, iteration: int, base: Any = None) -> None:
        """Queued chunks to usable workers; `base`: the object ref of the iteration's base
        responses (service oracle)."""
        group = self.group
        fixed = payload_size(group.round, group.version, seed, iteration, base)  # once

        def send(worker: WorkerState, chunk: Chunk):
            group.stats.bytes["vote_args"] += fixed + payload_size(chunk.indices)
            return group.transport.call(worker.actor, "evaluate", group.round, group.version,
                                        seed, iteration, chunk.indices, base)

        self.chunks.assign(group.usable(), send, time.monotonic())
        if all(w.dead for w in group.workers):
            raise DistributedError(group.missing("is left"))
        silent = time.monotonic() - group.last_progress
        if not group.usable() and silent > self.settings.load_timeout_s:  # restarts reload
            raise DistributedError(group.missing(
                f"answered for {self.settings.load_timeout_s:g} s (ray.load_timeout_s)"))

    def received(self, ref, out: np.ndarray) -> int:
        """Route a finished call: a chunk's votes, or a pending call of a lost worker;
        returns how many indices got their first vote."""
        owner = self.group.owner_of(ref)
        taken = self.chunks.take(ref)
        if taken is None:
            self.group.answered(ref)
            return 0
        if owner is not None:  # a straggler's task: its answer ends the wait
            self.group.set_pending(owner, None)
        return self.collect(ref, *taken, out)

    def collect(self, ref, chunk: Chunk, worker: WorkerState, out: np.ndarray) -> int:
        """Record a chunk's votes (the first valid answer for it counts)."""
        group = self.group
        try:
            batch: VoteBatch = group.transport.get(ref)
        except group.transport.Failed as error:
            group.failed(worker, error, chunk)
            return 0
        group.count("vote_results", batch)
        if not answer_matches(batch, group.round, group.version, chunk.indices):
            group.stats.rejected += 1
            log.warning("%s: rejected an answer for round %d, version %d (now %d, %d)",
                        worker.name, batch.round, batch.version, group.round, group.version)
            self.chunks.requeue(chunk, "stale answer")
            return 0
        worker.last_heard = group.last_progress = time.monotonic()
        worker.ready_round = group.round  # a straggler that answers is back
        count = len(chunk.indices)
        work = group.stats.work.setdefault(worker.name, [0, 0.0])
        work[0], work[1] = work[0] + count, work[1] + batch.seconds
        if chunk.done:
            return 0
        chunk.done = True
        out[chunk.first : chunk.first + count] = batch.vote_array()
        self.oracle_counts.update(batch.oracle or {})
        return count


def remote_measure(settings: RayConfig, use_gpu: bool) -> Callable[..., dict]:
    """measure_export as a Ray task with one worker's resources (after the workers are
    gone): the coordinator never loads the model. final/ must be on a shared volume."""
    resources = {"num_cpus": settings.cpus_per_worker, "num_gpus": 1 if use_gpu else 0}

    def measure(model, final, pairs, pad_id, base_weight, master, network=None,
                layout=None) -> dict:
        task = ray.remote(**resources)(measure_export)
        model = model.model_copy(update={"device": "cuda" if use_gpu else "cpu"})
        return ray.get(task.remote(model, str(final), pairs, pad_id, base_weight.cpu(),
                                   master.cpu(), layout=layout))

    return measure


def ray_trainer(config: TrainConfig, run_dir: RunDirectory, address: str | None = None,
                progress: bool = True, **source_options) -> ComPOTrainer:
    """A ComPOTrainer whose votes come from Ray workers (they load while it reads the
    tokenizer, the pairs and the output layer; the coordinator never loads the model)."""
    source = RayVoteSource(config, address, progress, run_id=run_dir.path.name,
                           **source_options)
    try:
        trainer = ComPOTrainer(config, run_dir, source=source)
        trainer.measure_export = remote_measure(source.settings, source.use_gpu)
        source.start(trainer.base_weight)
    except BaseException:
        source.close()
        raise
    return trainer
