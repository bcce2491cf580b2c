"""MLflow through MlflowClient: MLFLOW_TRACKING_URI (e.g. sqlite:///mlflow.db or a server)
and MLFLOW_EXPERIMENT_NAME (default "compo") apply. The config goes in as params, the run
id as the run name; a resumed run continues the same MLflow run (RUN_DIR/trackers.json)."""

from __future__ import annotations

import os
import time

from compo.trackers import RunInfo, missing_package
from compo.trackers.ids import remember, remembered

DEFAULT_EXPERIMENT = "compo"
PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
METRICS_PER_BATCH = 1000
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
END_STATES = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


class MlflowTracker:
    def __init__(self, run: RunInfo):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise missing_package("mlflow", "mlflow") from None
        self.metric = Metric
        self.client = MlflowClient()
        self.run_id = remembered(run.run_dir, "mlflow")
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(name))
        created = self.client.create_run(experiment_id, run_name=run.run_id,
                                         tags={"compo.run_dir": str(run.run_dir)})
        self.run_id = created.info.run_id
        remember(run.run_dir, "mlflow", self.run_id)
        params = [Param(key, str(value)[:MAX_PARAM_CHARS])
                  for key, value in run.hyperparameters.items()]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + PARAMS_PER_BATCH])

    def log(self, scalars: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self.metric(key, value, now, step) for key, value in scalars.items()]
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + METRICS_PER_BATCH])

    def finish(self, state: str) -> None:
        self.client.set_terminated(self.run_id, END_STATES.get(state, "FAILED"))
