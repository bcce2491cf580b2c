"""Who hears about a run besides metrics.jsonl: the experiment trackers of `report_to`
(compo/trackers/) and, when the run reports to an oracle service, the service's run status
(running / finished / stopped / failed, and the iterations in all: the dashboard's progress).

A tracker that fails during the run is a warning and is dropped: metrics.jsonl stays the
record, and a tracker outage does not stop a run. A tracker that cannot start (its package
is missing, its server refuses) stops the run before the first iteration.
"""

from __future__ import annotations

import logging

from compo.errors import RunStopped
from compo.rundir import RunDirectory
from compo.trackers import RunInfo, open_tracker
from compo.trackers.scalars import hyperparameters, iteration_scalars

log = logging.getLogger(__name__)
MAX_MESSAGE_CHARS = 300  # of the status message sent to the service


def end_state(error: BaseException | None) -> tuple[str, str]:
    """(state, message) of a run that ended with `error` (None: it finished)."""
    if error is None:
        return "finished", ""
    if isinstance(error, KeyboardInterrupt):
        return "stopped", "interrupted; resume with compo train --resume RUN_DIR"
    if isinstance(error, RunStopped):
        return "stopped", " ".join(str(error).split())[:MAX_MESSAGE_CHARS]
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return "failed", text[:MAX_MESSAGE_CHARS]


class RunEvents:
    """Starts the trackers and tells the service a run started; per iteration the trackers
    get the row's scalars (iteration_scalars); at the end both learn how the run ended."""

    def __init__(self, config, run_dir: RunDirectory, reporter=None):
        self.config, self.run_dir, self.reporter = config, run_dir, reporter
        self.trackers: dict[str, object] = {}

    def start(self, total: int, done: int) -> None:
        """The run starts (done = 0) or resumes at `done` of `total` iterations."""
        dumped = self.config.model_dump(mode="json")
        info = RunInfo(run_id=self.run_dir.path.name, run_dir=self.run_dir.path,
                       hyperparameters=hyperparameters(dumped), config=dumped,
                       resumed=done > 0)
        try:
            for name in self.config.report_to:
                self.trackers[name] = open_tracker(name, info)
        except BaseException as error:
            self.finish(error)
            raise
        if self.reporter is not None:
            self.reporter.accepted_total = sum(bool(row["accepted"])
                                               for row in self.run_dir.metrics())
            self.reporter.report_status("running", total)

    def iteration(self, row: dict) -> None:
        """Log one metrics row to every tracker."""
        if not self.trackers:
            return
        scalars = iteration_scalars(row)
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.log(scalars, row["iteration"])
            except Exception as error:  # a tracker outage does not stop the run
                log.warning("report_to: %s failed (%s: %s); it gets nothing more from this "
                            "run (metrics.jsonl has every iteration)", name,
                            type(error).__name__, error)
                del self.trackers[name]

    def finish(self, error: BaseException | None) -> None:
        """The run ended: `error` is what stopped it (None: finished)."""
        state, message = end_state(error)
        for name, tracker in self.trackers.items():
            try:
                tracker.finish(state)
            except Exception as failure:
                log.warning("report_to: %s could not close the run (%s: %s)", name,
                            type(failure).__name__, failure)
        self.trackers = {}
        if self.reporter is not None:
            self.reporter.report_status(state, None, message)
