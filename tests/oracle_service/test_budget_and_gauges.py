"""A run against the real service: its training gauges at /metrics while it runs, and the
judge budget (the run's and the service's), enforced before the judge is called."""

from __future__ import annotations

import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families

from compo.cli.main import main as compo_main
from compo.rundir import RunDirectory
from compo.train import ComPOTrainer, start_run
from tests.oracle_service.scripted import ITERATIONS, TOKEN_ENV, scripted_judge, train_config

PRICES = {"judge_input_usd_per_mtok": 2.0, "judge_output_usd_per_mtok": 8.0}


@pytest.fixture
def token_env(monkeypatch, api_token):
    monkeypatch.setenv(TOKEN_ENV, api_token)


def run_series(text: str, run_id: str) -> dict[tuple, float]:
    """compo_run_* samples of one run: {(name, kind or None): value}."""
    return {(sample.name, sample.labels.get("kind")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("compo_run_") and sample.labels["run_id"] == run_id}


def test_metrics_show_the_runs_gauges_while_it_runs(model_dir, pairs_file, tmp_path,
                                                    make_settings, running_service,
                                                    fake_judge, token_env):
    fake_judge.judge.decide = scripted_judge  # some comparisons abstain (server errors, ...)
    seen = {}
    with running_service(make_settings(**PRICES)) as http:
        def scrape(row):  # synchronised on the iteration, not on the clock
            seen[row["iteration"]] = run_series(http.get("/metrics").text, "gauged")

        config = train_config(model_dir, pairs_file, tmp_path, "gauged", str(http.base_url))
        trainer = ComPOTrainer(config, start_run(config), on_iteration=scrape)
        trainer.run(progress=False)
        after = run_series(http.get("/metrics").text, "gauged")
    rows = trainer.run_dir.metrics()
    for number, row in enumerate(rows):
        gauges, done = seen[row["iteration"]], rows[: number + 1]
        assert gauges[("compo_run_iteration", None)] == row["iteration"]
        assert gauges[("compo_run_iterations_done", None)] == number + 1
        assert gauges[("compo_run_iterations_total", None)] == ITERATIONS
        assert gauges[("compo_run_vote_ratio", None)] == pytest.approx(row["n_minus"] / row["m"])
        assert gauges[("compo_run_accepted_total", None)] == sum(r["accepted"] for r in done)
        errors = {}
        for r in done:
            for kind, count in r["oracle"]["errors"].items():
                errors[kind] = errors.get(kind, 0) + count
        assert errors and {kind: gauges[("compo_run_abstentions", kind)] for kind in errors} \
            == errors
        cost = sum(r["oracle"]["cost_usd"] for r in done)  # votes and signal checks
        assert gauges[("compo_run_cost_usd", None)] == pytest.approx(cost) and cost > 0
    assert after == {}  # the run finished: its series are gone (active runs only)


def test_gauges_are_bounded_to_the_newest_active_runs(make_settings, running_service):
    summary = {"iteration": 0, "m": 10, "n_minus": 3, "accepted": True}
    with running_service(make_settings(metrics_max_runs=2)) as http:
        for run_id in ("first", "second", "third", "ended"):
            assert http.post(f"/v1/runs/{run_id}/iterations", json=summary).status_code == 201
        assert http.post("/v1/runs/ended/status", json={"state": "failed", "message": "x"}
                         ).status_code == 200
        text = http.get("/metrics").text
        runs = http.get("/v1/runs").json()["runs"]
    shown = {s.labels["run_id"] for f in text_string_to_metric_families(text) for s in f.samples
             if s.name.startswith("compo_run_")}
    assert shown == {"third", "second"}  # "ended" ended, "first" is beyond the limit
    [ended] = [run for run in runs if run["run_id"] == "ended"]
    assert (ended["state"], ended["message"]) == ("failed", "x")


def costs_per_iteration(rows: list[dict]) -> list[float]:
    return [row["oracle"]["cost_usd"] for row in rows]


def test_a_budget_of_two_iterations_stops_the_run_after_two(
        model_dir, pairs_file, tmp_path, make_settings, running_service, fake_judge, token_env,
        capsys):
    fake_judge.judge.decide = scripted_judge
    settings = make_settings(cache_enabled=False, **PRICES)  # every run pays for its calls
    with running_service(settings) as http:
        url = str(http.base_url)
        reference = train_config(model_dir, pairs_file, tmp_path, "unlimited", url)
        trainer = ComPOTrainer(reference, start_run(reference))
        expected = trainer.run(progress=False)
        costs = costs_per_iteration(trainer.run_dir.metrics())
        budget = costs[0] + costs[1] + costs[2] / 2
        capped = train_config(model_dir, pairs_file, tmp_path, "capped", url)
        capped.oracle.budget_usd = budget
        path = tmp_path / "capped.yaml"
        path.write_text(yaml.safe_dump(capped.model_dump(mode="json")))
        calls_before = len(fake_judge.judge.requests)
        assert compo_main(["train", "--config", str(path), "--no-progress"]) == 2
        # stderr also holds the in-process servers' logs; the CLI's own line:
        err = [line for line in capsys.readouterr().err.splitlines()
               if line.startswith("error:")]
        run_dir = RunDirectory(tmp_path / "runs" / "capped")
        assert len(run_dir.metrics()) == 2 and run_dir.load_checkpoint().iterations_done == 2, err
        assert len(err) == 1 and err[0].startswith(
            "error: judge budget reached at iteration 2: run capped's judge budget is spent: ")
        assert "(oracle.budget_usd;" in err[0] and "compo train --resume" in err[0]
        spent = sum(http.get(f"/v1/runs/{run_id}/stats").json()["cost_usd"]
                    for run_id in ("capped", "capped.check"))
        assert costs[0] + costs[1] < spent <= budget  # nothing was called past the budget
        assert len(fake_judge.judge.requests) > calls_before
        [status] = [r for r in http.get("/v1/runs").json()["runs"] if r["run_id"] == "capped"]
        assert status["state"] == "stopped" and "budget" in status["message"]
        # raise the budget where the run keeps its config, and resume: the same weights
        saved = yaml.safe_load(run_dir.config_path.read_text())
        saved["oracle"]["budget_usd"] = 2 * sum(costs)
        run_dir.config_path.write_text(yaml.safe_dump(saved))
        assert compo_main(["train", "--resume", str(run_dir.path), "--no-progress"]) == 0
    assert len(run_dir.metrics()) == ITERATIONS
    assert torch.equal(run_dir.load_checkpoint().weight, expected)


def test_the_service_budget_refuses_calls_before_they_are_made(make_settings, running_service,
                                                               post_compare, fake_judge):
    items = [{"prompt": "p", "response_a": "a", "response_b": "b" * (i + 1), "run_id": "r"}
             for i in range(6)]
    with running_service(make_settings(budget_usd=1e-9, **PRICES)) as http:
        results = post_compare(http, items)
        limits = http.get("/v1/limits").json()
    assert [r["verdict"] for r in results] == ["abstain"] * 6 and not fake_judge.judge.requests
    assert {r["error"]["kind"] for r in results} == {"budget"}
    assert "COMPO_ORACLE_BUDGET_USD" in results[0]["error"]["message"]
    assert (limits["budget_usd"], limits["spent_usd"]) == (1e-9, 0.0)


def test_the_service_budget_admits_what_it_covers(make_settings, running_service, post_compare,
                                                  fake_judge):
    items = [{"prompt": "p", "response_a": "a", "response_b": "b" * (i + 1), "run_id": "r"}
             for i in range(6)]
    with running_service(make_settings(**PRICES)) as http:  # what the six cost, unlimited
        costs = [r["cost_usd"] for r in post_compare(http, items)]
    with running_service(make_settings(budget_usd=sum(costs[:3]) * 1.5, cache_enabled=False,
                                       db_path=make_settings().db_path.with_name("b.db"),
                                       **PRICES)) as http:
        results = post_compare(http, items)
        spent = http.get("/v1/stats").json()["cost_usd"]
    answered = [r for r in results if r["verdict"] != "abstain"]
    assert 3 <= len(answered) < 6 and spent <= sum(costs[:3]) * 1.5
    assert all(r["error"]["kind"] == "budget" for r in results if r["verdict"] == "abstain")


def test_a_run_budget_needs_prices(make_settings, running_service):
    body = {"items": [{"prompt": "p", "response_a": "a", "response_b": "b"}],
            "budget": {"run_id": "r", "usd": 1.0}}
    with running_service(make_settings()) as http:
        response = http.post("/v1/comparisons", json=body)
    assert response.status_code == 409 and "no judge prices" in response.json()["detail"]
