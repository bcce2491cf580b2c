"""Trackio (local SQLite under TRACKIO_DIR, default ~/.cache/huggingface/trackio; a Hugging
Face Space with TRACKIO_SPACE_ID): the project defaults to "compo" (TRACKIO_PROJECT), the run
id is the run name, and a resumed run continues the run of that name."""

from __future__ import annotations

import os

from compo.trackers import RunInfo, missing_package

DEFAULT_PROJECT = "compo"


class TrackioTracker:
    def __init__(self, run: RunInfo):
        try:
            import trackio
        except ImportError:
            raise missing_package("trackio", "trackio") from None
        self.run = trackio.init(
            project=os.environ.get("TRACKIO_PROJECT", DEFAULT_PROJECT), name=run.run_id,
            config=run.hyperparameters, resume="allow" if run.resumed else "never")

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def finish(self, state: str) -> None:
        self.run.finish()
