"""ComPO runs against the real service on loopback: generative votes, reports, statistics."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForSequenceClassification

from compo.cli.main import main as compo_main
from compo.rundir import RunDirectory
from compo.service_oracle.reporting import IterationReporter
from compo.train import ComPOTrainer, start_run
from tests.oracle_service.scripted import (
    CRASH,
    ITERATIONS,
    PERTURBATIONS,
    TOKEN_ENV,
    bucket,
    check_against_service,
    expected_vote,
    scripted_judge,
    train_config,
)

RETRIES = 3  # make_settings' retry_max_attempts


@pytest.fixture
def token_env(monkeypatch, api_token):
    monkeypatch.setenv(TOKEN_ENV, api_token)


def test_judge_run_votes_follow_verdicts_and_abstentions_are_excluded(
        model_dir, pairs_file, tmp_path, make_settings, running_service, fake_judge, token_env):
    fake_judge.judge.decide = scripted_judge
    with running_service(make_settings()) as http:
        config = train_config(model_dir, pairs_file, tmp_path, "judge-run", str(http.base_url))
        trainer = ComPOTrainer(config, start_run(config))
        weight = trainer.run(progress=False)
        rows = trainer.run_dir.metrics()
        stats = check_against_service(http, "judge-run", rows)
        source = trainer.source.oracle  # the service oracle: one pair's votes, against the judge
        source.prepare(trainer.pairs[:1], trainer.base_weight.clone())
        base = source.base_responses(config.seed, 0)[0]
        texts = [row[0] for row in source.responses(config.seed, 0, range(PERTURBATIONS))]
        votes = source.votes(config.seed, 0, list(range(PERTURBATIONS)))
    assert votes.tolist() == [expected_vote(base, text) for text in texts]
    assert {-1, 0, 1} <= set(votes.tolist())
    assert stats["errors"]["server_error"] > 0 and stats["errors"]["malformed_output"] > 0
    assert sum(row["abstained"] for row in rows) == sum(stats["errors"].values())
    assert all(row["m"] + row["abstained"] == PERTURBATIONS for row in rows)
    shown = [tuple(request.shown) for request in fake_judge.judge.requests]
    crashed = {pair for pair in shown if bucket(*pair) == CRASH}
    assert crashed and all(shown.count(pair) % RETRIES == 0 for pair in crashed)
    assert any(row["accepted"] for row in rows) and not torch.equal(weight, trainer.base_weight)


@pytest.fixture
def reward_model_dir(tmp_path, tokenizer) -> Path:
    """A 1-layer Llama reward model (num_labels=1) with the tiny tokenizer, saved locally."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path / "reward-model"
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_reward_model_run_through_the_cli(model_dir, pairs_file, tmp_path, make_settings,
                                          running_service, reward_model_dir, token_env):
    settings = make_settings(backend="reward_model", reward_model_path=reward_model_dir,
                             reward_device="cpu")
    with running_service(settings) as http:
        config = train_config(model_dir, pairs_file, tmp_path, "reward-run", str(http.base_url))
        path = tmp_path / "train.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        assert compo_main(["train", "--config", str(path), "--no-progress"]) == 0
        rows = RunDirectory(tmp_path / "runs" / "reward-run").metrics()
        assert len(rows) == ITERATIONS
        stats = check_against_service(http, "reward-run", rows)
    assert stats["votes"]["abstain"] == 0 and stats["votes"]["b"] > 0
    assert (tmp_path / "runs" / "reward-run" / "final" / "config.json").is_file()


def test_likelihood_run_reports_every_iteration(model_dir, pairs_file, tmp_path, make_settings,
                                                running_service, token_env, api_token, caplog):
    with running_service(make_settings()) as http:
        config = train_config(model_dir, pairs_file, tmp_path, "lik-run", str(http.base_url),
                              kind="likelihood")
        trainer = ComPOTrainer(config, start_run(config))
        trainer.run(progress=False)
        posted = http.get("/v1/runs/lik-run/iterations").json()["iterations"]
    rows = trainer.run_dir.metrics()
    assert len(posted) == len(rows) == ITERATIONS
    for summary, row in zip(posted, rows, strict=True):
        assert summary["m"] == PERTURBATIONS and row["reported"]
        assert (summary["n_minus"], summary["accepted"], summary["step"]) == (
            row["n_minus"], row["accepted"], row["step"])
        change = sum(row["logp_chosen_after"]) - sum(row["logp_chosen_before"])
        assert summary["logp_chosen_change"] == pytest.approx(change)
    assert api_token not in caplog.text


