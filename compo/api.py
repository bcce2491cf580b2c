"""One call for notebooks and scripts: `compo.run(config, ...)` trains (or resumes) a run in
this process and exports it, as `compo train` does. docs/python_api.md shows it, and the
pieces it is made of (load_config / parse_config, start_run, ComPOTrainer, export_run).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from compo.config import TrainConfig
from compo.config_files import deep_merge, load_config, parse_config
from compo.errors import ConfigError
from compo.rundir import RunDirectory
from compo.train import ComPOTrainer, export_run, start_run

ConfigLike = TrainConfig | Mapping | str | Path


@dataclass
class RunResult:
    """What a run left: its directory, the trained float32 master, metrics.jsonl's rows,
    and the export's summary (None with export=False)."""

    run_dir: Path
    weight: torch.Tensor
    metrics: list[dict]
    export: dict | None


def as_config(config: ConfigLike, overrides: Mapping | None = None) -> TrainConfig:
    """A TrainConfig from a TrainConfig, a mapping (as YAML would give) or a YAML path, with
    `overrides` (nested mappings) merged on top; validated (ConfigError naming the field)."""
    extra = dict(overrides or {})
    if isinstance(config, TrainConfig):
        return parse_config(TrainConfig, deep_merge(config.model_dump(), extra), "config")
    if isinstance(config, Mapping):
        return parse_config(TrainConfig, deep_merge(dict(config), extra), "config")
    return load_config(TrainConfig, config, extra)


def run(config: ConfigLike | None = None, *, overrides: Mapping | None = None,
        resume: str | Path | None = None, on_iteration: Callable[[dict], None] | None = None,
        progress: bool = True, export: bool = True) -> RunResult:
    """Train a run from `config` (or continue the one in `resume`) in this process, then
    export it (final/, delta.safetensors). `on_iteration(row)` gets every metrics row as it
    is written; raising KeyboardInterrupt there stops the run, saved and resumable."""
    if (config is None) == (resume is None):
        raise ConfigError("compo.run takes a config (a new run) or resume=RUN_DIR, not both")
    if resume is not None:
        run_dir = RunDirectory(resume)
        train = load_config(TrainConfig, run_dir.config_path)
    else:
        train = as_config(config, overrides)
        run_dir = start_run(train)
    if train.ray is not None:
        raise ConfigError("compo.run votes in this process; for a Ray cluster use "
                          "`compo train --config FILE --ray-address ADDRESS`")
    trainer = ComPOTrainer(train, run_dir, on_iteration=on_iteration)
    try:
        weight = trainer.run(progress=progress)
    finally:
        trainer.close()
    summary = export_run(trainer, weight) if export else None
    return RunResult(run_dir.path, weight, run_dir.metrics(), summary)
