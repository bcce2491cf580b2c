"""The judge cost estimate before a run (`compo probe`): the arithmetic, and the estimate
against what a real run then costs on the real service."""

from __future__ import annotations

import pytest
import yaml

from compo.cli.main import main as compo_main
from compo.config import ComPOConfig, DataConfig, ModelConfig, OracleConfig, TrainConfig
from compo.data.formats import TokenizedPair
from compo.service_oracle.cost import cost_lines, estimate_cost
from compo.train import ComPOTrainer, start_run
from oracle_service.api.health import CANARY
from oracle_service.schemas import ServiceLimits
from tests.oracle_service.scripted import TOKEN_ENV, train_config

PRICES = {"judge_input_usd_per_mtok": 2.0, "judge_output_usd_per_mtok": 8.0}


def test_the_arithmetic():
    config = TrainConfig(model=ModelConfig(path="m"), data=DataConfig(path="d"),
                         compo=ComPOConfig(num_perturbations=100), batch_size=2,
                         oracle=OracleConfig(kind="service", max_new_tokens=10, signal_checks=4))
    pairs = [TokenizedPair([1], [1] * 5, [2], "x", {"chosen": "a" * 15})]  # 3 chars per token
    limits = ServiceLimits(max_batch_size=8, max_body_bytes=1, backend="judge",
                           calls_per_comparison=2, template_chars=340, chars_per_token=4.0,
                           max_completion_tokens=8, input_usd_per_mtok=1.0,
                           output_usd_per_mtok=4.0)
    estimate = estimate_cost(config, ["p" * 20, "q" * 40], pairs, limits, iterations=50)
    assert (estimate.comparisons, estimate.calls) == (208, 416)  # (100 + 4) x 2 prompts, x 2
    per_call_chars = 340 + 30 + 2 * 10 * 3  # template, mean prompt, two 10-token responses
    assert estimate.prompt_tokens == 416 * per_call_chars / 4
    assert estimate.completion_tokens == 416 * 8
    assert estimate.usd == pytest.approx((416 * 430 / 4 * 1.0 + 416 * 8 * 4.0) / 1e6)
    lines = cost_lines(estimate, budget_usd=estimate.usd * 10.5)
    assert "covers about 10 of 50 iterations" in lines[-1]


def test_compo_probe_prints_the_cost_a_run_then_stays_under(
        model_dir, pairs_file, tmp_path, make_settings, running_service, fake_judge, capsys,
        monkeypatch, api_token):
    monkeypatch.setenv(TOKEN_ENV, api_token)
    with running_service(make_settings(cache_enabled=False, **PRICES)) as http:
        config = train_config(model_dir, pairs_file, tmp_path, "costed", str(http.base_url))
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        assert compo_main(["probe", "--config", str(path), "--cost"]) == 0
        out = capsys.readouterr().out
        assert "probe:" not in out  # --cost: no probe
        printed = float(out.split(" per iteration, ")[0].rsplit("$", 1)[1])
        trainer = ComPOTrainer(config, start_run(config))
        trainer.run(progress=False)
        canary = {(CANARY.response_a, CANARY.response_b), (CANARY.response_b, CANARY.response_a)}
        calls = sum(request.shown not in canary for request in fake_judge.judge.requests)
    rows = trainer.run_dir.metrics()
    comparisons = (config.compo.num_perturbations + config.oracle.signal_checks) * len(rows)
    assert f"{comparisons // len(rows)} comparisons = {comparisons // len(rows)} judge calls" \
        in out
    assert calls <= comparisons  # identical pairs cost no call
    for row in rows:  # the estimate prices responses of max_new_tokens: about the most
        assert printed * 0.5 < row["oracle"]["cost_usd"] <= printed * 1.1  # here: 0.96-0.98
