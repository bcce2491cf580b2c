"""The ComPO training loop. Where the votes come from is a VoteSource (compo/votes.py).

Per iteration: pick pairs -> votes of m directions -> sum y_i z_i -> accept or skip ->
apply the sparse step to the float32 master output layer -> metrics, its changed entries to
the run's delta log, a commit point every checkpoint_every iterations (compo/rundir.py).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from compo import fileio
from compo.abstentions import FailureStreak, abstentions_of, failure
from compo.config import ComPOConfig, TrainConfig, in_process_options
from compo.data.encoding import load_tokenized
from compo.data.formats import TokenizedPair
from compo.data.reselect import Selection, select_noisy
from compo.diagnostics import RunWatch, progress_figures
from compo.errors import ConfigError, OracleFailure, RunStopped
from compo.estimator import UpdateDecision, count_votes, decide_from_shards
from compo.model.checkpoint import read_master
from compo.model.export import write_delta
from compo.model.exported import check_kept, export_dtype, measure_export, write_final
from compo.model.layout import layout_of, model_tensors
from compo.model.loading import DTYPES, load_model, load_tokenizer
from compo.oracle import combine, pair_improved
from compo.oracles import oracle_kind, report_url
from compo.progress import ProgressLog
from compo.run_events import RunEvents
from compo.rundir import Checkpoint, RunDirectory, new_run_id
from compo.summary import source_summary
from compo.testhooks import pause_point
from compo.votes import LocalVoteSource, VoteSource

log = logging.getLogger(__name__)


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
    extra: dict = field(default_factory=dict)  # figures of the options that are on


def trial_check(source: VoteSource, decision: UpdateDecision, weight: torch.Tensor,
                before: torch.Tensor, compo: ComPOConfig) -> tuple[UpdateDecision, dict]:
    """The reference code's check before it applies an accepted step (compute_gradients.py,
    aggregate_gradients: log-probs under `-5 * g_hat_sparse`, then `if flag or y_i == 1:
    updated_weights_flat = x`, i.e. keep the weights unless the trial improved a pair)."""
    trial = decision.direction.scaled(-compo.trial_step_scale).apply_(weight.clone())
    logprobs = source.logprobs(trial).cpu()
    passed = combine(pair_improved(logprobs - before.cpu()), compo.vote_rule) == -1
    extra = {"trial_check": "passed" if passed else "refused",
             "logp_chosen_trial": logprobs[0::2].tolist(),
             "logp_rejected_trial": logprobs[1::2].tolist()}
    if passed:
        return decision, extra
    return replace(decision, accepted=False, step=0.0, kept_fraction=0.0, update_norm=0.0,
                   update=None), extra


def run_iteration(source: VoteSource, pairs: Sequence[TokenizedPair], weight: torch.Tensor,
                  config: TrainConfig, iteration: int) -> IterationResult:
    """Votes for m directions, the estimator's decision, and the update applied in place."""
    compo = config.compo
    before = source.prepare(pairs, weight)
    started = time.perf_counter()
    indices = list(range(compo.num_perturbations))
    votes = source.votes(config.seed, iteration, indices)
    vote_seconds = time.perf_counter() - started
    failed = failure(abstentions_of(source, votes), config.oracle.max_abstain_ratio)
    if failed is not None:  # abstentions are a failure, not a vote: no step (abstentions.py)
        n_minus, m, abstained = count_votes(votes)
        decision = UpdateDecision(n_minus, m, abstained, n_minus / m if m else 0.0, False, 0.0,
                                  0.0, 0.0, None)
        return IterationResult(decision, before.cpu(), before.cpu(), vote_seconds,
                               {"failed": failed})
    shards, run = source.rebuild(config.seed, iteration, indices, votes, weight)
    decision = decide_from_shards(votes, compo, tuple(weight.shape), shards, run)
    extra = {"trial_check": None} if compo.accept_check == "trial_step" else {}
    if decision.update is not None and compo.accept_check == "trial_step":
        decision, extra = trial_check(source, decision, weight, before, compo)
    if decision.update is not None:
        decision.update.apply_(weight)
    after = source.logprobs(weight) if decision.accepted else before
    return IterationResult(decision, before.cpu(), after.cpu(), vote_seconds, extra)


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
        **result.extra,
    }


def default_source(config: TrainConfig, model, tokenizer, run_id: str) -> VoteSource:
    """The configured oracle (compo/oracles/), in this process."""
    kind = oracle_kind(config.oracle.kind)
    oracle = kind.build(model, tokenizer, config.model, config.compo, kind.setup(config, run_id))
    return LocalVoteSource(oracle, config.compo)


