"""RunEvents: trackers started, fed and closed with the run; a resumed run continues the
same tracker run; a missing package is one line; a tracker outage does not stop a run."""

from __future__ import annotations

import sys

import pytest

from compo import run_events
from compo.cli.main import main as compo_main
from compo.config import ComPOConfig, DataConfig, ModelConfig, TrainConfig
from compo.config_files import dump_config
from compo.errors import RunStopped
from compo.rundir import RunDirectory
from compo.train import ComPOTrainer, start_run


def make_config(model_dir, pairs_file, tmp_path, run_id, report_to) -> TrainConfig:
    compo = ComPOConfig(num_perturbations=16, radius=1e-2, step_scale=0.5, accept_ratio=0.1)
    return TrainConfig(model=ModelConfig(path=str(model_dir)),
                       data=DataConfig(path=str(pairs_file)), compo=compo, seed=3,
                       output_dir=str(tmp_path / "runs"), run_id=run_id, checkpoint_every=1,
                       report_to=report_to)


def test_a_resumed_run_continues_its_mlflow_run(model_dir, pairs_file, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "resume-test")
    config = make_config(model_dir, pairs_file, tmp_path, "resumed", ["mlflow", "tensorboard"])

    def interrupt(row):
        if row["iteration"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ComPOTrainer(config, start_run(config), on_iteration=interrupt).run(progress=False)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("resume-test")
    [stopped] = client.search_runs([experiment.experiment_id])
    assert stopped.info.status == "KILLED"
    run_dir = RunDirectory(tmp_path / "runs" / "resumed")
    ComPOTrainer(config, run_dir).run(progress=False)
    [run] = client.search_runs([experiment.experiment_id])  # the same run, continued
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    rows = run_dir.metrics()
    history = client.get_metric_history(run.info.run_id, "compo/vote_ratio")
    assert sorted((m.step, m.value) for m in history) == [(r["iteration"], r["ratio"])
                                                          for r in rows]
    events = EventAccumulator(str(run_dir.path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("compo/n_minus")] == [r["iteration"] for r in rows]


def test_a_missing_tracker_package_is_one_line(model_dir, pairs_file, tmp_path, monkeypatch,
                                               capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(make_config(model_dir, pairs_file, tmp_path, "nowb", "wandb")))
    assert compo_main(["train", "--config", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: report_to: wandb needs the wandb package: pip install 'compo[wandb]' (or "
        "remove wandb from report_to)"]


def test_a_tracker_that_cannot_start_is_one_line(model_dir, pairs_file, tmp_path, monkeypatch,
                                                 capsys):
    """E.g. W&B online without a login: the tracker's own error, in one line, before the run."""
    import types

    def refuse(**kwargs):
        raise RuntimeError("api_key not configured (no-tty).\nCall wandb.login(key=[your key])")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=refuse))
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(make_config(model_dir, pairs_file, tmp_path, "nokey", "wandb")))
    assert compo_main(["train", "--config", str(path), "--no-progress"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: report_to: wandb did not start (RuntimeError: api_key not "
                           "configured (no-tty). Call wandb.login")
    assert RunDirectory(tmp_path / "runs" / "nokey").metrics() == []  # nothing ran


class Recorder:
    """A tracker that records, and can fail on its second log call."""

    def __init__(self, fail_at: int | None = None):
        self.logged, self.finished, self.fail_at = [], [], fail_at

    def log(self, scalars, step):
        if step == self.fail_at:
            raise ConnectionError("tracking server down")
        self.logged.append(step)

    def finish(self, state):
        self.finished.append(state)


def test_a_failing_tracker_is_a_warning_and_the_run_goes_on(model_dir, pairs_file, tmp_path,
                                                             monkeypatch, caplog):
    trackers = {"wandb": Recorder(fail_at=1), "mlflow": Recorder()}
    monkeypatch.setattr(run_events, "open_tracker", lambda name, info: trackers[name])
    config = make_config(model_dir, pairs_file, tmp_path, "flaky", ["wandb", "mlflow"])
    trainer = ComPOTrainer(config, start_run(config))
    trainer.run(progress=False)
    assert trackers["mlflow"].logged == [0, 1, 2, 3] and trackers["mlflow"].finished == [
        "finished"]
    assert trackers["wandb"].logged == [0] and trackers["wandb"].finished == []
    assert "report_to: wandb failed (ConnectionError: tracking server down)" in caplog.text


@pytest.mark.parametrize(("error", "state"), [
    (None, "finished"), (KeyboardInterrupt(), "stopped"),
    (RunStopped("judge budget reached"), "stopped"), (ValueError("bad\nthing"), "failed")])
def test_end_states(error, state):
    got, message = run_events.end_state(error)
    assert got == state and "\n" not in message
