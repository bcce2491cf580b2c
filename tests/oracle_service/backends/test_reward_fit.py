"""`compo reward-model fit`: the model it writes (also the learning bench's: bench/learning.py)
is served by the reward_model backend with the verdicts it learned."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from compo.cli.main import main as compo_main
from oracle_service.backends.reward_fit import (
    FitSettings,
    ScratchShape,
    fit_reward_model,
    read_pairs,
)
from tests.conftest import PAIRS, write_jsonl


def test_the_fit_is_seeded(model_dir, tmp_path):
    """The learning bench refits its reward model from the seed: the same model each time."""
    rows, settings = PAIRS * 3, FitSettings(steps=4, batch_size=5, seed=2)
    fitted = [fit_reward_model(model_dir, rows, tmp_path / name, settings,
                               ScratchShape(hidden=32, layers=1)) for name in ("a", "b")]
    a, b = (load_file(path / "model.safetensors") for path, _ in fitted)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert len(fitted[0][1]) == 4


def test_fit_then_serve(model_dir, tmp_path, make_settings, running_service, post_compare,
                        capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "rm"
    assert compo_main(["reward-model", "fit", "--data", str(data), "--base", str(model_dir),
                       "--out", str(out), "--from-scratch", "--hidden", "32", "--layers", "1",
                       "--steps", "60", "--batch-size", "4", "--eval", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "held-out pair accuracy: 100.0% of 4 pairs" in printed
    assert f"COMPO_ORACLE_REWARD_MODEL_PATH={out}" in printed
    settings = make_settings(backend="reward_model", reward_model_path=out, reward_device="cpu")
    items = [{"prompt": p["prompt"], "response_a": p["chosen"], "response_b": p["rejected"]}
             for p in PAIRS]
    with running_service(settings) as http:
        results = post_compare(http, items)
    assert [r["verdict"] for r in results] == ["a"] * len(PAIRS)  # what it learned


def test_bad_pairs_are_one_line(tmp_path, model_dir, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({"prompt": "p", "chosen": 1}) + "\n")
    code = compo_main(["reward-model", "fit", "--data", str(data), "--base", str(model_dir),
                       "--out", str(tmp_path / "rm")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: {data}:2: chosen, rejected must be strings (a pair "
                                 'is {"prompt": ..., "chosen": ..., "rejected": ...})']
    with pytest.raises(ValueError, match="no such file"):
        read_pairs(tmp_path / "missing.jsonl")