def iteration_reporter(config: TrainConfig, run_id: str):
    """The per-iteration reporter when a service URL is configured."""
    if report_url(config) is None:
        return None
    from compo.service_oracle.reporting import reporter_for  # needs the service extra (httpx)

    return reporter_for(config, run_id)


class ComPOTrainer:
    """Loads data (and the model, unless a source elsewhere holds it), runs iterations,
    checkpoints."""

    def __init__(self, config: TrainConfig, run_dir: RunDirectory, source: VoteSource | None
                 = None, on_iteration: Callable[[dict], None] | None = None):
        """`source`: votes computed elsewhere (Ray workers); then only the tokenizer and the
        checkpoint's output layer are read here, never the whole model."""
        self.config, self.run_dir, self.on_iteration = config, run_dir, on_iteration
        self.tokenizer = load_tokenizer(config.model.path)
        self.pairs, self.load_report = load_tokenized(config.data, self.tokenizer)
        run_id = run_dir.path.name
        self.model = None  # the model, when this process holds it
        self.offset = 0  # data.reselect: the running offset of the scan
        if source is not None and in_process_options(config):
            raise ConfigError(f"{', '.join(in_process_options(config))}: not supported when "
                              "votes come from elsewhere (Ray workers); remove them")
        if source is None:
            self.model = load_model(config.model)
            self.layout = layout_of(self.model, config.compo.perturb)  # what the directions move
            self._base = self.layout.stack(model_tensors(self.model, self.layout))
            source = default_source(config, self.model, self.tokenizer, run_id)
        else:
            self.layout, self._base = read_master(config.model.path, DTYPES[config.model.dtype],
                                                  config.compo.perturb)
        self.source = source
        self.reporter = iteration_reporter(config, run_id)
        self.events = RunEvents(config, run_dir, self.reporter)  # report_to, run status
        self.watch = RunWatch(config)  # warnings when the votes carry no signal
        self.streak = FailureStreak(config.oracle.max_failed_iterations)
        self.source_lines: list[str] = []  # what the source adds to the final summary
        self.measure_export: Callable[..., dict] = measure_export  # Ray: on a worker node

    @property
    def base_weight(self) -> torch.Tensor:
        """The moved parameters as loaded (float32 [R, d]). A run lets go of them once it
        holds its master (one float32 copy); export reads them again (model or files)."""
        if self._base is None:
            self._base = (self.layout.stack(model_tensors(self.model, self.layout))
                          if self.model is not None else
                          read_master(self.config.model.path, DTYPES[self.config.model.dtype],
                                      self.config.compo.perturb)[1])
        return self._base

    def trained_pairs(self) -> list[TokenizedPair]:
        """The pairs of the iterations run so far (each once)."""
        rows = self.run_dir.metrics()
        if self.config.data.reselect is not None:
            batches = [row["pair_indices"] for row in rows]
        else:
            batches = schedule(len(self.pairs), self.config)[: len(rows)]
        return [self.pairs[i] for i in sorted({i for batch in batches for i in batch})]

    def run(self, progress: bool = True) -> torch.Tensor:
        """Run (or continue) to the end of the schedule; returns the master weight."""
        checkpoint = self.run_dir.load_checkpoint(self.config.compo.directions.name)
        start = checkpoint.iterations_done if checkpoint else 0
        base = self.base_weight
        weight = (checkpoint.weight if checkpoint else base.clone()).to(base.device)
        del base  # one float32 master from here: the Ray source's versions hold the loaded
        self._base = None  # layer until their first publish, then let it go too
        self.offset = checkpoint.data_offset if checkpoint else 0
        self.run_dir.truncate_metrics(start)
        self.watch.replay(self.run_dir.metrics())
        batches = schedule(len(self.pairs), self.config)
        self.events.start(len(batches), start)
        bar = tqdm(range(start, len(batches)), initial=start, total=len(batches),
                   desc="ComPO", unit="it", disable=not progress)
        ticker = None if progress else ProgressLog(len(batches), self.run_dir.metrics())
        done = start
        try:
            for iteration in bar:
                offset = self.offset
                with deferred_interrupt() as interrupted:
                    row, changed = self._step(iteration, batches[iteration], weight)
                    if row is not None:  # the iteration and the offset after it, together
                        done, self.offset = iteration + 1, row.get("data_offset", self.offset)
                        self.run_dir.append_delta(iteration, changed, weight)
                    pause_point(f"iteration-{iteration}")  # tests only (compo/testhooks.py)
                if row is None:
                    log.warning("data.reselect: no pair qualifies as noisy under the current "
                                "weights; the run ends after %d iterations", done)
                    break
                bar.set_postfix(progress_figures(row))
                if ticker is not None:
                    ticker.observe(row, done)
                if self.streak.observe(row.get("failed"), iteration, offset):
                    raise OracleFailure(self.streak.message(row["failed"], str(self.run_dir.path)))
                if done % self.config.checkpoint_every == 0:
                    self._commit(Checkpoint(done, weight, self.offset))
                self.events.iteration(row)
                if self.on_iteration is not None:
                    self.on_iteration(row)
                if interrupted():
                    raise KeyboardInterrupt
        except OracleFailure:  # no step since the streak began: save where it began
            self._commit(Checkpoint(self.streak.done, weight, self.streak.offset))
            raise
        except (KeyboardInterrupt, RunStopped):  # RunStopped: e.g. the judge budget
            self._commit(Checkpoint(done, weight, self.offset))
            raise
        finally:
            bar.close()
            self.events.finish(sys.exc_info()[1])
        self._commit(Checkpoint(done, weight, self.offset))
        self.watch.finish()
        self.source_lines = source_summary(self.source)
        return weight

    def _commit(self, checkpoint: Checkpoint) -> None:
        """A commit point; a dense master every config.dense_every iterations."""
        self.run_dir.save_checkpoint(checkpoint, self.config.dense_every,
                                     self.config.compo.directions.name)

    def _reselect(self, weight: torch.Tensor) -> Selection | None:
        """data.reselect: the next noisy pairs under `weight` from the running offset."""
        def margins(indices):
            logprobs = self.source.prepare([self.pairs[i] for i in indices], weight).cpu()
            return logprobs[0::2] - logprobs[1::2]

        return select_noisy(margins, len(self.pairs), self.offset, self.config.batch_size,
                            self.config.data.reselect)

    def close(self) -> None:
        """Release what the vote source holds (Ray: the workers; service: connections)."""
        self.source.close()

    def _step(self, iteration: int, batch: list[int],
              weight: torch.Tensor) -> tuple[dict | None, torch.Tensor]:
        """One iteration: update `weight` in place, log the metrics row; returns it (None:
        data.reselect found no noisy pair) and the flat positions the step changed (the
        clipped step's kept entries; none when it was skipped)."""
        unchanged = torch.zeros(0, dtype=torch.int64)
        started = time.perf_counter()
        picked = {}
        if self.config.data.reselect is not None:
            selection = self._reselect(weight)
            if selection is None:
                return None, unchanged
            batch = selection.indices
            picked = {"pair_indices": batch, "data_offset": selection.offset,
                      "scanned": selection.scanned}
        chosen = [self.pairs[i] for i in batch]
        result = run_iteration(self.source, chosen, weight, self.config, iteration)
        result.extra.update(picked)
        row = metrics_row(iteration, batch, self.pairs, result, time.perf_counter() - started)
        row.update(self.source.metrics())
        warnings = self.watch.observe(row)
        if warnings:
            row["warnings"] = warnings
        if self.reporter is not None:  # posts to the service; a failure is counted, not raised
            row.update(self.reporter.report(row))
        self.run_dir.log_metrics(row)
        update = result.decision.update if result.decision.accepted else None
        return row, unchanged if update is None else update.indices


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
    """delta.safetensors, final/ (the checkpoint with its output layer replaced) and
    export_report.json (what final/ keeps of the change, measured on it)."""
    config, out = trainer.config, trainer.run_dir.path
    summary = write_delta(out / "delta.safetensors", trainer.base_weight, weight,
                          trainer.layout)
    dtype = export_dtype(config.export.dtype, config.model)
    write_final(config.model.path, trainer.layout.tensors(weight.cpu()), out / "final", dtype)
    report = trainer.measure_export(config.model, out / "final", trainer.trained_pairs(),
                                    trainer.tokenizer.pad_token_id, trainer.base_weight,
                                    weight, network=trainer.model,
                                    layout=trainer.layout)
    fileio.write_json(out / "export_report.json", report)
    summary.update(export=report, export_keeps=check_kept(report, config.export.dtype))
    return summary


def start_run(config: TrainConfig) -> RunDirectory:
    """Create runs/<run_id> with the resolved config saved."""
    run_id = config.run_id or new_run_id()
    config = config.model_copy(update={"run_id": run_id})
    return RunDirectory(Path(config.output_dir) / run_id).create(config)
