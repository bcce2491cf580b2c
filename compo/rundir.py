"""A run directory: resolved config, metrics log, atomic checkpoints, resume.

Layout of runs/<run_id>/:
  config.yaml          the resolved config (what the run was started with)
  metrics.jsonl        one line per finished iteration
  checkpoint.json      the commit point: last finished iteration and its weights file
  head-<iter>.safetensors  float32 master copy of the output layer after that iteration
  final/, delta.safetensors  written by export at the end
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel

from compo import fileio
from compo.config_files import dump_config
from compo.errors import RunError
from compo.perturbation import GENERATOR


@dataclass
class Checkpoint:
    """State after `iterations_done` iterations."""

    iterations_done: int
    weight: torch.Tensor  # float32 master [R, d]: the output layer (and moved MLPs, layout.py)
    data_offset: int = 0  # data.reselect: where the next scan for noisy pairs starts


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

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Weights file first, then the JSON commit point, then drop older weights."""
        name = f"head-{checkpoint.iterations_done:06d}.safetensors"
        fileio.write_tensors(self.path / name, {"output_weight": checkpoint.weight})
        fileio.write_json(self.checkpoint_path, {
            "iterations_done": checkpoint.iterations_done, "weights": name,
            "directions": GENERATOR, "data_offset": checkpoint.data_offset,
        })
        for old in self.path.glob("head-*.safetensors"):
            if old.name != name:
                old.unlink()

    def load_checkpoint(self) -> Checkpoint | None:
        """The last committed checkpoint, or None for a run that never saved one."""
        if not self.checkpoint_path.exists():
            return None
        state = json.loads(self.checkpoint_path.read_text(encoding="utf-8"))
        if state.get("directions") != GENERATOR:
            raise RunError(
                f"{self.checkpoint_path}: the run was started with other directions "
                f"({state.get('directions', 'the generator before CHANGELOG.md #11')}) than "
                f"this version makes ({GENERATOR}); resuming would mix them. Finish it with "
                f"the version that started it, or start a new run")
        tensors = fileio.read_tensors(self.path / state["weights"])
        return Checkpoint(state["iterations_done"], tensors["output_weight"],
                          state.get("data_offset", 0))

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
