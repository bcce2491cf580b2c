"""Weights & Biases: wandb's own environment variables apply (WANDB_MODE=offline,
WANDB_DIR, WANDB_PROJECT, WANDB_ENTITY, WANDB_API_KEY); the project defaults to "compo".
A resumed run continues the same W&B run (its id is kept in RUN_DIR/trackers.json)."""

from __future__ import annotations

import os

from compo.trackers import RunInfo, missing_package
from compo.trackers.ids import remember, remembered

DEFAULT_PROJECT = "compo"
FAILED_EXIT_CODE = 1  # what W&B is told for a run that did not finish


class WandbTracker:
    def __init__(self, run: RunInfo):
        try:
            import wandb
        except ImportError:
            raise missing_package("wandb", "wandb") from None
        previous = remembered(run.run_dir, "wandb")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), name=run.run_id,
            config=run.config, id=previous, resume="allow" if previous else None,
            reinit="create_new")
        remember(run.run_dir, "wandb", self.run.id)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def finish(self, state: str) -> None:
        self.run.finish(exit_code=0 if state == "finished" else FAILED_EXIT_CODE)
