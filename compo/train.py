"""The ComPO training loop (single process). The Ray coordinator swaps the vote source.

Per iteration: pick pairs -> votes of m directions -> sum y_i z_i -> accept or skip ->
apply the sparse step to the float32 master output layer -> metrics, checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from compo.config import ComPOConfig, TrainConfig
from compo.data import TokenizedPair
from compo.encoding import load_tokenized
from compo.estimator import (
    RowShards,
    ShardRunner,
    UpdateDecision,
    decide_from_shards,
    kept_votes,
    vote_weighted_rows,
)
from compo.modeling import DTYPES, load_model, load_tokenizer, output_layer
from compo.oracle import LikelihoodOracle, OracleState
from compo.rundir import Checkpoint, RunDirectory, new_run_id

log = logging.getLogger(__name__)


class VoteSource(Protocol):
    """Where votes come from: this process, Ray workers, or a comparison service."""

    def prepare(self, pairs: Sequence[TokenizedPair], weight: torch.Tensor) -> torch.Tensor:
        """Set up an iteration's pairs under `weight`; returns base log-probs [S]."""

    def votes(self, seed: int, iteration: int, indices: Sequence[int]) -> torch.Tensor:
        """Votes (-1 / +1 / 0 abstain) of the given perturbation indices."""

    def logprobs(self, weight: torch.Tensor) -> torch.Tensor:
        """Log-probs [S] of the prepared pairs under another output weight."""


class LocalVoteSource:
    """Likelihood-oracle votes computed in this process."""

    def __init__(self, oracle: LikelihoodOracle):
        self.oracle = oracle
        self.state: OracleState | None = None

    def prepare(self, pairs, weight):
        self.state = self.oracle.prepare(pairs, weight)
        return self.state.base_logprobs

    def votes(self, seed, iteration, indices):
        return self.oracle.votes(self.state, seed, iteration, indices)

    def logprobs(self, weight):
        return self.oracle.logprobs(self.state, weight)


def schedule(num_pairs: int, config: TrainConfig) -> list[list[int]]:
    """Pair indices of every iteration: epochs of (optionally shuffled) batches."""
    batches = []
    for epoch in range(config.epochs):
        if config.shuffle:
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            order = torch.randperm(num_pairs, generator=generator).tolist()
        else:
            order = list(range(num_pairs))
        batches += [order[i : i + config.batch_size]
                    for i in range(0, num_pairs, config.batch_size)]
    if config.max_iterations is not None:
        batches = batches[: config.max_iterations]
    return batches


@dataclass
class IterationResult:
    """One iteration's decision plus the log-probs around it."""

    decision: UpdateDecision
    before: torch.Tensor  # [S]
    after: torch.Tensor  # [S]
    vote_seconds: float


def run_iteration(source: VoteSource, pairs: Sequence[TokenizedPair], weight: torch.Tensor,
                  config: TrainConfig, iteration: int) -> IterationResult:
    """Votes for m directions, the estimator's decision, and the update applied in place."""
    compo = config.compo
    before = source.prepare(pairs, weight)
    started = time.perf_counter()
    indices = list(range(compo.num_perturbations))
    votes = source.votes(config.seed, iteration, indices)
    vote_seconds = time.perf_counter() - started
    shards, run = rebuild_shards(source, config, iteration, indices, votes, weight)
    decision = decide_from_shards(votes, compo, tuple(weight.shape), shards, run)
    if decision.update is not None:
        decision.update.apply_(weight)
    after = source.logprobs(weight) if decision.accepted else before
    return IterationResult(decision, before.cpu(), after.cpu(), vote_seconds)


def rebuild_shards(source: VoteSource, config: TrainConfig, iteration: int,
                   indices: list[int], votes: torch.Tensor, weight: torch.Tensor
                   ) -> tuple[list[range], ShardRunner]:
    """Where rows of sum y_i z_i are rebuilt (only if the step is accepted): by the
    source's workers, one shard each, or here in one piece."""
    remote = getattr(source, "rebuild_shards", None)
    if remote is not None:
        return remote(config.seed, iteration, indices, votes)
    kept = kept_votes(torch.tensor(indices), votes)
    shard = step_rows(config.seed, iteration, kept, weight, config.compo)
    return [range(weight.shape[0])], shard.run


def step_rows(seed: int, iteration: int, kept: Sequence[tuple[int, int]],
              weight: torch.Tensor, compo: ComPOConfig) -> RowShards:
    """Rows of sum y_i z_i for `weight`'s shape and device, made on demand (here or on a
    Ray worker: the same settings, so the same bits)."""
    shape = tuple(weight.shape)
    return RowShards(lambda rows: vote_weighted_rows(
        seed, iteration, kept, shape, rows, compo.block_elements, weight.device,
        DTYPES[compo.direction_dtype]))


def metrics_row(iteration: int, batch: list[int], pairs, result: IterationResult,
                seconds: float) -> dict:
    """The metrics.jsonl line of one iteration."""
    d = result.decision
    return {
        "iteration": iteration, "pairs": [pairs[i].source for i in batch],
        "n_minus": d.n_minus, "m": d.m, "abstained": d.abstained, "ratio": d.ratio,
        "accepted": d.accepted, "step": d.step, "kept_fraction": d.kept_fraction,
        "update_norm": d.update_norm,
        "logp_chosen_before": result.before[0::2].tolist(),
        "logp_chosen_after": result.after[0::2].tolist(),
        "logp_rejected_before": result.before[1::2].tolist(),
        "logp_rejected_after": result.after[1::2].tolist(),
        "seconds": seconds,
        "perturbations_per_s": (d.m + d.abstained) / max(result.vote_seconds, 1e-9),
    }


