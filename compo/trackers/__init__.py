"""Experiment trackers (`report_to`): each iteration's figures, the resolved config and the
run id go to TensorBoard, Weights & Biases, MLflow or Trackio, as TRL's `report_to` does.

One registry line per tracker (name -> "module:Class"); each class takes a RunInfo and has
`log(scalars, step)` and `finish(state)`. Its package is an optional extra
(`pip install 'compo[NAME]'`), imported only when the tracker is used.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from compo.errors import ConfigError

log = logging.getLogger(__name__)

TRACKERS = {
    "tensorboard": "compo.trackers.tensorboard:TensorBoardTracker",
    "wandb": "compo.trackers.wandb:WandbTracker",
    "mlflow": "compo.trackers.mlflow:MlflowTracker",
    "trackio": "compo.trackers.trackio:TrackioTracker",
}
NONE = "none"  # report_to: none (TRL's spelling of "no tracker")
MAX_REASON_CHARS = 300  # of a tracker's own error, in the one-line message


@dataclass(frozen=True)
class RunInfo:
    """What a tracker is told when a run starts (or resumes)."""

    run_id: str
    run_dir: Path
    hyperparameters: dict  # the resolved config, flattened (compo.trackers.scalars)
    config: dict  # the resolved config as nested plain values
    resumed: bool  # the run continues from a checkpoint


class Tracker(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def finish(self, state: str) -> None: ...


def missing_package(name: str, package: str) -> ConfigError:
    """The one-line error of a tracker whose package is not installed."""
    return ConfigError(f"report_to: {name} needs the {package} package: "
                       f"pip install 'compo[{name}]' (or remove {name} from report_to)")


def tracker_names(value) -> list[str]:
    """report_to as a list of known names: a name, a list of names, or 'none'."""
    if value is not None and not isinstance(value, str | list | tuple):
        raise ValueError(f"report_to is a tracker name or a list of names, got {value!r}")
    names = [value] if isinstance(value, str) else list(value or [])
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f"report_to lists tracker names (strings), got {names!r}")
    names = [name for name in names if name != NONE]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown}; report_to takes any of "
                         f"{sorted(TRACKERS)} (or 'none')")
    return list(dict.fromkeys(names))


def open_tracker(name: str, run: RunInfo) -> Tracker:
    """The tracker `name` started for `run`; a ConfigError naming the extra when its package
    is missing, or saying why it did not start (a login, a server that does not answer)."""
    module, _, cls = TRACKERS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)(run)
    except ConfigError:
        raise
    except Exception as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:MAX_REASON_CHARS]
        raise ConfigError(f"report_to: {name} did not start ({reason}); check its settings "
                          "and environment variables (README, 'Experiment trackers'), or "
                          f"remove {name} from report_to") from error