def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("failure", ["down", "wrong token"])
def test_failed_reports_are_warnings_not_a_crashed_run(model_dir, pairs_file, tmp_path,
                                                       make_settings, running_service, caplog,
                                                       monkeypatch, failure):
    quiet = train_config(model_dir, pairs_file, tmp_path, "quiet", None, kind="likelihood")
    expected = ComPOTrainer(quiet, start_run(quiet)).run(progress=False)
    monkeypatch.setenv(TOKEN_ENV, "not-the-token-0123")
    with running_service(make_settings()) as http:
        url = closed_url() if failure == "down" else str(http.base_url)
        config = train_config(model_dir, pairs_file, tmp_path, "noisy", url, kind="likelihood")
        trainer = ComPOTrainer(config, start_run(config))
        assert torch.equal(trainer.run(progress=False), expected)
    rows = trainer.run_dir.metrics()
    assert [row["report_failures"] for row in rows] == [1, 2, 3]
    assert [row["reports_pending"] for row in rows] == [1, 2, 3]
    assert not any(row["reported"] for row in rows)
    warnings = [r for r in caplog.records if "could not report iteration" in r.getMessage()]
    assert len(warnings) == ITERATIONS and all(r.levelname == "WARNING" for r in warnings)
    assert "not-the-token-0123" not in caplog.text


def test_reporter_posts_the_backlog_once_the_service_answers(make_settings, running_service,
                                                            api_token):
    row = {"iteration": 0, "m": 0, "n_minus": 0, "abstained": 8, "accepted": False,
           "step": 0.0, "kept_fraction": 0.0, "logp_chosen_before": [-3.0],
           "logp_chosen_after": [-3.0], "logp_rejected_before": [-4.0],
           "logp_rejected_after": [-4.0]}
    reporter = IterationReporter(closed_url(), "backlog", api_token, timeout_s=5.0)
    assert reporter.report(row) == {"reported": False, "report_failures": 1,
                                    "reports_pending": 1}
    with running_service(make_settings()) as http:
        reporter.base_url = str(http.base_url)
        assert reporter.report({**row, "iteration": 1, "m": 8, "abstained": 0})["reported"]
        posted = http.get("/v1/runs/backlog/iterations").json()["iterations"]
    assert [(s["iteration"], s["m"], s["abstained"]) for s in posted] == [(0, 0, 8), (1, 8, 0)]


@pytest.mark.parametrize("in_flight, most", [(1, 2), (4, 8)])
def test_requests_overlap_generation_up_to_requests_in_flight(
        model_dir, pairs_file, tmp_path, make_settings, running_service, fake_judge, token_env,
        in_flight, most):
    # judge calls wait until `most` are in flight together: the window fills on any machine
    # (a client that allowed fewer would stall here and fail; more would show in the max)
    fake_judge.judge.calls.hold_until(most)
    with running_service(make_settings()) as http:
        config = train_config(model_dir, pairs_file, tmp_path, "overlap", str(http.base_url))
        config.oracle = config.oracle.model_copy(update={"generation_batch_size": 2,
                                                         "requests_in_flight": in_flight,
                                                         "signal_checks": 0})
        trainer = ComPOTrainer(config, start_run(config))
        source = trainer.source.oracle  # the service oracle itself
        source.prepare(trainer.pairs[:1], trainer.base_weight.clone())
        votes = source.votes(config.seed, 0, list(range(PERTURBATIONS)))
        again = source.votes(config.seed, 0, list(range(PERTURBATIONS)))  # cached verdicts
        texts = [row[0] for row in source.responses(config.seed, 0, range(PERTURBATIONS))]
        assert 1 <= len(source.clients) <= in_flight  # one client per request thread, kept
        trainer.close()
        assert source.pool is None and not source.clients
    assert torch.equal(votes, again)
    base = source.base_responses(config.seed, 0)[0]
    judged = sum(text != base for text in texts)
    assert judged > most  # enough requests to fill the window
    # one request holds one batch (2 comparisons); the judge sees `in_flight` at once
    assert fake_judge.judge.max_in_flight == most
    # the default fake judge prefers the longer response: -1 when the perturbed one is longer
    assert votes.tolist() == [-1 if len(text) > len(base) else 1 for text in texts]