def source_metrics(source: VoteSource) -> dict:
    """Extra figures a vote source reports for the last iteration (Ray: bytes, faults)."""
    report = getattr(source, "iteration_metrics", None)
    return report() if report is not None else {}


def default_source(config: TrainConfig, model, tokenizer, run_id: str) -> VoteSource:
    """The configured oracle in this process: likelihood, or the service on generations."""
    if config.oracle.kind == "service":
        from compo.generative import ServiceVoteSource  # needs the service extra (httpx)

        return ServiceVoteSource(model, tokenizer, config, run_id)
    return LocalVoteSource(LikelihoodOracle(model, config.compo, tokenizer.pad_token_id,
                                            config.model.batch_size))


def iteration_reporter(config: TrainConfig, run_id: str):
    """The per-iteration reporter when a service URL is configured (compo.reporting)."""
    if config.oracle_service_url is None and config.oracle.kind != "service":
        return None
    from compo.reporting import reporter_for  # needs the service extra (httpx)

    return reporter_for(config, run_id)


class ComPOTrainer:
    """Loads model and data, runs iterations, checkpoints, exports."""

    def __init__(self, config: TrainConfig, run_dir: RunDirectory, source: VoteSource | None
                 = None, on_iteration: Callable[[dict], None] | None = None):
        self.config, self.run_dir, self.on_iteration = config, run_dir, on_iteration
        self.tokenizer = load_tokenizer(config.model.path)
        self.model = load_model(config.model)
        self.pairs, self.load_report = load_tokenized(config.data, self.tokenizer)
        self.base_weight = output_layer(self.model).weight.detach().float().clone()
        run_id = run_dir.path.name
        self.source = source or default_source(config, self.model, self.tokenizer, run_id)
        self.reporter = iteration_reporter(config, run_id)

    def run(self, progress: bool = True) -> torch.Tensor:
        """Run (or continue) to the end of the schedule; returns the master weight."""
        checkpoint = self.run_dir.load_checkpoint()
        start = checkpoint.iterations_done if checkpoint else 0
        weight = (checkpoint.weight if checkpoint else self.base_weight).clone()
        weight = weight.to(self.base_weight.device)
        self.run_dir.truncate_metrics(start)
        batches = schedule(len(self.pairs), self.config)
        bar = tqdm(range(start, len(batches)), initial=start, total=len(batches),
                   desc="ComPO", unit="it", disable=not progress)
        done = start
        try:
            for iteration in bar:
                with deferred_interrupt() as interrupted:
                    row = self._step(iteration, batches[iteration], weight)
                    done = iteration + 1
                bar.set_postfix(ratio=f"{row['ratio']:.2f}", accepted=row["accepted"])
                if done % self.config.checkpoint_every == 0:
                    self.run_dir.save_checkpoint(Checkpoint(done, weight.cpu()))
                if self.on_iteration is not None:
                    self.on_iteration(row)
                if interrupted():
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.run_dir.save_checkpoint(Checkpoint(done, weight.cpu()))
            raise
        finally:
            bar.close()
        self.run_dir.save_checkpoint(Checkpoint(done, weight.cpu()))
        return weight

    def close(self) -> None:
        """Release what the vote source holds (Ray: the workers; service: connections)."""
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def _step(self, iteration: int, batch: list[int], weight: torch.Tensor) -> dict:
        """One iteration: update `weight` in place, log and return the metrics row."""
        started = time.perf_counter()
        chosen = [self.pairs[i] for i in batch]
        result = run_iteration(self.source, chosen, weight, self.config, iteration)
        row = metrics_row(iteration, batch, self.pairs, result, time.perf_counter() - started)
        row.update(source_metrics(self.source))
        if self.reporter is not None:  # posts to the service; a failure is counted, not raised
            row.update(self.reporter.report(row))
        self.run_dir.log_metrics(row)
        return row


@contextmanager
def deferred_interrupt():
    """Let the first Ctrl-C finish the current iteration; a second one aborts at once."""
    caught = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)
        log.warning("interrupt: finishing this iteration, then saving (Ctrl-C again aborts)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(caught)
    finally:
        signal.signal(signal.SIGINT, previous)


def export_run(trainer: ComPOTrainer, weight: torch.Tensor) -> dict:
    """final/ (save_pretrained) and delta.safetensors in the run directory."""
    from compo.export import save_model_with_head, write_delta

    summary = write_delta(trainer.run_dir.path / "delta.safetensors", trainer.base_weight,
                          weight)
    save_model_with_head(trainer.model, trainer.tokenizer, weight,
                         trainer.run_dir.path / "final")
    return summary


def start_run(config: TrainConfig) -> RunDirectory:
    """Create runs/<run_id> with the resolved config saved."""
    run_id = config.run_id or new_run_id()
    config = config.model_copy(update={"run_id": run_id})
    return RunDirectory(Path(config.output_dir) / run_id).create(config)
