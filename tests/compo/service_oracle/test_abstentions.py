"""Abstentions are a failure, not a vote: a run whose judge rejects the key (or whose
service is down) takes no step, stops after oracle.max_failed_iterations with the cause,
and is saved so that --resume, once the cause is fixed, equals the uninterrupted run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from compo.errors import OracleFailure
from compo.rundir import RunDirectory
from compo.train import ComPOTrainer, start_run
from oracle_service.testing.fake_judge import FakeReply
from tests.oracle_service.conftest import JUDGE_KEY
from tests.oracle_service.scripted import ITERATIONS, TOKEN_ENV, train_config

FAILED_LIMIT = 2  # oracle.max_failed_iterations of these runs (ITERATIONS is 3)
RUN_TIMEOUT_S = 600  # a guard for the CLI run


@pytest.fixture
def token_env(monkeypatch, api_token):
    monkeypatch.setenv(TOKEN_ENV, api_token)


def stopping_config(model_dir, pairs_file, tmp_path, run_id: str, url: str):
    config = train_config(model_dir, pairs_file, tmp_path, run_id, url)
    oracle = config.oracle.model_copy(update={"max_failed_iterations": FAILED_LIMIT})
    return config.model_copy(update={"oracle": oracle})


def test_a_rejected_key_stops_the_run_saved_and_the_resumed_run_matches(
        model_dir, pairs_file, tmp_path, make_settings, running_service, fake_judge,
        token_env):
    with running_service(make_settings(db_path=tmp_path / "reference.sqlite3")) as http:
        reference = stopping_config(model_dir, pairs_file, tmp_path, "ref", str(http.base_url))
        expected = ComPOTrainer(reference, start_run(reference)).run(progress=False)
    with running_service(make_settings()) as http:
        config = stopping_config(model_dir, pairs_file, tmp_path, "cut", str(http.base_url))
        trainer = ComPOTrainer(config, start_run(config))
        fake_judge.judge.api_key = "sk-rotated"  # the service's key is no longer accepted
        with pytest.raises(OracleFailure) as stopped:
            trainer.run(progress=False)
        rows = trainer.run_dir.metrics()
        saved = trainer.run_dir.load_checkpoint()
        fake_judge.judge.api_key = JUDGE_KEY  # fixed
        resumed = ComPOTrainer(config, RunDirectory(trainer.run_dir.path)).run(progress=False)
    message = str(stopped.value)
    assert "judge answered auth_error for" in message
    assert "check COMPO_ORACLE_JUDGE_API_KEY on the service" in message
    assert f"compo train --resume {trainer.run_dir.path}" in message
    assert len(rows) == FAILED_LIMIT and all(row["failed"] in message for row in rows)
    assert not any(row["accepted"] for row in rows)  # no step on a failed iteration
    assert all(row["logp_chosen_after"] == row["logp_chosen_before"] for row in rows)
    assert saved.iterations_done == 0 and torch.equal(saved.weight, trainer.base_weight)
    assert torch.equal(resumed, expected)  # the failed iterations were redone
    assert not any(row.get("failed") for row in trainer.run_dir.metrics())
    assert len(trainer.run_dir.metrics()) == ITERATIONS


def test_a_service_that_goes_down_is_named_as_the_cause(model_dir, pairs_file, tmp_path,
                                                        token_env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = stopping_config(model_dir, pairs_file, tmp_path, "down", url)
    trainer = ComPOTrainer(config, start_run(config))
    with pytest.raises(OracleFailure) as stopped:
        trainer.run(progress=False)
    message = str(stopped.value)
    assert f"the oracle service at {url} did not answer" in message
    assert "start it (compo serve) or fix oracle.service_url" in message
    assert "raise" not in message  # no radius advice


def test_through_the_cli_the_stop_is_one_line_and_exit_3(
        model_dir, pairs_file, tmp_path, make_settings, running_service, fake_judge,
        api_token):
    fake_judge.judge.enqueue(FakeReply())  # the preflight's canary is answered ...
    fake_judge.judge.fault_rate = 1.0  # ... then the key is rejected
    fake_judge.judge.fault_replies = [FakeReply(status=401, error_code="invalid_api_key")]
    with running_service(make_settings()) as http:
        config = stopping_config(model_dir, pairs_file, tmp_path, "cli", str(http.base_url))
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        result = subprocess.run(
            [sys.executable, "-m", "compo.cli", "train", "--config", str(path),
             "--no-progress"], capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
            env={**os.environ, TOKEN_ENV: api_token})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and "judge answered auth_error for" in errors[0]
    assert "check COMPO_ORACLE_JUDGE_API_KEY on the service" in errors[0]
    assert "raise oracle.radius" not in result.stderr  # the diagnostics do not blame it
    assert RunDirectory(tmp_path / "runs" / "cli").load_checkpoint().iterations_done == 0
