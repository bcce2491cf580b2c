"""The service oracle on Ray workers: the single-process run's votes and weights, faults."""

import os
import signal

import pytest
import torch

from compo.config import RayConfig
from compo.train import ComPOTrainer, start_run
from tests.oracle_service.scripted import (
    ITERATIONS,
    PERTURBATIONS,
    TOKEN_ENV,
    check_against_service,
    scripted_judge,
    train_config,
)
from tests.workers.conftest import TEST_RAY

pytestmark = pytest.mark.usefixtures("ray_local")
CHUNK = 12  # = the scripted config's generation_batch_size: one generation batch per task
COMPARED = ("n_minus", "m", "abstained", "accepted", "step")
LOGPROBS = ("logp_chosen_before", "logp_chosen_after", "logp_rejected_before",
            "logp_rejected_after")  # sums over tokens: thread counts change the last bits


@pytest.fixture
def token_env(monkeypatch, api_token):
    """The token in the coordinator's environment only: Ray workers started without it."""
    monkeypatch.setenv(TOKEN_ENV, api_token)


def ray_config(model_dir, pairs_file, tmp_path, run_id: str, url: str, workers: int):
    settings = RayConfig(**{**TEST_RAY, "num_workers": workers, "chunk_size": CHUNK,
                            "tasks_in_flight": 1})  # one chunk each
    return train_config(model_dir, pairs_file, tmp_path, run_id, url, ray=settings)


def run_on_ray(config, on_votes=None):
    """Train on the connected Ray instance; on_votes(source, done, total) as votes come in."""
    from workers.coordinator import ray_trainer

    box = {}
    hook = None if on_votes is None else lambda done, total: on_votes(box["s"], done, total)
    trainer = ray_trainer(config, start_run(config), progress=False, on_votes=hook)
    box["s"] = trainer.source
    try:
        return trainer.run(progress=False), trainer.run_dir
    finally:
        trainer.source.close()


def run_in_process(config):
    trainer = ComPOTrainer(config, start_run(config))
    return trainer.run(progress=False), trainer.run_dir.metrics()


def test_judge_votes_on_two_workers_equal_the_single_process_run(
        model_dir, pairs_file, tmp_path, make_settings, running_service, fake_judge,
        token_env, api_token):
    fake_judge.judge.decide = scripted_judge
    with running_service(make_settings()) as http:
        url = str(http.base_url)
        local, local_rows = run_in_process(
            train_config(model_dir, pairs_file, tmp_path, "gen-local", url))
        weights, run_dir = run_on_ray(ray_config(model_dir, pairs_file, tmp_path, "gen-ray",
                                                 url, workers=2))
        rows = run_dir.metrics()
        stats = check_against_service(http, "gen-ray", rows)  # every comparison via the API
        posted = http.get("/v1/runs/gen-ray/iterations").json()["iterations"]
    assert torch.equal(weights, local)
    assert len(rows) == ITERATIONS and any(row["accepted"] for row in rows)
    for row, expected in zip(rows, local_rows, strict=True):
        assert {key: row[key] for key in COMPARED} == {key: expected[key] for key in COMPARED}
        assert row["oracle"]["verdicts"] == expected["oracle"]["verdicts"]
        for key in LOGPROBS:
            assert row[key] == pytest.approx(expected[key], rel=1e-6)
        assert row["m"] + row["abstained"] == PERTURBATIONS
        assert len(row["ray"]["per_worker"]) == 2  # both workers generated and compared
        assert row["ray"]["seconds"]["base"] > 0
        assert row["oracle"]["identical"] == expected["oracle"]["identical"]
    for summary, row in zip(posted, rows, strict=True):  # what the dashboard draws for Ray
        assert {key: value for key, value in summary.items() if key.startswith("worker_")} == {
            f"worker_{name}.{worker}": work[name] for worker, work in
            row["ray"]["per_worker"].items() for name in ("per_s", "perturbations")}
        assert summary["ray_redispatched"] == row["ray"]["redispatched"]
        assert summary["oracle_identical"] == row["oracle"]["identical"]
    assert sum(row["abstained"] for row in rows) == stats["votes"]["abstain"] > 0
    written = "".join(p.read_text() for p in run_dir.path.rglob("*") if p.suffix in
                      (".json", ".jsonl", ".yaml"))
    assert api_token not in written


def test_killed_generating_worker_changes_nothing(model_dir, pairs_file, tmp_path,
                                                 make_settings, running_service, fake_judge,
                                                 token_env):
    fake_judge.judge.decide = scripted_judge
    killed = []

    def kill_once(source, done, total):
        if source.group.round == 2 and not killed and done < total:
            victim = next(w for w in source.workers if w.in_flight)
            killed.append(victim.name)
            os.kill(victim.pid, signal.SIGKILL)

    with running_service(make_settings()) as http:
        url = str(http.base_url)
        expected, _ = run_in_process(train_config(model_dir, pairs_file, tmp_path, "gen-ok", url))
        config = ray_config(model_dir, pairs_file, tmp_path, "gen-killed", url, workers=2)
        weights, run_dir = run_on_ray(config, on_votes=kill_once)
    rows = run_dir.metrics()
    assert killed and torch.equal(weights, expected)
    # the victim's chunk is redone elsewhere, or (if its answer was already out) the
    # failure surfaces at its next call of the iteration: either way it is counted
    assert rows[1]["ray"]["failures"] >= 1
    assert rows[1]["m"] + rows[1]["abstained"] == PERTURBATIONS
