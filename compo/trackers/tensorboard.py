"""TensorBoard: event files under RUN_DIR/tensorboard/ (torch's SummaryWriter); the config
as text and as hyper-parameters (the HPARAMS tab)."""

from __future__ import annotations

import yaml

from compo.trackers import RunInfo, missing_package

LOG_DIR = "tensorboard"  # under the run directory


class TensorBoardTracker:
    def __init__(self, run: RunInfo):
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError:
            raise missing_package("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run.run_dir / LOG_DIR))
        if not run.resumed:
            text = yaml.safe_dump(run.config, sort_keys=False)
            self.writer.add_text("config", f"```yaml\n{text}```", 0)
            for summary in hparams(run.hyperparameters, {}):
                self.writer.file_writer.add_summary(summary)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def finish(self, state: str) -> None:
        self.writer.close()
