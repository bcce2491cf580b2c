"""A run directory: resolved config, metrics log, atomic checkpoints, resume.

Layout of runs/<run_id>/:
  config.yaml          the resolved config (what the run was started with)
  metrics.jsonl        one line per finished iteration
  checkpoint.json      the commit point: iterations done, the dense master and how many
                       bytes of its delta log count
  head-<iter>.safetensors  float32 master of the moved parameters after that iteration
                       (written every `dense_every` iterations, at a commit)
  deltas-<iter>.log    append-only sparse changes after that dense master: one record per
                       accepted iteration (compo/deltalog.py), fsync'd as it happens
  final/, delta.safetensors  written by export at the end

Resume = the dense master + the log's committed records: bit for bit the weights of the
uninterrupted run. A record past the commit point (torn or not yet committed) is dropped.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel

from compo import deltalog, fileio
from compo.config_files import dump_config
from compo.errors import RunError
from compo.perturbation import GENERATOR

LOG_MASTERS = 4  # a delta log this many dense masters long: the next commit writes a master


@dataclass
class Checkpoint:
    """State after `iterations_done` iterations."""

    iterations_done: int
    weight: torch.Tensor  # float32 master [R, d]: the output layer (and moved MLPs, layout.py)
    data_offset: int = 0  # data.reselect: where the next scan for noisy pairs starts


@dataclass
class DeltaLog:
    """The open delta log: its file, the iterations done at its dense master, its bytes."""

    name: str
    start: int
    bytes: int


def mean_change(before: list[float], after: list[float]) -> float | None:
    """Mean log-prob change of a metrics row's sequences (None when there are none): the
    one formula of `compo plot` and of the summaries the dashboard draws."""
    if not before:
        return None
    return sum(b - a for a, b in zip(before, after, strict=True)) / len(before)


def new_run_id() -> str:
    """A sortable id from the local time."""
    return time.strftime("%Y%m%d-%H%M%S")


class RunDirectory:
    """Paths and atomic I/O for one run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoint_path = self.path / "checkpoint.json"
        self.weights: str | None = None  # the committed dense master's file
        self.log: DeltaLog | None = None  # the open delta log (after the first dense master)

    def create(self, config: BaseModel) -> RunDirectory:
        """Start a fresh run: refuses to overwrite one that has a checkpoint."""
        if self.checkpoint_path.exists():
            raise RunError(f"{self.path} already holds a run; resume it with "
                           f"`compo train --resume {self.path}` or choose another run_id")
        self.path.mkdir(parents=True, exist_ok=True)
        fileio.write_text(self.config_path, dump_config(config))
        fileio.write_text(self.metrics_path, "")
        return self

    def discard_unstarted(self) -> bool:
        """Remove a directory `create` made when the start failed before anything else was
        written (no empty run directories); True if it was removed."""
        written = {path.name for path in self.path.iterdir()} if self.path.is_dir() else set()
        if written - {self.config_path.name, self.metrics_path.name} or self.metrics():
            return False
        shutil.rmtree(self.path)
        return True

    def save_checkpoint(self, checkpoint: Checkpoint, dense_every: int | None = None,
                        family: str = "gaussian") -> None:
        """Commit `checkpoint`: a dense master when none is open, `dense_every` iterations
        have passed since the last one (None: always) or the log holds LOG_MASTERS masters'
        bytes; else only the commit point, the records being on disk already (append_delta).
        `family`: compo.directions' name (gaussian, rank4, ...), recorded with the generator."""
        done, log = checkpoint.iterations_done, self.log
        master_bytes = checkpoint.weight.numel() * checkpoint.weight.element_size()
        dense = (dense_every is None or log is None or done - log.start >= dense_every
                 or log.bytes >= LOG_MASTERS * master_bytes)
        weights = f"head-{done:06d}.safetensors" if dense else self.weights
        if dense:
            fileio.write_tensors(self.path / weights, {"output_weight": checkpoint.weight})
            log = DeltaLog(f"deltas-{done:06d}.log", done, 0)
            fileio.atomic_write(self.path / log.name, lambda tmp: tmp.write_bytes(b""))
        fileio.write_json(self.checkpoint_path, {
            "iterations_done": done, "weights": weights, "deltas": log.name,
            "deltas_bytes": log.bytes, "dense_iterations": log.start,
            "directions": GENERATOR, "direction_family": family,
            "data_offset": checkpoint.data_offset,
        })
        self.weights, self.log = weights, log  # committed
        if dense:
            for old in [*self.path.glob("head-*.safetensors"), *self.path.glob("deltas-*.log")]:
                if old.name not in (weights, log.name):
                    old.unlink()

    def append_delta(self, iteration: int, positions: torch.Tensor,
                     weight: torch.Tensor) -> None:
        """Log the entries an accepted iteration set (their values now in `weight`); before
        the run's first dense master there is no log (the first commit writes one)."""
        if self.log is None or positions.numel() == 0:
            return
        values = weight.view(-1)[positions.to(weight.device)]
        record = deltalog.encode(iteration, positions, values)
        self.log.bytes = deltalog.append(self.path / self.log.name, record, self.log.bytes)

    def load_checkpoint(self, family: str = "gaussian") -> Checkpoint | None:
        """The last committed checkpoint (dense master + its log's committed records), or
        None for a run that never saved one; refused unless its directions are `family`."""
        if not self.checkpoint_path.exists():
            return None
        state = json.loads(self.checkpoint_path.read_text(encoding="utf-8"))
        if state.get("directions") != GENERATOR:
            raise RunError(
                f"{self.checkpoint_path}: the run was started with other directions "
                f"({state.get('directions', 'the generator before CHANGELOG.md #11')}) than "
                f"this version makes ({GENERATOR}); resuming would mix them. Finish it with "
                f"the version that started it, or start a new run")
        saved = state.get("direction_family", "gaussian")  # before #25: Gaussian only
        if saved != family:
            raise RunError(f"{self.checkpoint_path}: the run was started with {saved} "
                           f"directions, the config asks for {family}; resume with "
                           f"compo.directions as the run started, or start a new run")
        done, self.weights = state["iterations_done"], state["weights"]
        weight = fileio.read_tensors(self.path / self.weights)["output_weight"]
        if "deltas" not in state:  # a run from before the delta log: dense checkpoints only
            self.log = DeltaLog(f"deltas-{done:06d}.log", done, 0)
            return Checkpoint(done, weight, state.get("data_offset", 0))
        self.log = DeltaLog(state["deltas"], state["dense_iterations"], state["deltas_bytes"])
        records, length = deltalog.read(self.path / self.log.name, self.log.bytes)
        if length < self.log.bytes:
            raise RunError(f"{self.path / self.log.name}: damaged before its commit point "
                           f"(only {length} of {self.log.bytes} bytes read back); restore the "
                           f"file or start a new run")
        for record in records:
            if record.iteration < done:  # the state after `done` iterations, never later
                record.apply_(weight)
        return Checkpoint(done, weight, state.get("data_offset", 0))

    def log_metrics(self, row: dict) -> None:
        """Append one iteration's metrics."""
        fileio.append_jsonl(self.metrics_path, row)

    def metrics(self) -> list[dict]:
        """All metric rows so far."""
        return fileio.read_jsonl(self.metrics_path) if self.metrics_path.exists() else []

    def truncate_metrics(self, iterations_done: int) -> None:
        """Keep only rows of iterations before the checkpoint (they will be redone)."""
        rows = [row for row in self.metrics() if row["iteration"] < iterations_done]
        fileio.write_jsonl(self.metrics_path, rows)
