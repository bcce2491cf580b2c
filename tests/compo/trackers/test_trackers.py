"""report_to: one real run (the CLI, a service-oracle run against the real service and the
scripted fake judge, judge prices set) writes to all four trackers; each test reads its
tracker back with the tracker's own reader and compares it with metrics.jsonl."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from compo.rundir import RunDirectory
from compo.trackers.scalars import iteration_scalars
from oracle_service.core.settings import Settings
from oracle_service.main import create_app
from oracle_service.testing.fake_judge import BackgroundServer, FakeJudge
from tests.conftest import PAIRS, write_jsonl
from tests.oracle_service.scripted import ITERATIONS, TOKEN_ENV, scripted_judge, train_config

TOKEN, JUDGE_KEY, RUN_ID = "tracker-test-token-5d41402abc", "sk-fake-judge-key", "tracked"
TRACKERS = ["tensorboard", "wandb", "mlflow", "trackio"]
RUN_TIMEOUT_S = 900


@dataclass
class Tracked:
    run_dir: Path
    rows: list[dict]
    env: dict[str, str]
    tmp: Path


def tracker_env(tmp: Path) -> dict[str, str]:
    """The standard variables of each tracker: offline W&B, MLflow on SQLite, local Trackio."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("COMPO_ORACLE_", "WANDB_", "MLFLOW_", "TRACKIO_"))}
    return {**env, TOKEN_ENV: TOKEN, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp / "wandb"),
            "WANDB_SILENT": "true", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
            "MLFLOW_EXPERIMENT_NAME": "compo-test", "TRACKIO_DIR": str(tmp / "trackio"),
            "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, model_dir) -> Tracked:
    tmp = tmp_path_factory.mktemp("tracked")
    (tmp / "wandb").mkdir()
    pairs = write_jsonl(tmp / "pairs.jsonl", PAIRS)
    judge = FakeJudge(api_key=JUDGE_KEY)
    judge.decide = scripted_judge
    with BackgroundServer(judge) as judge_server:
        settings = Settings(api_token=TOKEN, judge_base_url=f"{judge_server.url}/v1",
                            judge_api_key=JUDGE_KEY, judge_model="fake-judge",
                            db_path=tmp / "oracle.sqlite3", retry_max_attempts=2,
                            retry_initial_wait_s=0.01, retry_jitter_s=0.0,
                            judge_input_usd_per_mtok=2.0, judge_output_usd_per_mtok=8.0)
        with BackgroundServer(create_app(settings)) as service:
            config = train_config(model_dir, pairs, tmp, RUN_ID, service.url,
                                  report_to=TRACKERS)
            path = tmp / "train.yaml"
            path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
            env = tracker_env(tmp)
            done = subprocess.run(
                [sys.executable, "-m", "compo.cli", "train", "--config", str(path),
                 "--no-progress"], env=env, cwd=tmp, capture_output=True, text=True,
                timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp / "runs" / RUN_ID
    rows = RunDirectory(run_dir).metrics()
    assert len(rows) == ITERATIONS
    return Tracked(run_dir, rows, env, tmp)


def expected_series(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for tag, value in iteration_scalars(row).items():
            series.setdefault(tag, []).append((row["iteration"], value))
    return series


def test_scalars_are_the_rows_figures(tracked):
    """The tags name what the dashboard shows, with the row's own values."""
    for row in tracked.rows:
        scalars = iteration_scalars(row)
        oracle = row["oracle"]
        assert scalars["compo/vote_ratio"] == row["ratio"]
        assert scalars["compo/accepted"] == float(row["accepted"])
        assert scalars["compo/kept_fraction"] == row["kept_fraction"]
        for label, count in oracle["verdicts"].items():
            assert scalars[f"oracle/verdicts/{label}"] == count
        for kind, count in oracle["errors"].items():  # abstentions by kind
            assert scalars[f"oracle/errors/{kind}"] == count
        assert scalars["oracle/identical_share"] == oracle["identical_share"]
        assert scalars["oracle/cost_usd"] == oracle["cost_usd"] > 0  # prices are set
        margin = (sum(row["logp_chosen_after"]) - sum(row["logp_rejected_after"])) / len(
            row["logp_chosen_after"])
        assert scalars["compo/margin_after"] == pytest.approx(margin)
    kinds = {kind for row in tracked.rows for kind in row["oracle"]["errors"]}
    assert {"server_error", "malformed_output"} <= kinds  # the scripted judge's failures


def test_tensorboard_event_files_hold_every_scalar(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked.run_dir / "tensorboard"))
    events.Reload()
    expected = expected_series(tracked.rows)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        logged = [(event.step, event.value) for event in events.Scalars(tag)]
        assert logged == [(step, float(np.float32(value))) for step, value in points], tag
    assert "config/text_summary" in events.Tags()["tensors"]
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"compo.num_perturbations" in start and b"oracle.kind" in start


def test_mlflow_run_on_a_local_sqlite_store(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracked.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("compo-test")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == RUN_ID and run.info.status == "FINISHED"
    assert run.data.params["compo.num_perturbations"] == "24"
    assert run.data.params["oracle.kind"] == "service"
    for tag, points in expected_series(tracked.rows).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                              tag))
        assert history == points, tag


def wandb_records(path: str) -> list[dict]:
    """The records of an offline W&B run, read by W&B's own reader (wandb leet inspect)."""
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", path],
                          capture_output=True, text=True, timeout=120, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_wandb_offline_run_files(tracked):
    [path] = glob.glob(str(tracked.tmp / "wandb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = wandb_records(path)
    [run] = [record["run"] for record in records if record["type"] == "run"]
    assert run["display_name"] == RUN_ID and run["project"] == "compo"
    assert run["config"]["update"]["compo"]["num_perturbations"] == 24
    history = [record["history"]["item"] for record in records if record["type"] == "history"]
    for tag, points in expected_series(tracked.rows).items():
        logged = [(item["_step"], item[tag]) for item in history if tag in item]
        assert logged == points, tag
    assert (tracked.run_dir / "trackers.json").is_file()  # a resume continues this W&B run


def test_trackio_local_store(tracked):
    script = ("import json; from trackio.sqlite_storage import SQLiteStorage as S; "
              f"print(json.dumps([S.get_logs('compo', {RUN_ID!r}), "
              f"S.get_run_config('compo', {RUN_ID!r})]))")
    done = subprocess.run([sys.executable, "-c", script], env=tracked.env, capture_output=True,
                          text=True, timeout=120, check=True)
    logs, config = json.loads(done.stdout.splitlines()[-1])
    assert config["compo.num_perturbations"] == 24 and config["oracle.kind"] == "service"
    for tag, points in expected_series(tracked.rows).items():
        logged = [(log["step"], log[tag]) for log in logs if tag in log]
        assert logged == points, tag
